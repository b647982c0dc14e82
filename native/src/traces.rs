//! ExportTraceServiceRequest → otel_traces columns.

use arrow_array::StructArray;

use crate::cols::*;
use crate::render::{push_attr, push_id};
use crate::walk::{decode_request, parse_scope, ResourceScratch, Scope, Signal};
use crate::wire::{utf8, Reader, Res, Val};

pub const SPAN_KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
pub const STATUS_CODES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

pub struct Traces {
    ts: Vec<i64>,
    trace_id: StrCol,
    span_id: StrCol,
    parent: StrCol,
    trace_state: StrCol,
    name: StrCol,
    kind: StrCol,
    service: StrCol,
    res_attrs: MapCol,
    scope_name: StrCol,
    scope_version: StrCol,
    span_attrs: MapCol,
    duration: Vec<u64>,
    status_code: StrCol,
    status_msg: StrCol,
    ev_ts: ListTsCol,
    ev_name: ListStrCol,
    ev_attrs: ListMapCol,
    link_trace: ListStrCol,
    link_span: ListStrCol,
    link_state: ListStrCol,
    link_attrs: ListMapCol,
    scratch: ResourceScratch,
}

markable_fields!(Traces {
    ts,
    duration,
    trace_id,
    span_id,
    parent,
    trace_state,
    name,
    kind,
    service,
    res_attrs,
    scope_name,
    scope_version,
    span_attrs,
    status_code,
    status_msg,
    ev_ts,
    ev_name,
    ev_attrs,
    link_trace,
    link_span,
    link_state,
    link_attrs,
});

impl Default for Traces {
    fn default() -> Self {
        Self::new()
    }
}

impl Traces {
    pub fn new() -> Self {
        Traces {
            ts: Vec::new(),
            trace_id: StrCol::new(),
            span_id: StrCol::new(),
            parent: StrCol::new(),
            trace_state: StrCol::new(),
            name: StrCol::new(),
            kind: StrCol::new(),
            service: StrCol::new(),
            res_attrs: MapCol::new(),
            scope_name: StrCol::new(),
            scope_version: StrCol::new(),
            span_attrs: MapCol::new(),
            duration: Vec::new(),
            status_code: StrCol::new(),
            status_msg: StrCol::new(),
            ev_ts: ListTsCol::new(),
            ev_name: ListStrCol::new(),
            ev_attrs: ListMapCol::new(),
            link_trace: ListStrCol::new(),
            link_span: ListStrCol::new(),
            link_state: ListStrCol::new(),
            link_attrs: ListMapCol::new(),
            scratch: ResourceScratch::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.ts.len()
    }

    /// Some column outgrew i32 offsets (string bytes, list children or rows).
    pub fn too_big(&self) -> bool {
        self.rows_big()
    }

    /// Decodes one request, appending its rows.
    pub fn decode(&mut self, buf: &[u8]) -> Res<()> {
        decode_request(self, buf)
    }

    fn span(&mut self, buf: &[u8]) -> Res<()> {
        let mut trace_id: &[u8] = &[];
        let mut span_id: &[u8] = &[];
        let mut parent: &[u8] = &[];
        let mut state: &[u8] = &[];
        let mut name: &[u8] = &[];
        let mut kind: i64 = 0;
        let mut start: u64 = 0;
        let mut end: u64 = 0;
        let mut status_msg: &[u8] = &[];
        let mut status_code: i64 = 0;
        let mut r = Reader::new(buf);
        loop {
            // The fields every span has, by their one-byte tags (one dispatch instead of the
            // wire type's and then the field's); the rest through the generic reader.
            match r.peek() {
                Some(0x4A) => push_attr(r.after_tag_bytes()?, &mut self.span_attrs, 5)?,
                Some(0x0A) => trace_id = r.after_tag_bytes()?,
                Some(0x12) => span_id = r.after_tag_bytes()?,
                Some(0x39) => start = r.after_tag_fixed64()?,
                Some(0x41) => end = r.after_tag_fixed64()?,
                None => break,
                _ => {
                    let Some((f, v)) = r.next()? else { break };
                    match (f, v) {
                        (1, Val::Bytes(b)) => trace_id = b,
                        (2, Val::Bytes(b)) => span_id = b,
                        (3, Val::Bytes(b)) => {
                            utf8(b, "Span.trace_state")?;
                            state = b;
                        }
                        (4, Val::Bytes(b)) => parent = b,
                        (5, Val::Bytes(b)) => {
                            utf8(b, "Span.name")?;
                            name = b;
                        }
                        (6, Val::Varint(x)) => kind = x as i32 as i64,
                        (7, Val::Fixed64(x)) => start = x,
                        (8, Val::Fixed64(x)) => end = x,
                        (9, Val::Bytes(kv)) => push_attr(kv, &mut self.span_attrs, 5)?,
                        (11, Val::Bytes(ev)) => self.event(ev)?,
                        (13, Val::Bytes(l)) => self.link(l)?,
                        (15, Val::Bytes(st)) => {
                            let mut sr = Reader::new(st);
                            while let Some((sf, sv)) = sr.next()? {
                                match (sf, sv) {
                                    (2, Val::Bytes(b)) => {
                                        utf8(b, "Status.message")?;
                                        status_msg = b;
                                    }
                                    (3, Val::Varint(x)) => status_code = x as i32 as i64,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        push_id(&mut self.trace_id, trace_id, 16, "trace_id")?;
        push_id(&mut self.span_id, span_id, 8, "span_id")?;
        push_id(&mut self.parent, parent, 8, "parent_span_id")?;
        self.ts.push(start as i64);
        self.trace_state.push(state);
        self.name.push(name);
        self.kind.push(
            usize::try_from(kind)
                .ok()
                .and_then(|k| SPAN_KINDS.get(k))
                .map_or(b"" as &[u8], |s| s.as_bytes()),
        );
        self.span_attrs.end_row();
        self.duration.push(end.saturating_sub(start));
        self.status_code.push(
            usize::try_from(status_code)
                .ok()
                .and_then(|k| STATUS_CODES.get(k))
                .map_or(b"" as &[u8], |s| s.as_bytes()),
        );
        self.status_msg.push(status_msg);
        self.ev_ts.end_row();
        self.ev_name.end_row();
        self.ev_attrs.end_row();
        self.link_trace.end_row();
        self.link_span.end_row();
        self.link_state.end_row();
        self.link_attrs.end_row();
        Ok(())
    }

    fn event(&mut self, buf: &[u8]) -> Res<()> {
        let mut time = 0u64;
        let mut name: &[u8] = &[];
        let mut r = Reader::new(buf);
        let attrs = &mut self.ev_attrs.values;
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Fixed64(x)) => time = x,
                (2, Val::Bytes(b)) => {
                    utf8(b, "Event.name")?;
                    name = b;
                }
                (3, Val::Bytes(kv)) => push_attr(kv, attrs, 6)?,
                _ => {}
            }
        }
        attrs.end_row();
        self.ev_ts.values.push(time as i64);
        self.ev_name.values.push(name);
        Ok(())
    }

    fn link(&mut self, buf: &[u8]) -> Res<()> {
        let mut trace_id: &[u8] = &[];
        let mut span_id: &[u8] = &[];
        let mut state: &[u8] = &[];
        let mut r = Reader::new(buf);
        let attrs = &mut self.link_attrs.values;
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Bytes(b)) => trace_id = b,
                (2, Val::Bytes(b)) => span_id = b,
                (3, Val::Bytes(b)) => {
                    utf8(b, "Link.trace_state")?;
                    state = b;
                }
                (4, Val::Bytes(kv)) => push_attr(kv, attrs, 6)?,
                _ => {}
            }
        }
        attrs.end_row();
        push_id(&mut self.link_trace.values, trace_id, 16, "link trace_id")?;
        push_id(&mut self.link_span.values, span_id, 8, "link span_id")?;
        self.link_state.values.push(state);
        Ok(())
    }

    pub fn finish(self) -> StructArray {
        struct_of(vec![
            ("Timestamp", ts_col(self.ts)),
            ("TraceId", self.trace_id.into_array()),
            ("SpanId", self.span_id.into_array()),
            ("ParentSpanId", self.parent.into_array()),
            ("TraceState", self.trace_state.into_array()),
            ("SpanName", self.name.into_array()),
            ("SpanKind", self.kind.into_array()),
            ("ServiceName", self.service.into_array()),
            ("ResourceAttributes", self.res_attrs.into_array()),
            ("ScopeName", self.scope_name.into_array()),
            ("ScopeVersion", self.scope_version.into_array()),
            ("SpanAttributes", self.span_attrs.into_array()),
            ("Duration", u64_array(self.duration)),
            ("StatusCode", self.status_code.into_array()),
            ("StatusMessage", self.status_msg.into_array()),
            ("Events.Timestamp", self.ev_ts.into_array()),
            ("Events.Name", self.ev_name.into_array()),
            ("Events.Attributes", self.ev_attrs.into_array()),
            ("Links.TraceId", self.link_trace.into_array()),
            ("Links.SpanId", self.link_span.into_array()),
            ("Links.TraceState", self.link_state.into_array()),
            ("Links.Attributes", self.link_attrs.into_array()),
        ])
    }
}

impl Signal for Traces {
    const RESOURCE_SCHEMA: &'static str = "ResourceSpans.schema_url";

    #[inline]
    fn resource_scratch(&mut self) -> &mut ResourceScratch {
        &mut self.scratch
    }

    /// One pass over the ScopeSpans message: spans are decoded where they lie (a first pass
    /// collecting them touched every span's first cache line out of order, ~20 % of the decode
    /// in stalls), and the scope/resource columns, which only the complete message settles
    /// (a scope may follow its spans), are filled for those rows at the end.
    fn scope(&mut self, buf: &[u8], res: &ResourceScratch, _res_schema: &[u8]) -> Res<()> {
        let mut scope = Scope::default();
        let mut spans = 0usize;
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Bytes(b)) => parse_scope(b, &mut scope, None)?,
                (2, Val::Bytes(b)) => {
                    self.span(b)?;
                    spans += 1;
                }
                (3, Val::Bytes(b)) => utf8(b, "ScopeSpans.schema_url")?,
                _ => {}
            }
        }
        for _ in 0..spans {
            res.emit(&mut self.res_attrs, &mut self.service)?;
            self.scope_name.push(scope.name);
            self.scope_version.push(scope.version);
        }
        Ok(())
    }
}
