//! Arrow columns → ClickHouse `Native` column bodies (the server's cheapest input to parse).
//!
//! A `String` column in a Native block is, per row, the byte length as an unsigned LEB128
//! varint followed by the bytes; a null row is written as the empty string.

use arrow_array::types::ByteArrayType;
use arrow_array::{cast::AsArray, Array, GenericByteArray, OffsetSizeTrait};
use arrow_buffer::NullBuffer;
use arrow_schema::DataType;

#[inline]
fn varint_len(mut n: usize) -> usize {
    let mut k = 1;
    while n >= 0x80 {
        n >>= 7;
        k += 1;
    }
    k
}

#[inline]
fn put_varint(out: &mut [u8], mut at: usize, mut n: usize) -> usize {
    while n >= 0x80 {
        out[at] = (n as u8) | 0x80;
        n >>= 7;
        at += 1;
    }
    out[at] = n as u8;
    at + 1
}

/// A byte/string array's offsets, nulls and value bytes, read in place whatever its offset
/// width (no per-row copy of the offsets: the encoder walks them twice, to size and to write).
pub enum Strings<'a> {
    Narrow(&'a [i32], Option<&'a NullBuffer>, &'a [u8]),
    Wide(&'a [i64], Option<&'a NullBuffer>, &'a [u8]),
}

fn narrow<T: ByteArrayType<Offset = i32>>(a: &GenericByteArray<T>) -> Strings<'_> {
    Strings::Narrow(a.value_offsets(), a.nulls(), a.value_data())
}

fn wide<T: ByteArrayType<Offset = i64>>(a: &GenericByteArray<T>) -> Strings<'_> {
    Strings::Wide(a.value_offsets(), a.nulls(), a.value_data())
}

/// Row `i`'s (start, end) in the values; a null row is empty.
#[inline]
fn span<O: OffsetSizeTrait>(offs: &[O], nulls: Option<&NullBuffer>, i: usize) -> (usize, usize) {
    match nulls {
        Some(n) if n.is_null(i) => (0, 0),
        _ => (offs[i].as_usize(), offs[i + 1].as_usize()),
    }
}

fn encoded_len<O: OffsetSizeTrait>(offs: &[O], nulls: Option<&NullBuffer>) -> usize {
    let rows = offs.len().saturating_sub(1);
    if rows == 0 {
        return 0;
    }
    if nulls.is_none() {
        // the value bytes in one subtraction, plus one varint per row
        let mut len = offs[rows].as_usize() - offs[0].as_usize();
        for w in offs.windows(2) {
            len += varint_len(w[1].as_usize() - w[0].as_usize());
        }
        return len;
    }
    (0..rows)
        .map(|i| {
            let (a, b) = span(offs, nulls, i);
            varint_len(b - a) + (b - a)
        })
        .sum()
}

fn write<O: OffsetSizeTrait>(offs: &[O], nulls: Option<&NullBuffer>, values: &[u8], out: &mut [u8]) {
    let mut at = 0;
    for i in 0..offs.len().saturating_sub(1) {
        let (a, b) = span(offs, nulls, i);
        at = put_varint(out, at, b - a);
        out[at..at + (b - a)].copy_from_slice(&values[a..b]);
        at += b - a;
    }
}

impl<'a> Strings<'a> {
    /// Borrows a Utf8/Binary array (32- or 64-bit offsets).
    pub fn of(arr: &'a dyn Array) -> Result<Self, String> {
        Ok(match arr.data_type() {
            DataType::Utf8 => narrow(arr.as_string::<i32>()),
            DataType::LargeUtf8 => wide(arr.as_string::<i64>()),
            DataType::Binary => narrow(arr.as_binary::<i32>()),
            DataType::LargeBinary => wide(arr.as_binary::<i64>()),
            t => return Err(format!("cannot write {t} as a ClickHouse String column")),
        })
    }

    /// Size of the Native encoding.
    pub fn encoded_len(&self) -> usize {
        match *self {
            Strings::Narrow(o, n, _) => encoded_len(o, n),
            Strings::Wide(o, n, _) => encoded_len(o, n),
        }
    }

    /// Writes the Native encoding into `out` (exactly `encoded_len()` bytes).
    pub fn write(&self, out: &mut [u8]) {
        match *self {
            Strings::Narrow(o, n, v) => write(o, n, v, out),
            Strings::Wide(o, n, v) => write(o, n, v, out),
        }
    }
}
