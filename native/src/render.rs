//! AnyValue → string rendering (pdata `AsString` rules, see otelwax/codec/__init__.py),
//! hex ids and base64.

use crate::cols::{append, MapCol, StrCol};
use crate::wire::{is_utf8, utf8, Reader, Res, Val};

/// Deepest message nesting level a payload may have (the request is level 1), like the
/// protobuf runtime's default recursion limit: nested AnyValues beyond it make the payload an
/// error in both decoders.
pub const MAX_LEVEL: u32 = 101;

#[cold]
fn too_deep() -> String {
    "message nesting exceeds the protobuf recursion limit".to_string()
}

/// The occurrences of a singular message field. Protobuf merges repeated occurrences, which
/// is the same as parsing their concatenation, so they are kept in order.
#[derive(Clone, Default)]
pub enum Parts<'a> {
    #[default]
    Absent,
    One(&'a [u8]),
    Many(Vec<&'a [u8]>),
}

impl<'a> Parts<'a> {
    #[inline]
    pub fn push(&mut self, b: &'a [u8]) {
        *self = match std::mem::take(self) {
            Parts::Absent => Parts::One(b),
            Parts::One(a) => Parts::Many(vec![a, b]),
            Parts::Many(mut v) => {
                v.push(b);
                Parts::Many(v)
            }
        };
    }
    #[inline]
    pub fn slices(&self) -> &[&'a [u8]] {
        match self {
            Parts::Absent => &[],
            Parts::One(a) => std::slice::from_ref(a),
            Parts::Many(v) => v,
        }
    }
}

/// A parsed AnyValue (oneof: the last member present wins, consecutive occurrences of the same
/// message member merge, as in protobuf).
#[derive(Clone)]
pub enum Any<'a> {
    Empty,
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(Parts<'a>),
    KvList(Parts<'a>),
    Bytes(&'a [u8]),
}

/// Parses one AnyValue (all occurrences of the field). Arrays and kvlists are kept as raw
/// bytes, validated when rendered; a member replaced by a later one is validated here, since a
/// full protobuf parse would reject it when malformed.
#[inline]
pub fn parse_any<'a>(parts: &Parts<'a>, depth: u32) -> Res<Any<'a>> {
    let mut v = Any::Empty;
    if depth > MAX_LEVEL && !parts.slices().is_empty() {
        return Err(too_deep());
    }
    for buf in parts.slices() {
        let mut r = Reader::new(buf);
        while let Some((f, val)) = r.next()? {
            let new = match (f, val) {
                (1, Val::Bytes(b)) => {
                    utf8(b, "AnyValue.string_value")?;
                    Any::Str(b)
                }
                (2, Val::Varint(x)) => Any::Bool(x != 0),
                (3, Val::Varint(x)) => Any::Int(x as i64),
                (4, Val::Fixed64(x)) => Any::Double(f64::from_bits(x)),
                (5, Val::Bytes(b)) => {
                    if let Any::Array(p) = &mut v {
                        p.push(b);
                        continue;
                    }
                    Any::Array(Parts::One(b))
                }
                (6, Val::Bytes(b)) => {
                    if let Any::KvList(p) = &mut v {
                        p.push(b);
                        continue;
                    }
                    Any::KvList(Parts::One(b))
                }
                (7, Val::Bytes(b)) => Any::Bytes(b),
                // string_value_strindex (profiles dictionary): rendered like an unset value
                (8, Val::Varint(_)) => Any::Empty,
                _ => continue,
            };
            let old = std::mem::replace(&mut v, new);
            if matches!(old, Any::Array(_) | Any::KvList(_)) {
                validate_any(&old, depth)?;
            }
        }
    }
    Ok(v)
}

/// Parses a KeyValue message into (key, value occurrences).
#[inline]
pub fn parse_kv(buf: &[u8]) -> Res<(&[u8], Parts<'_>)> {
    let mut r = Reader::new(buf);
    let mut key: &[u8] = &[];
    let mut val = Parts::Absent;
    while let Some((f, v)) = r.next()? {
        match (f, v) {
            (1, Val::Bytes(b)) => {
                utf8(b, "KeyValue.key")?;
                key = b;
            }
            (2, Val::Bytes(b)) => val.push(b),
            _ => {}
        }
    }
    Ok((key, val))
}

/// Renders one AnyValue (its field occurrences; none when absent) as a string into `out`;
/// `level` is the AnyValue's message nesting level.
pub fn render_value(val: &Parts<'_>, out: &mut Vec<u8>, level: u32) -> Res<()> {
    let any = parse_any(val, level)?;
    match any {
        Any::Empty => {}
        Any::Str(s) => out.extend_from_slice(s),
        Any::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Any::Int(i) => push_i64(out, i),
        Any::Double(d) => write_double(d, out),
        Any::Bytes(b) => base64(b, out),
        Any::Array(_) | Any::KvList(_) => json_any(&any, out, level)?,
    }
    Ok(())
}

/// Appends one KeyValue of an attribute list to a map column (the caller ends the row);
/// `level` is the KeyValue's message nesting level.
#[inline]
pub fn push_attr(kv: &[u8], map: &mut MapCol, level: u32) -> Res<()> {
    if push_plain_attr(kv, map) {
        return Ok(());
    }
    let (k, v) = parse_kv(kv)?;
    map.keys.push(k);
    render_value(&v, &mut map.vals.data, level + 1)?;
    map.vals.finish();
    Ok(())
}

/// The shape nearly every attribute has: a valid key, then one value holding one scalar member
/// (string, bool, int, double, bytes) or none, each tag and length in one byte (lengths below
/// 128). Renders it like `parse_kv` + `render_value` and returns true; anything else (longer
/// or repeated fields, unknown or nested members, invalid UTF-8) returns false with nothing
/// written, for the general path to render or reject. The bytes are matched directly: through
/// the generic reader this was a third of the decode.
#[inline(always)]
fn push_plain_attr(kv: &[u8], map: &mut MapCol) -> bool {
    // KeyValue: 0x0A (key, bytes) len key, 0x12 (value, bytes) len AnyValue
    let [0x0A, klen, rest @ ..] = kv else {
        return false;
    };
    let klen = *klen as usize;
    if klen >= 0x80 || rest.len() < klen + 2 {
        return false;
    }
    let (key, rest) = rest.split_at(klen);
    let [0x12, vlen, val @ ..] = rest else {
        return false;
    };
    if *vlen >= 0x80 || val.len() != *vlen as usize || !is_utf8(key) {
        return false;
    }
    let out = &mut map.vals.data;
    match val {
        [] => {}
        [0x0A, n, s @ ..] if s.len() == *n as usize && *n < 0x80 && is_utf8(s) => append(out, s),
        [0x3A, n, b @ ..] if b.len() == *n as usize && *n < 0x80 => base64(b, out),
        [0x21, d @ ..] if d.len() == 8 => write_double(
            f64::from_bits(u64::from_le_bytes(d.try_into().unwrap())),
            out,
        ),
        [tag @ (0x10 | 0x18), v @ ..] => {
            let mut r = Reader::new(v);
            let x = match r.read_varint() {
                Ok(x) if r.at_end() => x,
                _ => return false,
            };
            if *tag == 0x10 {
                out.extend_from_slice(if x != 0 { b"true" } else { b"false" });
            } else {
                push_i64(out, x as i64);
            }
        }
        _ => return false,
    }
    map.vals.finish();
    map.keys.push(key);
    true
}

/// Validates a KeyValue (for attribute lists we do not store) the way a full parse would.
pub fn validate_kv(kv: &[u8], level: u32) -> Res<()> {
    let (_, v) = parse_kv(kv)?;
    validate_any(&parse_any(&v, level + 1)?, level + 1)
}

fn validate_any(a: &Any<'_>, depth: u32) -> Res<()> {
    match a {
        Any::Array(parts) => array_elems(parts, depth, |x| {
            validate_any(&parse_any(&Parts::One(x), depth + 2)?, depth + 2)
        })?,
        Any::KvList(parts) => kvlist_items(parts, depth, |_, val| {
            validate_any(&parse_any(&val, depth + 3)?, depth + 3)
        })?,
        _ => {}
    }
    Ok(())
}

/// Calls `f` with every element (field 1) of an ArrayValue/KeyValueList at nesting `depth`,
/// across all its merged occurrences; fails when the elements would nest too deeply.
#[inline]
fn array_elems<'a>(
    parts: &Parts<'a>,
    depth: u32,
    mut f: impl FnMut(&'a [u8]) -> Res<()>,
) -> Res<()> {
    if depth + 1 > MAX_LEVEL {
        return Err(too_deep());
    }
    for b in parts.slices() {
        let mut r = Reader::new(b);
        while let Some((field, v)) = r.next()? {
            if let (1, Val::Bytes(x)) = (field, v) {
                f(x)?;
            }
        }
    }
    Ok(())
}

/// Calls `f` with the key and value of every KeyValue of a KeyValueList at nesting `depth`.
#[inline]
fn kvlist_items<'a>(
    parts: &Parts<'a>,
    depth: u32,
    mut f: impl FnMut(&'a [u8], Parts<'a>) -> Res<()>,
) -> Res<()> {
    array_elems(parts, depth, |x| {
        if depth + 2 > MAX_LEVEL {
            return Err(too_deep());
        }
        let (k, v) = parse_kv(x)?;
        f(k, v)
    })
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

/// Shortest round-trip decimal digits of a finite, non-zero |d| (round-half-even on ties, like
/// Go and Python) and the decimal point position: |d| = 0.DIGITS × 10^point.
fn shortest_digits(d: f64, digits: &mut [u8; 32]) -> (usize, i32) {
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(d.abs()).as_bytes();
    let (mant, exp) = match s.iter().position(|&c| c == b'e' || c == b'E') {
        Some(i) => {
            let e = std::str::from_utf8(&s[i + 1..])
                .ok()
                .and_then(|x| x.parse::<i32>().ok());
            (&s[..i], e.unwrap_or(0))
        }
        None => (s, 0),
    };
    let mut n = 0;
    let mut point: i32 = 0;
    let mut seen_dot = false;
    for &c in mant {
        if c == b'.' {
            seen_dot = true;
            continue;
        }
        if n == 0 && c == b'0' {
            if seen_dot {
                point -= 1;
            }
            continue;
        }
        digits[n] = c;
        n += 1;
        if !seen_dot {
            point += 1;
        }
    }
    while n > 1 && digits[n - 1] == b'0' {
        n -= 1;
    }
    (n, point + exp)
}

fn positional(d: f64, out: &mut Vec<u8>) {
    if d == 0.0 {
        out.extend_from_slice(if d.is_sign_negative() { b"-0" } else { b"0" });
        return;
    }
    if d < 0.0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 32];
    let (n, point) = shortest_digits(d, &mut digits);
    let digits = &digits[..n];
    if point <= 0 {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + (-point) as usize, b'0');
        out.extend_from_slice(digits);
    } else if point as usize >= n {
        out.extend_from_slice(digits);
        out.resize(out.len() + (point as usize - n), b'0');
    } else {
        out.extend_from_slice(&digits[..point as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[point as usize..]);
    }
}

/// Double in positional notation, shortest round-trip digits (Go 'f', -1).
#[inline]
pub fn write_double(d: f64, out: &mut Vec<u8>) {
    if d.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if d.is_infinite() {
        out.extend_from_slice(if d > 0.0 { b"+Inf" } else { b"-Inf" });
    } else {
        positional(d, out);
    }
}

/// Go encoding/json float64: positional in [1e-6, 1e21), else exponent form ("1e-7",
/// "1.5e+21"); NaN/Inf → null.
fn json_double(d: f64, out: &mut Vec<u8>) {
    if !d.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let a = d.abs();
    if a == 0.0 || (1e-6..1e21).contains(&a) {
        positional(d, out);
        return;
    }
    if d < 0.0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 32];
    let (n, point) = shortest_digits(d, &mut digits);
    out.push(digits[0]);
    if n > 1 {
        out.push(b'.');
        out.extend_from_slice(&digits[1..n]);
    }
    let e = point - 1;
    out.push(b'e');
    out.push(if e < 0 { b'-' } else { b'+' });
    if (0..10).contains(&e) {
        out.push(b'0'); // Go keeps two exponent digits after "+"
    }
    push_i64(out, e.unsigned_abs() as i64);
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

fn json_any(a: &Any<'_>, out: &mut Vec<u8>, depth: u32) -> Res<()> {
    match a {
        Any::Empty => out.extend_from_slice(b"null"),
        Any::Str(s) => json_str(s, out),
        Any::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Any::Int(i) => push_i64(out, *i),
        Any::Double(d) => json_double(*d, out),
        Any::Bytes(b) => {
            out.push(b'"');
            base64(b, out);
            out.push(b'"');
        }
        Any::Array(parts) => {
            if depth + 1 > MAX_LEVEL {
                return Err(too_deep()); // before any output (array_elems checks again)
            }
            out.push(b'[');
            let mut first = true;
            array_elems(parts, depth, |x| {
                if !first {
                    out.push(b',');
                }
                first = false;
                json_any(&parse_any(&Parts::One(x), depth + 2)?, out, depth + 2)
            })?;
            out.push(b']');
        }
        Any::KvList(parts) => {
            let mut items: Vec<(&[u8], Parts<'_>)> = Vec::new();
            kvlist_items(parts, depth, |k, v| {
                items.push((k, v));
                Ok(())
            })?;
            // Go marshals a map: keys sorted bytewise, the last duplicate wins.
            items.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            let mut first = true;
            for i in 0..items.len() {
                let v = parse_any(&items[i].1, depth + 3)?;
                if i + 1 < items.len() && items[i + 1].0 == items[i].0 {
                    validate_any(&v, depth + 3)?; // shadowed, but still parsed
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                json_str(items[i].0, out);
                out.push(b':');
                json_any(&v, out, depth + 3)?;
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
    match len {
        16 => push_hex::<16>(col, id),
        8 => push_hex::<8>(col, id),
        _ => {
            for &b in id {
                col.data.extend_from_slice(&HEX_PAIRS[b as usize]);
            }
            col.finish();
        }
    }
    Ok(())
}

/// Appends the hex of an `N`-byte id as one fixed-size copy.
#[inline(always)]
fn push_hex<const N: usize>(col: &mut StrCol, id: &[u8]) {
    let mut hex = [[0u8; 2]; N];
    for (h, &b) in hex.iter_mut().zip(id) {
        *h = HEX_PAIRS[b as usize];
    }
    col.push(hex.as_flattened());
}

/// Parses a lowercase/uppercase hex id into bytes (empty string → empty bytes).
pub fn unhex(s: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    if !s.len().is_multiple_of(2) {
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
