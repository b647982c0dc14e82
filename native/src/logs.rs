//! ExportLogsServiceRequest → otel_logs columns.

use std::sync::Arc;

use arrow_array::{ArrayRef, StructArray};
use arrow_schema::{DataType, Field, Fields};

use crate::cols::*;
use crate::render::{push_attr, push_id, render_value, Parts};
use crate::traces::{
    col_too_big, grow, parse_scope, pop_mark, push_mark, Markable, ResourceScratch, Scope,
};
use crate::wire::{utf8, Reader, Res, Val};

pub struct Logs {
    ts: Vec<i64>,
    trace_id: StrCol,
    span_id: StrCol,
    flags: Vec<u8>,
    sev_text: StrCol,
    sev_num: Vec<u8>,
    service: StrCol,
    body: StrCol,
    res_schema: StrCol,
    res_attrs: MapCol,
    scope_schema: StrCol,
    scope_name: StrCol,
    scope_version: StrCol,
    scope_attrs: MapCol,
    log_attrs: MapCol,
    event_name: StrCol,
    scratch: ResourceScratch,
    scope_scratch: MapCol,
}

macro_rules! all_cols {
    ($m:ident, $self:ident) => {
        $m!(
            $self,
            trace_id,
            span_id,
            sev_text,
            service,
            body,
            res_schema,
            res_attrs,
            scope_schema,
            scope_name,
            scope_version,
            scope_attrs,
            log_attrs,
            event_name
        )
    };
}

pub struct LogsMark(Vec<usize>);

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
            service: StrCol::new(),
            body: StrCol::new(),
            res_schema: StrCol::new(),
            res_attrs: MapCol::new(),
            scope_schema: StrCol::new(),
            scope_name: StrCol::new(),
            scope_version: StrCol::new(),
            scope_attrs: MapCol::new(),
            log_attrs: MapCol::new(),
            event_name: StrCol::new(),
            scratch: ResourceScratch::new(),
            scope_scratch: MapCol::new(),
        }
    }

    pub fn rows(&self) -> usize {
        self.ts.len()
    }

    pub fn mark(&self) -> LogsMark {
        let mut v = vec![self.ts.len(), self.flags.len(), self.sev_num.len()];
        macro_rules! m {
            ($s:ident, $($c:ident),*) => { $( push_mark(&mut v, &$s.$c); )* };
        }
        all_cols!(m, self);
        LogsMark(v)
    }

    pub fn rollback(&mut self, mark: &LogsMark) {
        let mut it = mark.0.iter().copied();
        self.ts.truncate(it.next().unwrap());
        self.flags.truncate(it.next().unwrap());
        self.sev_num.truncate(it.next().unwrap());
        macro_rules! r {
            ($s:ident, $($c:ident),*) => { $( pop_mark(&mut it, &mut $s.$c); )* };
        }
        all_cols!(r, self);
    }

    pub fn grow(&mut self, num: usize, den: usize) {
        grow(&mut self.ts, num, den);
        grow(&mut self.flags, num, den);
        grow(&mut self.sev_num, num, den);
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

    pub fn decode(&mut self, buf: &[u8]) -> Res<()> {
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            if let (1, Val::Bytes(rl)) = (f, v) {
                self.resource_logs(rl)?;
            }
        }
        Ok(())
    }

    fn resource_logs(&mut self, buf: &[u8]) -> Res<()> {
        let mut resources: Vec<&[u8]> = Vec::new();
        let mut scopes: Vec<&[u8]> = Vec::new();
        let mut schema_url: &[u8] = &[];
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Bytes(b)) => resources.push(b),
                (2, Val::Bytes(b)) => scopes.push(b),
                (3, Val::Bytes(b)) => {
                    utf8(b, "ResourceLogs.schema_url")?;
                    schema_url = b;
                }
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
                self.scope_logs(s, &scratch, schema_url)?;
            }
            Ok(())
        })();
        self.scratch = scratch;
        res
    }

    fn scope_logs(&mut self, buf: &[u8], res: &ResourceScratch, res_schema: &[u8]) -> Res<()> {
        let mut scope = Scope {
            name: &[],
            version: &[],
        };
        let mut records: Vec<&[u8]> = Vec::new();
        let mut schema_url: &[u8] = &[];
        let mut sattrs = std::mem::take(&mut self.scope_scratch);
        sattrs.keys.clear();
        sattrs.vals.clear();
        let mut r = Reader::new(buf);
        let res2 = (|| {
            while let Some((f, v)) = r.next()? {
                match (f, v) {
                    (1, Val::Bytes(b)) => parse_scope(b, &mut scope, Some(&mut sattrs))?,
                    (2, Val::Bytes(b)) => records.push(b),
                    (3, Val::Bytes(b)) => {
                        utf8(b, "ScopeLogs.schema_url")?;
                        schema_url = b;
                    }
                    _ => {}
                }
            }
            for rec in records.iter() {
                self.record(rec)?;
                res.emit(&mut self.res_attrs, &mut self.service)?;
                self.res_schema.push(res_schema);
                self.scope_schema.push(schema_url);
                self.scope_name.push(scope.name);
                self.scope_version.push(scope.version);
                self.scope_attrs.keys.extend_from(&sattrs.keys)?;
                self.scope_attrs.vals.extend_from(&sattrs.vals)?;
                self.scope_attrs.end_row();
            }
            Ok(())
        })();
        self.scope_scratch = sattrs;
        res2
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
        let cols: Vec<ArrayRef> = vec![
            Arc::new(ts_array(self.ts)),
            self.trace_id.into_array(),
            self.span_id.into_array(),
            u8_array(self.flags),
            self.sev_text.into_array(),
            u8_array(self.sev_num),
            self.service.into_array(),
            self.body.into_array(),
            self.res_schema.into_array(),
            Arc::new(self.res_attrs.finish_array()),
            self.scope_schema.into_array(),
            self.scope_name.into_array(),
            self.scope_version.into_array(),
            Arc::new(self.scope_attrs.finish_array()),
            Arc::new(self.log_attrs.finish_array()),
            self.event_name.into_array(),
        ];
        StructArray::new(logs_fields(), cols, None)
    }
}

pub fn logs_fields() -> Fields {
    let s = || DataType::Utf8;
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Fields::from(vec![
        f("Timestamp", ts_type()),
        f("TraceId", s()),
        f("SpanId", s()),
        f("TraceFlags", DataType::UInt8),
        f("SeverityText", s()),
        f("SeverityNumber", DataType::UInt8),
        f("ServiceName", s()),
        f("Body", s()),
        f("ResourceSchemaUrl", s()),
        f("ResourceAttributes", map_type()),
        f("ScopeSchemaUrl", s()),
        f("ScopeName", s()),
        f("ScopeVersion", s()),
        f("ScopeAttributes", map_type()),
        f("LogAttributes", map_type()),
        f("EventName", s()),
    ])
}
