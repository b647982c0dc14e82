//! ExportTraceServiceRequest → otel_traces columns.

use std::sync::Arc;

use arrow_array::{ArrayRef, StructArray};
use arrow_schema::{DataType, Field, Fields};

use crate::cols::*;
use crate::render::{push_attr, push_id, validate_kv};
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

/// Resource attributes rendered once per ResourceSpans/ResourceLogs, copied into every row.
pub struct ResourceScratch {
    pub keys: StrCol,
    pub vals: StrCol,
    pub service: Option<usize>,
}

impl Default for ResourceScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceScratch {
    pub fn new() -> Self {
        ResourceScratch {
            keys: StrCol::new(),
            vals: StrCol::new(),
            service: None,
        }
    }

    /// Parses one `Resource` message occurrence (repeated occurrences merge: attributes append).
    pub fn add_resource(&mut self, buf: &[u8]) -> Res<()> {
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Bytes(kv)) => {
                    let mut tmp = MapCol {
                        offsets: Vec::new(),
                        keys: StrCol::new(),
                        vals: StrCol::new(),
                    };
                    std::mem::swap(&mut tmp.keys, &mut self.keys);
                    std::mem::swap(&mut tmp.vals, &mut self.vals);
                    let res = push_attr(kv, &mut tmp, 4);
                    std::mem::swap(&mut tmp.keys, &mut self.keys);
                    std::mem::swap(&mut tmp.vals, &mut self.vals);
                    res?;
                    let i = self.keys.len() - 1;
                    if self.service.is_none() && self.keys.value(i) == b"service.name" {
                        self.service = Some(i);
                    }
                }
                (3, Val::Bytes(er)) => validate_entity_ref(er)?,
                _ => {}
            }
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.vals.clear();
        self.service = None;
    }

    #[inline]
    pub fn emit(&self, attrs: &mut MapCol, service: &mut StrCol) -> Res<()> {
        attrs.keys.extend_from(&self.keys)?;
        attrs.vals.extend_from(&self.vals)?;
        attrs.end_row();
        match self.service {
            Some(i) => service.push(self.vals.value(i)),
            None => service.finish(),
        }
        Ok(())
    }
}

fn validate_entity_ref(buf: &[u8]) -> Res<()> {
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let (1..=4, Val::Bytes(b)) = (f, v) {
            utf8(b, "EntityRef")?;
        }
    }
    Ok(())
}

/// Scope name/version of one ScopeSpans/ScopeLogs (attributes are validated, logs keep them).
pub struct Scope<'a> {
    pub name: &'a [u8],
    pub version: &'a [u8],
}

pub fn parse_scope<'a>(
    buf: &'a [u8],
    scope: &mut Scope<'a>,
    attrs: Option<&mut MapCol>,
) -> Res<()> {
    let mut r = Reader::new(buf);
    let mut attrs = attrs;
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Val::Bytes(b)) => {
                utf8(b, "InstrumentationScope.name")?;
                scope.name = b;
            }
            (2, Val::Bytes(b)) => {
                utf8(b, "InstrumentationScope.version")?;
                scope.version = b;
            }
            (3, Val::Bytes(kv)) => match attrs.as_deref_mut() {
                Some(m) => push_attr(kv, m, 5)?,
                None => validate_kv(kv, 5)?,
            },
            _ => {}
        }
    }
    Ok(())
}

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

macro_rules! all_cols {
    ($m:ident, $self:ident) => {
        $m!(
            $self,
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
            link_attrs
        )
    };
}

pub struct TracesMark(Vec<usize>);

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

    pub fn mark(&self) -> TracesMark {
        let mut v = vec![self.ts.len(), self.duration.len()];
        macro_rules! m {
            ($s:ident, $($c:ident),*) => { $( push_mark(&mut v, &$s.$c); )* };
        }
        all_cols!(m, self);
        TracesMark(v)
    }

    pub fn rollback(&mut self, mark: &TracesMark) {
        let mut it = mark.0.iter().copied();
        self.ts.truncate(it.next().unwrap());
        self.duration.truncate(it.next().unwrap());
        macro_rules! r {
            ($s:ident, $($c:ident),*) => { $( pop_mark(&mut it, &mut $s.$c); )* };
        }
        all_cols!(r, self);
    }

    pub fn grow(&mut self, num: usize, den: usize) {
        grow(&mut self.ts, num, den);
        grow(&mut self.duration, num, den);
        macro_rules! g {
            ($s:ident, $($c:ident),*) => { $( Markable::grow(&mut $s.$c, num, den); )* };
        }
        all_cols!(g, self);
    }

    pub fn too_big(&self) -> bool {
        let mut big = false;
        macro_rules! b {
            ($s:ident, $($c:ident),*) => { $( big |= $s.$c.offsets.len() > i32::MAX as usize || col_too_big(&$s.$c); )* };
        }
        all_cols!(b, self);
        big
    }

    /// Decodes one request, appending its rows.
    pub fn decode(&mut self, buf: &[u8]) -> Res<()> {
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            if let (1, Val::Bytes(rs)) = (f, v) {
                self.resource_spans(rs)?;
            }
        }
        Ok(())
    }

    fn resource_spans(&mut self, buf: &[u8]) -> Res<()> {
        let mut resources: Vec<&[u8]> = Vec::new();
        let mut scopes: Vec<&[u8]> = Vec::new();
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Bytes(b)) => resources.push(b),
                (2, Val::Bytes(b)) => scopes.push(b),
                (3, Val::Bytes(b)) => utf8(b, "ResourceSpans.schema_url")?,
                _ => {}
            }
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let res = (|| {
            for b in resources {
                scratch.add_resource(b)?;
            }
            for s in scopes {
                self.scope_spans(s, &scratch)?;
            }
            Ok(())
        })();
        self.scratch = scratch;
        res
    }

    fn scope_spans(&mut self, buf: &[u8], res: &ResourceScratch) -> Res<()> {
        let mut scope = Scope {
            name: &[],
            version: &[],
        };
        let mut spans: Vec<&[u8]> = Vec::new();
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Bytes(b)) => parse_scope(b, &mut scope, None)?,
                (2, Val::Bytes(b)) => spans.push(b),
                (3, Val::Bytes(b)) => utf8(b, "ScopeSpans.schema_url")?,
                _ => {}
            }
        }
        for s in spans {
            self.span(s)?;
            res.emit(&mut self.res_attrs, &mut self.service)?;
            self.scope_name.push(scope.name);
            self.scope_version.push(scope.version);
        }
        Ok(())
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
        while let Some((f, v)) = r.next()? {
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
        let cols: Vec<ArrayRef> = vec![
            Arc::new(ts_array(self.ts)),
            self.trace_id.into_array(),
            self.span_id.into_array(),
            self.parent.into_array(),
            self.trace_state.into_array(),
            self.name.into_array(),
            self.kind.into_array(),
            self.service.into_array(),
            Arc::new(self.res_attrs.finish_array()),
            self.scope_name.into_array(),
            self.scope_version.into_array(),
            Arc::new(self.span_attrs.finish_array()),
            u64_array(self.duration),
            self.status_code.into_array(),
            self.status_msg.into_array(),
            self.ev_ts.into_array(),
            self.ev_name.into_array(),
            self.ev_attrs.into_array(),
            self.link_trace.into_array(),
            self.link_span.into_array(),
            self.link_state.into_array(),
            self.link_attrs.into_array(),
        ];
        StructArray::new(traces_fields(), cols, None)
    }
}

pub fn traces_fields() -> Fields {
    let s = || DataType::Utf8;
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Fields::from(vec![
        f("Timestamp", ts_type()),
        f("TraceId", s()),
        f("SpanId", s()),
        f("ParentSpanId", s()),
        f("TraceState", s()),
        f("SpanName", s()),
        f("SpanKind", s()),
        f("ServiceName", s()),
        f("ResourceAttributes", map_type()),
        f("ScopeName", s()),
        f("ScopeVersion", s()),
        f("SpanAttributes", map_type()),
        f("Duration", DataType::UInt64),
        f("StatusCode", s()),
        f("StatusMessage", s()),
        f("Events.Timestamp", list_of(ts_type())),
        f("Events.Name", list_of(s())),
        f("Events.Attributes", list_of(map_type())),
        f("Links.TraceId", list_of(s())),
        f("Links.SpanId", list_of(s())),
        f("Links.TraceState", list_of(s())),
        f("Links.Attributes", list_of(map_type())),
    ])
}

// ---- generic mark helpers over the column kinds --------------------------------------------

/// Reserves room for `len * num / den` more elements (capacity planning after a first payload).
#[inline]
pub fn grow<T>(v: &mut Vec<T>, num: usize, den: usize) {
    // Extrapolated from the first payload, capped by the remaining input size; a failed
    // reservation is not an error (the vector still grows on demand).
    let more = (v.len() as u128 * num as u128 / den.max(1) as u128).min(num as u128 * 2) as usize;
    let _ = v.try_reserve(more);
}

pub trait Markable {
    fn grow(&mut self, num: usize, den: usize);
    fn marks(&self, v: &mut Vec<usize>);
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>);
    fn big(&self) -> bool;
}

impl Markable for StrCol {
    fn grow(&mut self, num: usize, den: usize) {
        grow(&mut self.offsets, num, den);
        grow(&mut self.data, num, den);
    }
    fn marks(&self, v: &mut Vec<usize>) {
        let m = self.mark();
        v.extend([m.0, m.1]);
    }
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
        let a = it.next().unwrap();
        let b = it.next().unwrap();
        self.rollback((a, b));
    }
    fn big(&self) -> bool {
        self.too_big()
    }
}

impl Markable for MapCol {
    fn grow(&mut self, num: usize, den: usize) {
        grow(&mut self.offsets, num, den);
        self.keys.grow(num, den);
        self.vals.grow(num, den);
    }
    fn marks(&self, v: &mut Vec<usize>) {
        v.push(self.offsets.len());
        self.keys.marks(v);
        self.vals.marks(v);
    }
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
        self.offsets.truncate(it.next().unwrap());
        self.keys.restore(it);
        self.vals.restore(it);
    }
    fn big(&self) -> bool {
        self.too_big()
    }
}

impl Markable for ListStrCol {
    fn grow(&mut self, num: usize, den: usize) {
        grow(&mut self.offsets, num, den);
        self.values.grow(num, den);
    }
    fn marks(&self, v: &mut Vec<usize>) {
        v.push(self.offsets.len());
        self.values.marks(v);
    }
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
        self.offsets.truncate(it.next().unwrap());
        self.values.restore(it);
    }
    fn big(&self) -> bool {
        self.values.too_big() || self.values.offsets.len() > i32::MAX as usize
    }
}

impl<T: Copy> Markable for Vec<T> {
    fn grow(&mut self, num: usize, den: usize) {
        grow(self, num, den);
    }
    fn marks(&self, v: &mut Vec<usize>) {
        v.push(self.len());
    }
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
        self.truncate(it.next().unwrap());
    }
    fn big(&self) -> bool {
        false
    }
}

impl<T: Copy> Markable for ListPrimCol<T> {
    fn grow(&mut self, num: usize, den: usize) {
        grow(&mut self.offsets, num, den);
        grow(&mut self.values, num, den);
    }
    fn marks(&self, v: &mut Vec<usize>) {
        v.extend([self.offsets.len(), self.values.len()]);
    }
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
        self.offsets.truncate(it.next().unwrap());
        self.values.truncate(it.next().unwrap());
    }
    fn big(&self) -> bool {
        self.values.len() > i32::MAX as usize
    }
}

impl Markable for ListTsCol {
    fn grow(&mut self, num: usize, den: usize) {
        grow(&mut self.offsets, num, den);
        grow(&mut self.values, num, den);
    }
    fn marks(&self, v: &mut Vec<usize>) {
        v.extend([self.offsets.len(), self.values.len()]);
    }
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
        self.offsets.truncate(it.next().unwrap());
        self.values.truncate(it.next().unwrap());
    }
    fn big(&self) -> bool {
        self.values.len() > i32::MAX as usize
    }
}

impl Markable for ListMapCol {
    fn grow(&mut self, num: usize, den: usize) {
        grow(&mut self.offsets, num, den);
        self.values.grow(num, den);
    }
    fn marks(&self, v: &mut Vec<usize>) {
        v.push(self.offsets.len());
        self.values.marks(v);
    }
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
        self.offsets.truncate(it.next().unwrap());
        self.values.restore(it);
    }
    fn big(&self) -> bool {
        self.values.big() || self.values.offsets.len() > i32::MAX as usize
    }
}

pub fn push_mark<M: Markable>(v: &mut Vec<usize>, c: &M) {
    c.marks(v);
}

pub fn pop_mark<M: Markable>(it: &mut dyn Iterator<Item = usize>, c: &mut M) {
    c.restore(it);
}

pub fn col_too_big<M: Markable>(c: &M) -> bool {
    c.big()
}
