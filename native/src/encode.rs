//! otel_traces rows (Arrow) → ExportTraceServiceRequest bytes.
//!
//! Rows are grouped by (ResourceAttributes, ServiceName) and then (ScopeName, ScopeVersion),
//! in order of first appearance. Attribute values were rendered to strings on decode, so they
//! are written back as string AnyValues (typed values become strings: lossy for the original
//! OTLP, lossless for the Arrow rows).

use std::collections::HashMap;

use arrow_array::{
    cast::AsArray, types::TimestampNanosecondType, types::UInt64Type, Array, ListArray, MapArray,
    StringArray, StructArray,
};

use crate::render::unhex;
use crate::traces::{SPAN_KINDS, STATUS_CODES};
use crate::wire::*;

fn col<'a>(s: &'a StructArray, name: &str) -> Result<&'a dyn Array, String> {
    s.column_by_name(name)
        .map(|a| a.as_ref())
        .ok_or_else(|| format!("missing column {name}"))
}

fn strs<'a>(s: &'a StructArray, name: &str) -> Result<&'a StringArray, String> {
    col(s, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| format!("column {name} is not string"))
}

fn lists<'a>(s: &'a StructArray, name: &str) -> Result<&'a ListArray, String> {
    col(s, name)?
        .as_list_opt::<i32>()
        .ok_or_else(|| format!("column {name} is not list"))
}

fn maps<'a>(s: &'a StructArray, name: &str) -> Result<&'a MapArray, String> {
    col(s, name)?
        .as_map_opt()
        .ok_or_else(|| format!("column {name} is not map<string,string>"))
}

/// Key/value string views of a map<string,string> array.
struct MapView<'a> {
    m: &'a MapArray,
    k: &'a StringArray,
    v: &'a StringArray,
}

impl<'a> MapView<'a> {
    fn new(m: &'a MapArray, name: &str) -> Result<Self, String> {
        let k = m
            .keys()
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("{name} keys not string"))?;
        let v = m
            .values()
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("{name} values not string"))?;
        Ok(MapView { m, k, v })
    }
    fn range(&self, row: usize) -> std::ops::Range<usize> {
        if self.m.is_null(row) {
            return 0..0;
        }
        let o = self.m.value_offsets();
        o[row] as usize..o[row + 1] as usize
    }
    fn key(&self, i: usize) -> &'a str {
        if self.k.is_null(i) {
            ""
        } else {
            self.k.value(i)
        }
    }
    fn val(&self, i: usize) -> &'a str {
        if self.v.is_null(i) {
            ""
        } else {
            self.v.value(i)
        }
    }
    fn write(&self, out: &mut Vec<u8>, field: u32, range: std::ops::Range<usize>) {
        for i in range {
            let kv = begin_msg(out, field);
            put_nonempty(out, 1, self.key(i).as_bytes());
            let av = begin_msg(out, 2);
            let v = self.val(i);
            if !v.is_empty() {
                put_bytes(out, 1, v.as_bytes());
            }
            end_msg(out, av);
            end_msg(out, kv);
        }
    }
}

#[inline]
fn s(a: &StringArray, i: usize) -> &str {
    if a.is_null(i) {
        ""
    } else {
        a.value(i)
    }
}

fn list_range(l: &ListArray, row: usize) -> std::ops::Range<usize> {
    if l.is_null(row) {
        return 0..0;
    }
    let o = l.value_offsets();
    o[row] as usize..o[row + 1] as usize
}

pub fn encode_traces(batch: &StructArray) -> Result<Vec<u8>, String> {
    let n = batch.len();
    let ts = col(batch, "Timestamp")?
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or("column Timestamp is not timestamp[ns]")?;
    let dur = col(batch, "Duration")?
        .as_primitive_opt::<UInt64Type>()
        .ok_or("column Duration is not uint64")?;
    let trace_id = strs(batch, "TraceId")?;
    let span_id = strs(batch, "SpanId")?;
    let parent = strs(batch, "ParentSpanId")?;
    let state = strs(batch, "TraceState")?;
    let name = strs(batch, "SpanName")?;
    let kind = strs(batch, "SpanKind")?;
    let service = strs(batch, "ServiceName")?;
    let res_attrs = MapView::new(maps(batch, "ResourceAttributes")?, "ResourceAttributes")?;
    let scope_name = strs(batch, "ScopeName")?;
    let scope_version = strs(batch, "ScopeVersion")?;
    let span_attrs = MapView::new(maps(batch, "SpanAttributes")?, "SpanAttributes")?;
    let status_code = strs(batch, "StatusCode")?;
    let status_msg = strs(batch, "StatusMessage")?;
    let ev_ts_l = lists(batch, "Events.Timestamp")?;
    let ev_ts = ev_ts_l
        .values()
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or("Events.Timestamp items are not timestamp[ns]")?;
    let ev_name_l = lists(batch, "Events.Name")?;
    let ev_name = ev_name_l
        .values()
        .as_string_opt::<i32>()
        .ok_or("Events.Name items are not string")?;
    let ev_attrs_l = lists(batch, "Events.Attributes")?;
    let ev_attrs = MapView::new(
        ev_attrs_l
            .values()
            .as_map_opt()
            .ok_or("Events.Attributes items are not map")?,
        "Events.Attributes",
    )?;
    let l_trace_l = lists(batch, "Links.TraceId")?;
    let l_trace = l_trace_l
        .values()
        .as_string_opt::<i32>()
        .ok_or("Links.TraceId items are not string")?;
    let l_span_l = lists(batch, "Links.SpanId")?;
    let l_span = l_span_l
        .values()
        .as_string_opt::<i32>()
        .ok_or("Links.SpanId items are not string")?;
    let l_state_l = lists(batch, "Links.TraceState")?;
    let l_state = l_state_l
        .values()
        .as_string_opt::<i32>()
        .ok_or("Links.TraceState items are not string")?;
    let l_attrs_l = lists(batch, "Links.Attributes")?;
    let l_attrs = MapView::new(
        l_attrs_l
            .values()
            .as_map_opt()
            .ok_or("Links.Attributes items are not map")?,
        "Links.Attributes",
    )?;

    // Group rows: resource key → (scope key → rows), first-appearance order.
    type ResKey<'a> = (Vec<(&'a str, &'a str)>, &'a str);
    let mut res_index: HashMap<ResKey, usize> = HashMap::new();
    let mut groups: Vec<(
        usize,
        Vec<((&str, &str), Vec<usize>)>,
        HashMap<(&str, &str), usize>,
    )> = Vec::new();
    for row in 0..n {
        let kv: Vec<(&str, &str)> = res_attrs
            .range(row)
            .map(|i| (res_attrs.key(i), res_attrs.val(i)))
            .collect();
        let key = (kv, s(service, row));
        let gi = *res_index.entry(key).or_insert_with(|| {
            groups.push((row, Vec::new(), HashMap::new()));
            groups.len() - 1
        });
        let g = &mut groups[gi];
        let sk = (s(scope_name, row), s(scope_version, row));
        let si = *g.2.entry(sk).or_insert_with(|| {
            g.1.push((sk, Vec::new()));
            g.1.len() - 1
        });
        g.1[si].1.push(row);
    }

    let mut out: Vec<u8> = Vec::with_capacity(n * 400);
    let mut idbuf: Vec<u8> = Vec::with_capacity(16);
    let id =
        |idbuf: &mut Vec<u8>, v: &str, len: usize, what: &str, row: usize| -> Result<(), String> {
            unhex(v.as_bytes(), idbuf).map_err(|e| format!("row {row}: {what}: {e}"))?;
            if !idbuf.is_empty() && idbuf.len() != len {
                return Err(format!(
                    "row {row}: {what} must be {len} bytes, got {}",
                    idbuf.len()
                ));
            }
            Ok(())
        };
    for (first_row, scopes, _) in &groups {
        let rs = begin_msg(&mut out, 1);
        // Resource
        let r = begin_msg(&mut out, 1);
        let range = res_attrs.range(*first_row);
        let has_service = range.clone().any(|i| res_attrs.key(i) == "service.name");
        res_attrs.write(&mut out, 1, range);
        let svc = s(service, *first_row);
        if !has_service && !svc.is_empty() {
            let kv = begin_msg(&mut out, 1);
            put_bytes(&mut out, 1, b"service.name");
            let av = begin_msg(&mut out, 2);
            put_bytes(&mut out, 1, svc.as_bytes());
            end_msg(&mut out, av);
            end_msg(&mut out, kv);
        }
        end_msg(&mut out, r);
        for ((sname, sver), rows) in scopes {
            let ss = begin_msg(&mut out, 2);
            let sc = begin_msg(&mut out, 1);
            put_nonempty(&mut out, 1, sname.as_bytes());
            put_nonempty(&mut out, 2, sver.as_bytes());
            end_msg(&mut out, sc);
            for &row in rows {
                let sp = begin_msg(&mut out, 2);
                id(&mut idbuf, s(trace_id, row), 16, "TraceId", row)?;
                put_nonempty(&mut out, 1, &idbuf);
                id(&mut idbuf, s(span_id, row), 8, "SpanId", row)?;
                put_nonempty(&mut out, 2, &idbuf);
                put_nonempty(&mut out, 3, s(state, row).as_bytes());
                id(&mut idbuf, s(parent, row), 8, "ParentSpanId", row)?;
                put_nonempty(&mut out, 4, &idbuf);
                put_nonempty(&mut out, 5, s(name, row).as_bytes());
                // An unknown kind (rendered "") goes out as a number outside the enum, so it
                // decodes back to "" (lossless round trip).
                let k = s(kind, row);
                let ki = SPAN_KINDS
                    .iter()
                    .position(|x| *x == k)
                    .unwrap_or(SPAN_KINDS.len());
                put_varint_field(&mut out, 6, ki as u64);
                let start = if ts.is_null(row) {
                    0
                } else {
                    ts.value(row) as u64
                };
                let d = if dur.is_null(row) { 0 } else { dur.value(row) };
                put_fixed64(&mut out, 7, start);
                put_fixed64(&mut out, 8, start.wrapping_add(d));
                span_attrs.write(&mut out, 9, span_attrs.range(row));
                let er = list_range(ev_ts_l, row);
                let nr = list_range(ev_name_l, row);
                let ar = list_range(ev_attrs_l, row);
                if er.len() != nr.len() || er.len() != ar.len() {
                    return Err(format!("row {row}: Events.* lists differ in length"));
                }
                for j in 0..er.len() {
                    let ev = begin_msg(&mut out, 11);
                    let ti = er.start + j;
                    put_fixed64(
                        &mut out,
                        1,
                        if ev_ts.is_null(ti) {
                            0
                        } else {
                            ev_ts.value(ti) as u64
                        },
                    );
                    put_nonempty(&mut out, 2, s(ev_name, nr.start + j).as_bytes());
                    let ai = ar.start + j;
                    ev_attrs.write(&mut out, 3, ev_attrs.range(ai));
                    end_msg(&mut out, ev);
                }
                let tr = list_range(l_trace_l, row);
                let sr = list_range(l_span_l, row);
                let str_ = list_range(l_state_l, row);
                let lar = list_range(l_attrs_l, row);
                if tr.len() != sr.len() || tr.len() != str_.len() || tr.len() != lar.len() {
                    return Err(format!("row {row}: Links.* lists differ in length"));
                }
                for j in 0..tr.len() {
                    let l = begin_msg(&mut out, 13);
                    id(
                        &mut idbuf,
                        s(l_trace, tr.start + j),
                        16,
                        "Links.TraceId",
                        row,
                    )?;
                    put_nonempty(&mut out, 1, &idbuf);
                    id(&mut idbuf, s(l_span, sr.start + j), 8, "Links.SpanId", row)?;
                    put_nonempty(&mut out, 2, &idbuf);
                    put_nonempty(&mut out, 3, s(l_state, str_.start + j).as_bytes());
                    l_attrs.write(&mut out, 4, l_attrs.range(lar.start + j));
                    end_msg(&mut out, l);
                }
                let code = STATUS_CODES
                    .iter()
                    .position(|x| *x == s(status_code, row))
                    .unwrap_or(STATUS_CODES.len());
                let msg = s(status_msg, row);
                if code != 0 || !msg.is_empty() {
                    let st = begin_msg(&mut out, 15);
                    put_nonempty(&mut out, 2, msg.as_bytes());
                    put_varint_field(&mut out, 3, code as u64);
                    end_msg(&mut out, st);
                }
                end_msg(&mut out, sp);
            }
            end_msg(&mut out, ss);
        }
        end_msg(&mut out, rs);
    }
    Ok(out)
}
