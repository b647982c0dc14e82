//! AnyValue → string rendering (pdata `AsString` rules, see otelwax/codec/__init__.py),
//! hex ids and base64.

use std::io::Write;

use crate::cols::{MapCol, StrCol};
use crate::wire::{utf8, Reader, Res, Val};

/// Maximum AnyValue nesting (arrays / kvlists inside each other).
pub const MAX_DEPTH: u32 = 64;

/// A parsed AnyValue (oneof: the last field present wins, as in protobuf).
#[derive(Clone, Copy)]
pub enum Any<'a> {
    Empty,
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(&'a [u8]),
    KvList(&'a [u8]),
    Bytes(&'a [u8]),
}

/// Parses one AnyValue message. Arrays and kvlists are kept as raw bytes (validated later,
/// when rendered).
#[inline]
pub fn parse_any(buf: &[u8]) -> Res<Any<'_>> {
    let mut r = Reader::new(buf);
    let mut v = Any::Empty;
    while let Some((f, val)) = r.next()? {
        match (f, val) {
            (1, Val::Bytes(b)) => {
                utf8(b, "AnyValue.string_value")?;
                v = Any::Str(b);
            }
            (2, Val::Varint(x)) => v = Any::Bool(x != 0),
            (3, Val::Varint(x)) => v = Any::Int(x as i64),
            (4, Val::Fixed64(x)) => v = Any::Double(f64::from_bits(x)),
            (5, Val::Bytes(b)) => v = Any::Array(b),
            (6, Val::Bytes(b)) => v = Any::KvList(b),
            (7, Val::Bytes(b)) => v = Any::Bytes(b),
            // string_value_strindex (profiles dictionary): rendered like an unset value
            (8, Val::Varint(_)) => v = Any::Empty,
            _ => {}
        }
    }
    Ok(v)
}

/// Parses a KeyValue message into (key, value bytes); value bytes are empty when absent.
#[inline]
pub fn parse_kv(buf: &[u8]) -> Res<(&[u8], Option<&[u8]>)> {
    let mut r = Reader::new(buf);
    let mut key: &[u8] = &[];
    let mut val: Option<&[u8]> = None;
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Val::Bytes(b)) => key = b,
            (2, Val::Bytes(b)) => val = Some(b),
            _ => {}
        }
    }
    utf8(key, "KeyValue.key")?;
    Ok((key, val))
}

/// Renders one AnyValue (raw message bytes, or None when absent) as a string into `out`.
pub fn render_value(val: Option<&[u8]>, out: &mut Vec<u8>) -> Res<()> {
    let any = match val {
        Some(b) => parse_any(b)?,
        None => Any::Empty,
    };
    match any {
        Any::Empty => {}
        Any::Str(s) => out.extend_from_slice(s),
        Any::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Any::Int(i) => push_i64(out, i),
        Any::Double(d) => write_double(d, out),
        Any::Bytes(b) => base64(b, out),
        Any::Array(_) | Any::KvList(_) => json_any(any, out, 1)?,
    }
    Ok(())
}

/// Appends every KeyValue of an attribute list to a map column (the caller ends the row).
#[inline]
pub fn push_attr(kv: &[u8], map: &mut MapCol) -> Res<()> {
    let (k, v) = parse_kv(kv)?;
    map.keys.push(k);
    render_value(v, &mut map.vals.data)?;
    map.vals.finish();
    Ok(())
}

/// Validates a KeyValue (for attribute lists we do not store) the way a full parse would.
pub fn validate_kv(kv: &[u8]) -> Res<()> {
    let (_, v) = parse_kv(kv)?;
    if let Some(b) = v {
        validate_any(parse_any(b)?, 1)?;
    }
    Ok(())
}

fn validate_any(a: Any<'_>, depth: u32) -> Res<()> {
    if depth > MAX_DEPTH {
        return Err("AnyValue nested too deeply".into());
    }
    match a {
        Any::Array(b) => {
            let mut r = Reader::new(b);
            while let Some((f, v)) = r.next()? {
                if let (1, Val::Bytes(x)) = (f, v) {
                    validate_any(parse_any(x)?, depth + 1)?;
                }
            }
        }
        Any::KvList(b) => {
            let mut r = Reader::new(b);
            while let Some((f, v)) = r.next()? {
                if let (1, Val::Bytes(x)) = (f, v) {
                    let (_, val) = parse_kv(x)?;
                    if let Some(vb) = val {
                        validate_any(parse_any(vb)?, depth + 1)?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Decimal integer.
#[inline]
pub fn push_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut u = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

/// Double in positional notation, shortest round-trip digits (Go 'f', -1).
#[inline]
pub fn write_double(d: f64, out: &mut Vec<u8>) {
    if d.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if d.is_infinite() {
        out.extend_from_slice(if d > 0.0 { b"+Inf" } else { b"-Inf" });
    } else {
        let _ = write!(out, "{d}");
    }
}

fn json_double(d: f64, out: &mut Vec<u8>) {
    if !d.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let a = d.abs();
    if a == 0.0 || (1e-6..1e21).contains(&a) {
        let _ = write!(out, "{d}");
    } else {
        let start = out.len();
        let _ = write!(out, "{d:e}");
        // Go writes an explicit sign on positive exponents: 1e+21.
        if let Some(p) = out[start..].iter().position(|&c| c == b'e') {
            let p = start + p;
            if out.get(p + 1) != Some(&b'-') {
                out.insert(p + 1, b'+');
            }
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// JSON string with Go encoding/json escaping (HTML-safe).
fn json_str(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let esc: Option<&[u8]> = match c {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            b'<' => Some(b"\\u003c"),
            b'>' => Some(b"\\u003e"),
            b'&' => Some(b"\\u0026"),
            0xE2 if i + 2 < s.len()
                && s[i + 1] == 0x80
                && (s[i + 2] == 0xA8 || s[i + 2] == 0xA9) =>
            {
                Some(if s[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                })
            }
            _ if c < 0x20 => None,
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&s[start..i]);
        match esc {
            Some(e) => {
                out.extend_from_slice(e);
                i += if c == 0xE2 { 3 } else { 1 };
            }
            None => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 0xF) as usize]);
                i += 1;
            }
        }
        start = i;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

fn json_any(a: Any<'_>, out: &mut Vec<u8>, depth: u32) -> Res<()> {
    if depth > MAX_DEPTH {
        return Err("AnyValue nested too deeply".into());
    }
    match a {
        Any::Empty => out.extend_from_slice(b"null"),
        Any::Str(s) => json_str(s, out),
        Any::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Any::Int(i) => push_i64(out, i),
        Any::Double(d) => json_double(d, out),
        Any::Bytes(b) => {
            out.push(b'"');
            base64(b, out);
            out.push(b'"');
        }
        Any::Array(b) => {
            out.push(b'[');
            let mut r = Reader::new(b);
            let mut first = true;
            while let Some((f, v)) = r.next()? {
                if let (1, Val::Bytes(x)) = (f, v) {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    json_any(parse_any(x)?, out, depth + 1)?;
                }
            }
            out.push(b']');
        }
        Any::KvList(b) => {
            let mut items: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
            let mut r = Reader::new(b);
            while let Some((f, v)) = r.next()? {
                if let (1, Val::Bytes(x)) = (f, v) {
                    items.push(parse_kv(x)?);
                }
            }
            // Go marshals a map: keys sorted bytewise, the last duplicate wins.
            items.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            let mut first = true;
            for i in 0..items.len() {
                if i + 1 < items.len() && items[i + 1].0 == items[i].0 {
                    // still validate the shadowed value
                    if let Some(vb) = items[i].1 {
                        validate_any(parse_any(vb)?, depth + 1)?;
                    }
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                json_str(items[i].0, out);
                out.push(b':');
                let v = match items[i].1 {
                    Some(vb) => parse_any(vb)?,
                    None => Any::Empty,
                };
                json_any(v, out, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(b: &[u8], out: &mut Vec<u8>) {
    out.reserve(b.len().div_ceil(3) * 4);
    let mut chunks = b.chunks_exact(3);
    for c in &mut chunks {
        let n = ((c[0] as u32) << 16) | ((c[1] as u32) << 8) | c[2] as u32;
        out.extend_from_slice(&[
            B64[(n >> 18) as usize & 63],
            B64[(n >> 12) as usize & 63],
            B64[(n >> 6) as usize & 63],
            B64[n as usize & 63],
        ]);
    }
    let rem = chunks.remainder();
    match rem.len() {
        1 => {
            let n = (rem[0] as u32) << 16;
            out.extend_from_slice(&[
                B64[(n >> 18) as usize & 63],
                B64[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        2 => {
            let n = ((rem[0] as u32) << 16) | ((rem[1] as u32) << 8);
            out.extend_from_slice(&[
                B64[(n >> 18) as usize & 63],
                B64[(n >> 12) as usize & 63],
                B64[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
}

static HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// Appends an id as lowercase hex ("" when empty or all zero); `len` is the only valid
/// non-zero length.
#[inline]
pub fn push_id(col: &mut StrCol, id: &[u8], len: usize, what: &str) -> Res<()> {
    if id.is_empty() || id.iter().all(|&b| b == 0) {
        if !id.is_empty() && id.len() != len {
            return Err(format!("{what} has {} bytes, expected {len}", id.len()));
        }
        col.finish();
        return Ok(());
    }
    if id.len() != len {
        return Err(format!("{what} has {} bytes, expected {len}", id.len()));
    }
    for &b in id {
        col.data.extend_from_slice(&HEX_PAIRS[b as usize]);
    }
    col.finish();
    Ok(())
}

/// Parses a lowercase/uppercase hex id into bytes (empty string → empty bytes).
pub fn unhex(s: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    if s.len() % 2 != 0 {
        return Err(format!(
            "odd-length hex id {:?}",
            String::from_utf8_lossy(s)
        ));
    }
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    for p in s.chunks_exact(2) {
        match (nib(p[0]), nib(p[1])) {
            (Some(h), Some(l)) => out.push((h << 4) | l),
            _ => return Err(format!("invalid hex id {:?}", String::from_utf8_lossy(s))),
        }
    }
    Ok(())
}
