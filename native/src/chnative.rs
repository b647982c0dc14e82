//! Arrow columns → ClickHouse `Native` column bodies (the server's cheapest input to parse).
//!
//! A `String` column in a Native block is, per row, the byte length as an unsigned LEB128
//! varint followed by the bytes; a null row is written as the empty string.

use arrow_array::types::ByteArrayType;
use arrow_array::{cast::AsArray, Array, GenericByteArray, OffsetSizeTrait};
use arrow_buffer::ArrowNativeType;
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

/// A byte/string array's row lengths (0 for nulls) and value bytes, whatever its offset width.
pub struct Strings<'a> {
    offsets: Vec<(usize, usize)>,
    values: &'a [u8],
}

fn spans<T: ByteArrayType>(a: &GenericByteArray<T>) -> Strings<'_>
where
    T::Offset: OffsetSizeTrait,
{
    let offs = a.value_offsets();
    let offsets = (0..a.len())
        .map(|i| {
            if a.is_null(i) {
                (0, 0)
            } else {
                (offs[i].as_usize(), offs[i + 1].as_usize())
            }
        })
        .collect();
    Strings {
        offsets,
        values: a.value_data(),
    }
}

impl<'a> Strings<'a> {
    /// Borrows a Utf8/Binary array (32- or 64-bit offsets).
    pub fn of(arr: &'a dyn Array) -> Result<Self, String> {
        Ok(match arr.data_type() {
            DataType::Utf8 => spans(arr.as_string::<i32>()),
            DataType::LargeUtf8 => spans(arr.as_string::<i64>()),
            DataType::Binary => spans(arr.as_binary::<i32>()),
            DataType::LargeBinary => spans(arr.as_binary::<i64>()),
            t => return Err(format!("cannot write {t} as a ClickHouse String column")),
        })
    }

    /// Size of the Native encoding.
    pub fn encoded_len(&self) -> usize {
        self.offsets
            .iter()
            .map(|&(a, b)| varint_len(b - a) + (b - a))
            .sum()
    }

    /// Writes the Native encoding into `out` (exactly `encoded_len()` bytes).
    pub fn write(&self, out: &mut [u8]) {
        let mut at = 0;
        for &(a, b) in &self.offsets {
            at = put_varint(out, at, b - a);
            out[at..at + (b - a)].copy_from_slice(&self.values[a..b]);
            at += b - a;
        }
    }
}
