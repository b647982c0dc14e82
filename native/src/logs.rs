//! ExportLogsServiceRequest → otel_logs columns.

use arrow_array::StructArray;

use crate::cols::*;
use crate::render::{push_attr, push_id, render_value, Parts};
use crate::walk::{
    decode_request, envelope, parse_scope, with_scratch, ResourceScratch, Scope, ScopeCols,
    ScopeRow, Signal,
};
use crate::wire::{utf8, Reader, Res, Val};

pub struct Logs {
    ts: Vec<i64>,
    trace_id: StrCol,
    span_id: StrCol,
    flags: Vec<u8>,
    sev_text: StrCol,
    sev_num: Vec<u8>,
    body: StrCol,
    sc: ScopeCols,
    log_attrs: MapCol,
    event_name: StrCol,
    scratch: ResourceScratch,
    scope_scratch: MapCol,
}

markable_fields!(Logs {
    ts,
    flags,
    sev_num,
    trace_id,
    span_id,
    sev_text,
    body,
    sc,
    log_attrs,
    event_name,
});

impl Default for Logs {
    fn default() -> Self {
        Self::new()
    }
}

impl Logs {
    pub fn new() -> Self {
        Logs {
            ts: Vec::new(),
            trace_id: StrCol::new(),
            span_id: StrCol::new(),
            flags: Vec::new(),
            sev_text: StrCol::new(),
            sev_num: Vec::new(),
            body: StrCol::new(),
            sc: ScopeCols::default(),
            log_attrs: MapCol::new(),
            event_name: StrCol::new(),
            scratch: ResourceScratch::new(),
            scope_scratch: MapCol::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.ts.len()
    }

    /// Some column outgrew i32 offsets (string bytes, list children or rows).
    pub fn too_big(&self) -> bool {
        self.rows_big()
    }

    pub fn decode(&mut self, buf: &[u8]) -> Res<()> {
        decode_request(self, buf)
    }

    fn record(&mut self, buf: &[u8]) -> Res<()> {
        let mut time = 0u64;
        let mut observed = 0u64;
        let mut sev_num: i64 = 0;
        let mut sev_text: &[u8] = &[];
        let mut body = Parts::Absent;
        let mut flags = 0u32;
        let mut trace_id: &[u8] = &[];
        let mut span_id: &[u8] = &[];
        let mut event_name: &[u8] = &[];
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Fixed64(x)) => time = x,
                (11, Val::Fixed64(x)) => observed = x,
                (2, Val::Varint(x)) => sev_num = x as i32 as i64,
                (3, Val::Bytes(b)) => {
                    utf8(b, "LogRecord.severity_text")?;
                    sev_text = b;
                }
                (5, Val::Bytes(b)) => body.push(b),
                (6, Val::Bytes(kv)) => push_attr(kv, &mut self.log_attrs, 5)?,
                (8, Val::Fixed32(x)) => flags = x,
                (9, Val::Bytes(b)) => trace_id = b,
                (10, Val::Bytes(b)) => span_id = b,
                (12, Val::Bytes(b)) => {
                    utf8(b, "LogRecord.event_name")?;
                    event_name = b;
                }
                _ => {}
            }
        }
        push_id(&mut self.trace_id, trace_id, 16, "trace_id")?;
        push_id(&mut self.span_id, span_id, 8, "span_id")?;
        render_value(&body, &mut self.body.data, 5)?;
        self.body.finish();
        self.ts.push(if time != 0 { time } else { observed } as i64);
        self.flags.push((flags & 0xFF) as u8);
        self.sev_text.push(sev_text);
        self.sev_num.push(sev_num.clamp(0, 255) as u8);
        self.log_attrs.end_row();
        self.event_name.push(event_name);
        Ok(())
    }

    pub fn finish(self) -> StructArray {
        struct_of(vec![
            ("Timestamp", ts_col(self.ts)),
            ("TraceId", self.trace_id.into_array()),
            ("SpanId", self.span_id.into_array()),
            ("TraceFlags", u8_array(self.flags)),
            ("SeverityText", self.sev_text.into_array()),
            ("SeverityNumber", u8_array(self.sev_num)),
            ("ServiceName", self.sc.service.into_array()),
            ("Body", self.body.into_array()),
            ("ResourceSchemaUrl", self.sc.res_schema.into_array()),
            ("ResourceAttributes", self.sc.res_attrs.into_array()),
            ("ScopeSchemaUrl", self.sc.scope_schema.into_array()),
            ("ScopeName", self.sc.scope_name.into_array()),
            ("ScopeVersion", self.sc.scope_version.into_array()),
            ("ScopeAttributes", self.sc.scope_attrs.into_array()),
            ("LogAttributes", self.log_attrs.into_array()),
            ("EventName", self.event_name.into_array()),
        ])
    }
}

impl Signal for Logs {
    const RESOURCE_SCHEMA: &'static str = "ResourceLogs.schema_url";

    #[inline]
    fn resource_scratch(&mut self) -> &mut ResourceScratch {
        &mut self.scratch
    }

    fn scope(&mut self, buf: &[u8], res: &ResourceScratch, res_schema: &[u8]) -> Res<()> {
        with_scratch(
            self,
            |l| &mut l.scope_scratch,
            |l, sattrs| {
                sattrs.clear_entries();
                let mut scope = Scope::default();
                let mut records: Vec<&[u8]> = Vec::new();
                let scope_schema = envelope(buf, "ScopeLogs.schema_url", &mut records, |b| {
                    parse_scope(b, &mut scope, Some(&mut *sattrs))
                })?;
                let row = ScopeRow {
                    res,
                    res_schema,
                    scope,
                    scope_attrs: sattrs,
                    scope_schema,
                };
                for rec in records {
                    l.record(rec)?;
                    l.sc.push(&row)?;
                }
                Ok(())
            },
        )
    }
}
