//! ExportTraceServiceRequest → Kafka records, one per trace id, in a single pass that also
//! validates the request (the ingest shim's hot path; mirrors connectors/ingest/wire.py, which
//! stays the reference and the fallback, byte for byte).
//!
//! Spans are never decoded into values: the walk slices the request into resources, scopes and
//! raw spans (tag and length included) and reads each span's trace_id. With `validate`, every
//! nested message a protobuf parser would build is checked too (well-formed wire format, UTF-8
//! strings, AnyValue nesting), so a malformed request fails here instead of in a second parse.

use std::collections::HashMap;

use crate::render::validate_kv;
use crate::walk::{parse_scope, validate_entity_ref, Scope};
use crate::wire::{put_varint, utf8, Reader, Res, Val};

/// Overhead assumed for one nested length-delimited header (as wire.py's `_HDR`).
const HDR: usize = 6;

struct Resource<'a> {
    head: Vec<u8>, // every field but the scopes, raw
    scopes: Vec<ScopeSpans<'a>>,
}

struct ScopeSpans<'a> {
    head: Vec<u8>,        // every field but the spans, raw
    spans: Vec<&'a [u8]>, // raw, with tag and length
    tids: Vec<&'a [u8]>,  // trace id of each span
}

/// Spans of one (resource, scope) inside one trace.
struct Group<'a> {
    ri: usize,
    si: usize,
    items: Vec<&'a [u8]>,
}

/// Records (key, value), spans in the request and spans rejected as too large.
pub struct Split {
    pub records: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    pub items: usize,
    pub rejected: usize,
}

/// One raw field of `buf` starting at `pos`: (field, wire type, value start, end). Only the
/// wire types protobuf allows; groups are refused, like wire.py.
#[inline]
fn raw_field(buf: &[u8], pos: usize) -> Res<(u32, u8, usize, usize)> {
    let mut r = Reader::new(&buf[pos..]);
    let tag = r.read_varint()?;
    let f = tag >> 3;
    if f == 0 || f > (u32::MAX >> 3) as u64 {
        return Err(format!("invalid field number 0 at byte {pos}"));
    }
    let wt = (tag & 7) as u8;
    let hdr = pos + r.offset();
    let (vs, end) = match wt {
        0 => {
            r.read_varint()?;
            (hdr, pos + r.offset())
        }
        1 => (hdr, hdr + 8),
        5 => (hdr, hdr + 4),
        2 => {
            let n = r.read_varint()?;
            let vs = pos + r.offset();
            let end = (vs as u64).saturating_add(n);
            if end > buf.len() as u64 {
                return Err(format!("field {f} at byte {pos} overruns its message"));
            }
            (vs, end as usize)
        }
        _ => return Err(format!("unsupported wire type {wt} at byte {pos}")),
    };
    if end > buf.len() {
        return Err("truncated message".into());
    }
    Ok((f as u32, wt, vs, end))
}

fn validate_resource(buf: &[u8]) -> Res<()> {
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Val::Bytes(kv)) => validate_kv(kv, 4)?,
            (3, Val::Bytes(er)) => validate_entity_ref(er)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks one Span message as a protobuf parser would (everything it would build).
fn validate_span(buf: &[u8]) -> Res<()> {
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (3, Val::Bytes(b)) => utf8(b, "Span.trace_state")?,
            (5, Val::Bytes(b)) => utf8(b, "Span.name")?,
            (9, Val::Bytes(kv)) => validate_kv(kv, 5)?,
            (11, Val::Bytes(ev)) => validate_part(ev, 2, "Event.name", 3)?,
            (13, Val::Bytes(l)) => validate_part(l, 3, "Link.trace_state", 4)?,
            (15, Val::Bytes(st)) => validate_part(st, 2, "Status.message", 0)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks a span's Event, Link or Status: its string field `str_field` (named `what`) is
/// UTF-8 and its attributes (field `kv_field`, 0: none) are valid KeyValues.
fn validate_part(buf: &[u8], str_field: u32, what: &str, kv_field: u32) -> Res<()> {
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        if let Val::Bytes(b) = v {
            if f == str_field {
                utf8(b, what)?;
            } else if f == kv_field {
                validate_kv(b, 6)?;
            }
        }
    }
    Ok(())
}

/// trace_id (first field 1) of the span in `span` (its payload); empty when absent.
#[inline]
fn trace_id(span: &[u8]) -> Res<&[u8]> {
    if span.len() >= 18 && span[0] == 0x0A && span[1] == 0x10 {
        return Ok(&span[2..18]);
    }
    let mut pos = 0;
    while pos < span.len() {
        let (f, wt, vs, end) = raw_field(span, pos)?;
        if f == 1 && wt == 2 {
            return Ok(&span[vs..end]);
        }
        pos = end;
    }
    Ok(&[])
}

fn walk(buf: &[u8], validate: bool) -> Res<Vec<Resource<'_>>> {
    let mut resources = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let (f, wt, rvs, rve) = raw_field(buf, pos)?;
        pos = rve;
        if f != 1 {
            continue; // unknown top-level field: not forwarded
        }
        if wt != 2 {
            return Err("resource entry is not length-delimited".into());
        }
        let mut res = Resource {
            head: Vec::new(),
            scopes: Vec::new(),
        };
        let mut rp = rvs;
        while rp < rve {
            let (rf, rwt, svs, sve) = raw_field(&buf[..rve], rp)?;
            let ts = rp;
            rp = sve;
            if rf != 2 {
                res.head.extend_from_slice(&buf[ts..sve]);
                if rf == 1 {
                    if rwt != 2 {
                        return Err("resource is not length-delimited".into());
                    }
                    if validate {
                        validate_resource(&buf[svs..sve])?;
                    }
                } else if rf == 3 && rwt == 2 && validate {
                    utf8(&buf[svs..sve], "ResourceSpans.schema_url")?;
                }
                continue;
            }
            if rwt != 2 {
                return Err("scope entry is not length-delimited".into());
            }
            let mut sc = ScopeSpans {
                head: Vec::new(),
                spans: Vec::new(),
                tids: Vec::new(),
            };
            let mut sp = svs;
            while sp < sve {
                let (f3, wt3, vs, end) = raw_field(&buf[..sve], sp)?;
                let ts = sp;
                sp = end;
                if f3 == 2 && wt3 == 2 {
                    let span = &buf[vs..end];
                    if validate {
                        validate_span(span)?;
                    }
                    sc.tids.push(trace_id(span)?);
                    sc.spans.push(&buf[ts..end]);
                    continue;
                }
                sc.head.extend_from_slice(&buf[ts..end]);
                if validate && wt3 == 2 {
                    match f3 {
                        1 => parse_scope(&buf[vs..end], &mut Scope::default(), None)?,
                        3 => utf8(&buf[vs..end], "ScopeSpans.schema_url")?,
                        _ => {}
                    }
                }
            }
            res.scopes.push(sc);
        }
        resources.push(res);
    }
    Ok(resources)
}

#[inline]
fn varint_len(v: usize) -> usize {
    let mut n = 1;
    let mut v = v >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

/// Appends a one-byte tag and the varint length of the payload that follows.
#[inline]
fn wrap_into(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    put_varint(out, len as u64);
}

fn items_len(items: &[&[u8]]) -> usize {
    items.iter().map(|i| i.len()).sum()
}

/// Serializes an export request holding `groups` (ordered by resource index).
fn encode(resources: &[Resource<'_>], groups: &[Group<'_>]) -> Vec<u8> {
    // Payload length of each resource wrapper, then write.
    let mut out = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        let ri = groups[i].ri;
        let mut j = i;
        let mut len = resources[ri].head.len();
        while j < groups.len() && groups[j].ri == ri {
            let g = &groups[j];
            let sl = resources[ri].scopes[g.si].head.len() + items_len(&g.items);
            len += 1 + varint_len(sl) + sl;
            j += 1;
        }
        wrap_into(&mut out, 0x0A, len);
        out.extend_from_slice(&resources[ri].head);
        for g in &groups[i..j] {
            let head = &resources[ri].scopes[g.si].head;
            wrap_into(&mut out, 0x12, head.len() + items_len(&g.items));
            out.extend_from_slice(head);
            for it in &g.items {
                out.extend_from_slice(it);
            }
        }
        i = j;
    }
    out
}

fn size(resources: &[Resource<'_>], groups: &[Group<'_>]) -> usize {
    let mut size = 0;
    let mut cur = usize::MAX;
    for g in groups {
        if g.ri != cur {
            cur = g.ri;
            size += resources[g.ri].head.len() + HDR;
        }
        size += resources[g.ri].scopes[g.si].head.len() + HDR + items_len(&g.items);
    }
    size
}

/// Cuts `groups` into requests of at most `limit` bytes; also returns how many items cannot
/// fit on their own.
fn chunk<'a>(
    resources: &[Resource<'a>],
    groups: Vec<Group<'a>>,
    limit: usize,
) -> (Vec<Vec<Group<'a>>>, usize) {
    let mut chunks = Vec::new();
    let mut rejected = 0;
    let mut cur: Vec<Group<'a>> = Vec::new();
    let mut size = 0usize;
    for g in groups {
        let res = &resources[g.ri];
        let scope_head = res.scopes[g.si].head.len() + HDR;
        let res_head = res.head.len() + HDR;
        for it in g.items {
            let mut over = match cur.last() {
                Some(l) if l.ri == g.ri && l.si == g.si => 0,
                Some(l) if l.ri == g.ri => scope_head,
                _ => scope_head + res_head,
            };
            if !cur.is_empty() && size + over + it.len() > limit {
                chunks.push(std::mem::take(&mut cur));
                size = 0;
                over = scope_head + res_head;
            }
            if over + it.len() > limit {
                rejected += 1;
                continue;
            }
            if over > 0 {
                cur.push(Group {
                    ri: g.ri,
                    si: g.si,
                    items: vec![it],
                });
            } else {
                cur.last_mut().unwrap().items.push(it);
            }
            size += over + it.len();
        }
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    (chunks, rejected)
}

fn hex(b: &[u8]) -> Vec<u8> {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(b.len() * 2);
    for &x in b {
        out.push(H[(x >> 4) as usize]);
        out.push(H[(x & 15) as usize]);
    }
    out
}

/// Splits (and with `validate`, checks) one ExportTraceServiceRequest into records of at most
/// `limit` bytes, one trace per record, keyed by the lowercase hex trace id.
pub fn split_traces(buf: &[u8], limit: usize, validate: bool) -> Res<Split> {
    let resources = walk(buf, validate)?;
    // Traces in order of first appearance, each with its (resource, scope) groups in order.
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut traces: Vec<(&[u8], Vec<Group<'_>>)> = Vec::new();
    let mut items = 0;
    for (ri, res) in resources.iter().enumerate() {
        for (si, sc) in res.scopes.iter().enumerate() {
            items += sc.spans.len();
            for (span, tid) in sc.spans.iter().zip(&sc.tids) {
                let t = *index.entry(tid).or_insert_with(|| {
                    traces.push((tid, Vec::new()));
                    traces.len() - 1
                });
                let groups = &mut traces[t].1;
                match groups.last_mut() {
                    Some(g) if g.ri == ri && g.si == si => g.items.push(span),
                    _ => groups.push(Group {
                        ri,
                        si,
                        items: vec![span],
                    }),
                }
            }
        }
    }
    let mut records = Vec::with_capacity(traces.len());
    let mut rejected = 0;
    for (tid, groups) in traces {
        let key = if tid.is_empty() { None } else { Some(hex(tid)) };
        if size(&resources, &groups) <= limit {
            records.push((key, encode(&resources, &groups)));
            continue;
        }
        let (chunks, rej) = chunk(&resources, groups, limit);
        rejected += rej;
        for c in chunks {
            records.push((key.clone(), encode(&resources, &c)));
        }
    }
    Ok(Split {
        records,
        items,
        rejected,
    })
}
