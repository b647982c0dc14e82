//! Minimal protobuf wire-format reader over a borrowed buffer: every length is checked
//! against the remaining bytes, so no input can make it read out of bounds or loop forever.

pub type Res<T> = Result<T, String>;

/// One decoded field value (groups of unknown fields are skipped by the reader).
#[derive(Clone, Copy)]
pub enum Val<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

#[cold]
#[inline(never)]
fn err(msg: &str) -> String {
    msg.to_string()
}

#[cold]
#[inline(never)]
fn err_len(n: usize, rem: usize) -> String {
    format!("length {n} exceeds the {rem} remaining bytes")
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const MAX_GROUP_DEPTH: u32 = 64;

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline(always)]
    fn varint(&mut self) -> Res<u64> {
        let buf = self.buf;
        let pos = self.pos;
        if let Some(&b) = buf.get(pos) {
            if b < 0x80 {
                self.pos = pos + 1;
                return Ok(b as u64);
            }
            if let Some(&b2) = buf.get(pos + 1) {
                if b2 < 0x80 {
                    self.pos = pos + 2;
                    return Ok((b & 0x7f) as u64 | (b2 as u64) << 7);
                }
            }
        }
        self.varint_slow()
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Res<u64> {
        let buf = self.buf;
        let mut pos = self.pos;
        let mut result: u64 = 0;
        let mut shift = 0u32;
        loop {
            if pos >= buf.len() {
                return Err(err("truncated varint"));
            }
            let b = buf[pos];
            pos += 1;
            result |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                self.pos = pos;
                return Ok(result);
            }
            shift += 7;
            if shift == 63 {
                // the 10th byte may carry only the top bit
                if pos >= buf.len() {
                    return Err(err("truncated varint"));
                }
                let last = buf[pos];
                pos += 1;
                if last >= 0x80 {
                    return Err(err("varint longer than 10 bytes"));
                }
                result |= ((last & 0x01) as u64) << 63;
                self.pos = pos;
                return Ok(result);
            }
        }
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let rem = self.buf.len() - self.pos;
        if n > rem {
            return Err(err_len(n, rem));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn skip_group(&mut self, field: u32, depth: u32) -> Res<()> {
        if depth > MAX_GROUP_DEPTH {
            return Err("groups nested too deeply".into());
        }
        loop {
            if self.pos >= self.buf.len() {
                return Err("truncated group".into());
            }
            let tag = self.varint()?;
            let f = (tag >> 3) as u32;
            let wt = (tag & 7) as u8;
            if tag >> 3 > u32::MAX as u64 >> 3 || f == 0 {
                return Err("invalid field number".into());
            }
            match wt {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let n = self.varint()?;
                    self.take(usize::try_from(n).map_err(|_| "length overflow".to_string())?)?;
                }
                3 => self.skip_group(f, depth + 1)?,
                4 => {
                    if f == field {
                        return Ok(());
                    }
                    return Err("mismatched end group".into());
                }
                5 => {
                    self.take(4)?;
                }
                _ => return Err(format!("invalid wire type {wt}")),
            }
        }
    }

    /// The next byte (a field's tag when it is one byte), not consumed.
    #[inline(always)]
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Skips a one-byte tag seen by `peek` and reads its length-delimited value.
    #[inline(always)]
    pub fn after_tag_bytes(&mut self) -> Res<&'a [u8]> {
        self.pos += 1;
        let n = self.varint()?;
        let rem = self.buf.len() - self.pos;
        if n > rem as u64 {
            return Err(err_len(n as usize, rem));
        }
        self.take(n as usize)
    }

    /// Skips a one-byte tag seen by `peek` and reads its fixed64 value.
    #[inline(always)]
    pub fn after_tag_fixed64(&mut self) -> Res<u64> {
        self.pos += 1;
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Bytes consumed so far.
    #[inline]
    pub fn offset(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn read_varint(&mut self) -> Res<u64> {
        self.varint()
    }

    /// Next (field number, value), or None at the end of the buffer.
    #[inline(always)]
    pub fn next(&mut self) -> Res<Option<(u32, Val<'a>)>> {
        loop {
            if self.pos >= self.buf.len() {
                return Ok(None);
            }
            let tag = self.varint()?;
            if tag >> 3 > (u32::MAX >> 3) as u64 || tag >> 3 == 0 {
                return Err(err("invalid field number"));
            }
            let f = (tag >> 3) as u32;
            let v = match tag & 7 {
                0 => Val::Varint(self.varint()?),
                1 => {
                    let b = self.take(8)?;
                    Val::Fixed64(u64::from_le_bytes(b.try_into().unwrap()))
                }
                2 => {
                    let n = self.varint()?;
                    if n > (self.buf.len() - self.pos) as u64 {
                        return Err(err_len(n as usize, self.buf.len() - self.pos));
                    }
                    Val::Bytes(self.take(n as usize)?)
                }
                3 => {
                    self.skip_group(f, 1)?;
                    continue;
                }
                4 => return Err(err("unexpected end group")),
                5 => {
                    let b = self.take(4)?;
                    Val::Fixed32(u32::from_le_bytes(b.try_into().unwrap()))
                }
                _ => return Err(err("invalid wire type")),
            };
            return Ok(Some((f, v)));
        }
    }
}

#[inline]
pub fn is_utf8(b: &[u8]) -> bool {
    b.is_ascii() || std::str::from_utf8(b).is_ok()
}

#[inline]
pub fn utf8(b: &[u8], what: &str) -> Res<()> {
    if is_utf8(b) {
        Ok(())
    } else {
        Err(format!("invalid UTF-8 in {what}"))
    }
}

// ---- writer --------------------------------------------------------------------------------

#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
pub fn put_tag(out: &mut Vec<u8>, field: u32, wt: u8) {
    put_varint(out, ((field as u64) << 3) | wt as u64);
}

#[inline]
pub fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Non-empty bytes/string field (proto3 omits empty values).
#[inline]
pub fn put_nonempty(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        put_bytes(out, field, b);
    }
}

#[inline]
pub fn put_fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_tag(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

#[inline]
pub fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_tag(out, field, 0);
        put_varint(out, v);
    }
}

/// Starts a length-delimited sub-message; returns the marker for `end_msg`.
#[inline]
pub fn begin_msg(out: &mut Vec<u8>, field: u32) -> usize {
    put_tag(out, field, 2);
    out.push(0);
    out.len()
}

/// Closes a sub-message started with `begin_msg`, writing its length (shifting the body when
/// the length needs more than one byte).
#[inline]
pub fn end_msg(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    if len < 0x80 {
        out[start - 1] = len as u8;
        return;
    }
    let mut tmp = Vec::with_capacity(10);
    put_varint(&mut tmp, len as u64);
    let extra = tmp.len() - 1;
    let old_end = out.len();
    out.resize(old_end + extra, 0);
    out.copy_within(start..old_end, start + extra);
    out[start - 1..start - 1 + tmp.len()].copy_from_slice(&tmp);
}
