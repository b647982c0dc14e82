//! Append-only Arrow column builders that can roll back to a mark (a payload that fails to
//! decode contributes no rows) and turn into arrow-rs arrays without copying or re-validating.

use std::sync::Arc;

use arrow_array::{
    types::{
        ArrowPrimitiveType, Float64Type, Int32Type, TimestampNanosecondType, UInt32Type,
        UInt64Type, UInt8Type,
    },
    Array, ArrayRef, BooleanArray, ListArray, MapArray, PrimitiveArray, StringArray, StructArray,
};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields};

pub fn map_entries_field() -> Arc<Field> {
    Arc::new(Field::new(
        "entries",
        DataType::Struct(map_entry_fields()),
        false,
    ))
}

fn map_entry_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
    ])
}

/// `list<T>` array over `vals` (T is the child's type; items nullable, as ClickHouse reads).
fn list_array(row_offsets: Vec<i32>, vals: ArrayRef) -> ArrayRef {
    let field = Arc::new(Field::new("item", vals.data_type().clone(), true));
    // SAFETY: row offsets are monotonic and end at the child length.
    Arc::new(unsafe { ListArray::new_unchecked(field, offsets(row_offsets), vals, None) })
}

fn offsets(v: Vec<i32>) -> OffsetBuffer<i32> {
    // SAFETY: offsets are pushed monotonically by the builders below, starting at 0.
    unsafe { OffsetBuffer::new_unchecked(ScalarBuffer::from(v)) }
}

/// `dst.extend_from_slice(s)`, with the short copies most strings here need (ids, names,
/// attribute keys and values) done inline: through libc's memmove they were ~10 % of a decode.
#[inline(always)]
pub fn append(dst: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n > 32 {
        dst.extend_from_slice(s);
        return;
    }
    dst.reserve(n);
    let len = dst.len();
    // SAFETY: `reserve` made room for n bytes after len; every copy below stays within s[..n]
    // and dst[len..len + n] (two overlapping halves of a fixed width w with w <= n <= 2w).
    unsafe {
        let (src, out) = (s.as_ptr(), dst.as_mut_ptr().add(len));
        if n >= 16 {
            std::ptr::copy_nonoverlapping(src, out, 16);
            std::ptr::copy_nonoverlapping(src.add(n - 16), out.add(n - 16), 16);
        } else if n >= 8 {
            std::ptr::copy_nonoverlapping(src, out, 8);
            std::ptr::copy_nonoverlapping(src.add(n - 8), out.add(n - 8), 8);
        } else if n >= 4 {
            std::ptr::copy_nonoverlapping(src, out, 4);
            std::ptr::copy_nonoverlapping(src.add(n - 4), out.add(n - 4), 4);
        } else if n > 0 {
            *out = *src;
            *out.add(n / 2) = *src.add(n / 2);
            *out.add(n - 1) = *src.add(n - 1);
        }
        dst.set_len(len + n);
    }
}

/// UTF-8 string column (all strings are validated before they are appended).
pub struct StrCol {
    pub offsets: Vec<i32>,
    pub data: Vec<u8>,
}

impl Default for StrCol {
    fn default() -> Self {
        Self::new()
    }
}

impl StrCol {
    pub fn new() -> Self {
        StrCol {
            offsets: vec![0],
            data: Vec::new(),
        }
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }
    #[inline]
    pub fn push(&mut self, s: &[u8]) {
        append(&mut self.data, s);
        self.offsets.push(self.data.len() as i32);
    }
    /// Closes a value whose bytes were written straight into `data`.
    #[inline]
    pub fn finish(&mut self) {
        self.offsets.push(self.data.len() as i32);
    }
    #[inline]
    pub fn value(&self, i: usize) -> &[u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
    /// Appends every value of `other`. Fails instead of growing past what i32 offsets can
    /// address (per-row copies of resource/scope attributes can amplify a small payload).
    pub fn extend_from(&mut self, other: &StrCol) -> Result<(), String> {
        if self.data.len() + other.data.len() > i32::MAX as usize {
            return Err("decoded attributes exceed 2 GiB in one batch".into());
        }
        let base = self.data.len() as i32;
        self.data.extend_from_slice(&other.data);
        self.offsets
            .extend(other.offsets[1..].iter().map(|o| o + base));
        Ok(())
    }
    pub fn clear(&mut self) {
        self.offsets.truncate(1);
        self.data.clear();
    }
    pub fn mark(&self) -> (usize, usize) {
        (self.offsets.len(), self.data.len())
    }
    pub fn rollback(&mut self, m: (usize, usize)) {
        self.offsets.truncate(m.0);
        self.data.truncate(m.1);
    }
    pub fn too_big(&self) -> bool {
        self.data.len() > i32::MAX as usize
    }
    pub fn finish_array(self) -> StringArray {
        // SAFETY: offsets are monotonic and every appended value was valid UTF-8.
        unsafe { StringArray::new_unchecked(offsets(self.offsets), Buffer::from(self.data), None) }
    }
    pub fn into_array(self) -> ArrayRef {
        Arc::new(self.finish_array())
    }
}

/// `map<string, string>` column.
pub struct MapCol {
    pub offsets: Vec<i32>,
    pub keys: StrCol,
    pub vals: StrCol,
}

impl Default for MapCol {
    fn default() -> Self {
        Self::new()
    }
}

impl MapCol {
    pub fn new() -> Self {
        MapCol {
            offsets: vec![0],
            keys: StrCol::new(),
            vals: StrCol::new(),
        }
    }
    #[inline]
    pub fn end_row(&mut self) {
        self.offsets.push(self.keys.len() as i32);
    }
    pub fn mark(&self) -> (usize, (usize, usize), (usize, usize)) {
        (self.offsets.len(), self.keys.mark(), self.vals.mark())
    }
    pub fn rollback(&mut self, m: (usize, (usize, usize), (usize, usize))) {
        self.offsets.truncate(m.0);
        self.keys.rollback(m.1);
        self.vals.rollback(m.2);
    }
    pub fn too_big(&self) -> bool {
        self.keys.too_big() || self.vals.too_big()
    }
    pub fn into_array(self) -> ArrayRef {
        Arc::new(self.finish_array())
    }
    pub fn finish_array(self) -> MapArray {
        let keys: ArrayRef = self.keys.into_array();
        let vals: ArrayRef = self.vals.into_array();
        // SAFETY: both children have the same length, matching the entry field types.
        let entries =
            unsafe { StructArray::new_unchecked(map_entry_fields(), vec![keys, vals], None) };
        // SAFETY: offsets are monotonic and end at the entry count.
        unsafe {
            MapArray::new_unchecked(
                map_entries_field(),
                offsets(self.offsets),
                entries,
                None,
                false,
            )
        }
    }
}

/// `list<string>` column.
pub struct ListStrCol {
    pub offsets: Vec<i32>,
    pub values: StrCol,
}

impl Default for ListStrCol {
    fn default() -> Self {
        Self::new()
    }
}

impl ListStrCol {
    pub fn new() -> Self {
        ListStrCol {
            offsets: vec![0],
            values: StrCol::new(),
        }
    }
    #[inline]
    pub fn end_row(&mut self) {
        self.offsets.push(self.values.len() as i32);
    }
    pub fn mark(&self) -> (usize, (usize, usize)) {
        (self.offsets.len(), self.values.mark())
    }
    pub fn rollback(&mut self, m: (usize, (usize, usize))) {
        self.offsets.truncate(m.0);
        self.values.rollback(m.1);
    }
    pub fn into_array(self) -> ArrayRef {
        list_array(self.offsets, self.values.into_array())
    }
}

/// `list<timestamp[ns]>` column.
pub struct ListTsCol {
    pub offsets: Vec<i32>,
    pub values: Vec<i64>,
}

impl Default for ListTsCol {
    fn default() -> Self {
        Self::new()
    }
}

impl ListTsCol {
    pub fn new() -> Self {
        ListTsCol {
            offsets: vec![0],
            values: Vec::new(),
        }
    }
    #[inline]
    pub fn end_row(&mut self) {
        self.offsets.push(self.values.len() as i32);
    }
    pub fn mark(&self) -> (usize, usize) {
        (self.offsets.len(), self.values.len())
    }
    pub fn rollback(&mut self, m: (usize, usize)) {
        self.offsets.truncate(m.0);
        self.values.truncate(m.1);
    }
    pub fn into_array(self) -> ArrayRef {
        list_array(self.offsets, ts_col(self.values))
    }
}

/// `list<primitive>` column (uint64, float64).
pub struct ListPrimCol<T> {
    pub offsets: Vec<i32>,
    pub values: Vec<T>,
}

impl<T: Copy> Default for ListPrimCol<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> ListPrimCol<T> {
    pub fn new() -> Self {
        ListPrimCol {
            offsets: vec![0],
            values: Vec::new(),
        }
    }
    #[inline]
    pub fn end_row(&mut self) {
        self.offsets.push(self.values.len() as i32);
    }
}

impl ListPrimCol<u64> {
    pub fn into_array(self) -> ArrayRef {
        list_array(self.offsets, u64_array(self.values))
    }
}

impl ListPrimCol<f64> {
    pub fn into_array(self) -> ArrayRef {
        list_array(self.offsets, f64_array(self.values))
    }
}

/// `list<map<string, string>>` column.
pub struct ListMapCol {
    pub offsets: Vec<i32>,
    pub values: MapCol,
}

impl Default for ListMapCol {
    fn default() -> Self {
        Self::new()
    }
}

impl ListMapCol {
    pub fn new() -> Self {
        ListMapCol {
            offsets: vec![0],
            values: MapCol::new(),
        }
    }
    #[inline]
    pub fn end_row(&mut self) {
        self.offsets.push((self.values.offsets.len() - 1) as i32);
    }
    pub fn mark(&self) -> (usize, (usize, (usize, usize), (usize, usize))) {
        (self.offsets.len(), self.values.mark())
    }
    pub fn rollback(&mut self, m: (usize, (usize, (usize, usize), (usize, usize)))) {
        self.offsets.truncate(m.0);
        self.values.rollback(m.1);
    }
    pub fn into_array(self) -> ArrayRef {
        list_array(self.offsets, self.values.into_array())
    }
}

/// Struct array of the named, non-nullable columns (each field takes its column's type).
pub fn struct_of(cols: Vec<(&str, ArrayRef)>) -> StructArray {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = cols
        .into_iter()
        .map(|(name, a)| (Field::new(name, a.data_type().clone(), false), a))
        .unzip();
    StructArray::new(Fields::from(fields), arrays, None)
}

/// Non-null primitive array over `v` (no copy).
fn prim_array<T: ArrowPrimitiveType>(v: Vec<T::Native>) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(v), None))
}

pub fn ts_array(v: Vec<i64>) -> PrimitiveArray<TimestampNanosecondType> {
    PrimitiveArray::<TimestampNanosecondType>::new(ScalarBuffer::from(v), None)
}

pub fn ts_col(v: Vec<i64>) -> ArrayRef {
    Arc::new(ts_array(v))
}

pub fn u64_array(v: Vec<u64>) -> ArrayRef {
    prim_array::<UInt64Type>(v)
}

pub fn u8_array(v: Vec<u8>) -> ArrayRef {
    prim_array::<UInt8Type>(v)
}

pub fn f64_array(v: Vec<f64>) -> ArrayRef {
    prim_array::<Float64Type>(v)
}

pub fn u32_array(v: Vec<u32>) -> ArrayRef {
    prim_array::<UInt32Type>(v)
}

pub fn i32_array(v: Vec<i32>) -> ArrayRef {
    prim_array::<Int32Type>(v)
}

pub fn bool_array(v: Vec<bool>) -> ArrayRef {
    Arc::new(BooleanArray::from(v))
}

impl MapCol {
    /// Appends one row holding every entry of `other` (resource/scope attributes rendered
    /// once, copied into each row).
    #[inline]
    pub fn push_row_from(&mut self, other: &MapCol) -> Result<(), String> {
        self.keys.extend_from(&other.keys)?;
        self.vals.extend_from(&other.vals)?;
        self.end_row();
        Ok(())
    }

    /// Drops every entry (used on scratch maps whose row offsets are never read).
    #[inline]
    pub fn clear_entries(&mut self) {
        self.keys.clear();
        self.vals.clear();
    }
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

/// A column that can reserve capacity, checkpoint its lengths, roll back to a checkpoint and
/// tell whether it outgrew what i32 offsets can address.
pub trait Markable {
    fn grow(&mut self, num: usize, den: usize);
    fn marks(&self, v: &mut Vec<usize>);
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>);
    fn big(&self) -> bool;
    /// `big()`, or more rows than i32 offsets can count (the traces/logs check).
    fn rows_big(&self) -> bool {
        self.big()
    }
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
    fn rows_big(&self) -> bool {
        self.offsets.len() > i32::MAX as usize || self.big()
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

/// `Markable` for a column made of row `offsets` plus one child (`$child`, itself Markable);
/// `$big` says when the column is too big.
macro_rules! markable_nested {
    ([$($gen:tt)*] $t:ty, $child:ident, |$c:ident| $big:expr) => {
        impl<$($gen)*> Markable for $t {
            fn grow(&mut self, num: usize, den: usize) {
                grow(&mut self.offsets, num, den);
                Markable::grow(&mut self.$child, num, den);
            }
            fn marks(&self, v: &mut Vec<usize>) {
                v.push(self.offsets.len());
                Markable::marks(&self.$child, v);
            }
            fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
                self.offsets.truncate(it.next().unwrap());
                Markable::restore(&mut self.$child, it);
            }
            fn big(&self) -> bool {
                let $c = self;
                $big
            }
            fn rows_big(&self) -> bool {
                self.offsets.len() > i32::MAX as usize || self.big()
            }
        }
    };
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
    fn rows_big(&self) -> bool {
        self.offsets.len() > i32::MAX as usize || self.big()
    }
}

markable_nested!([] ListStrCol, values, |c| c.values.too_big()
    || c.values.offsets.len() > i32::MAX as usize);
markable_nested!([] ListMapCol, values, |c| c.values.big()
    || c.values.offsets.len() > i32::MAX as usize);
markable_nested!([] ListTsCol, values, |c| c.values.len() > i32::MAX as usize);

markable_nested!([T: Copy] ListPrimCol<T>, values, |c| c.values.len() > i32::MAX as usize);

/// `Markable` for a row builder made of Markable columns: every method visits the listed
/// fields in order (`big` / `rows_big`: any of them).
macro_rules! markable_fields {
    ($t:ty { $($c:ident),* $(,)? }) => {
        impl $crate::cols::Markable for $t {
            fn grow(&mut self, num: usize, den: usize) {
                $( $crate::cols::Markable::grow(&mut self.$c, num, den); )*
            }
            fn marks(&self, v: &mut Vec<usize>) {
                $( $crate::cols::Markable::marks(&self.$c, v); )*
            }
            fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
                $( $crate::cols::Markable::restore(&mut self.$c, it); )*
            }
            fn big(&self) -> bool {
                false $( || $crate::cols::Markable::big(&self.$c) )*
            }
            fn rows_big(&self) -> bool {
                false $( || $crate::cols::Markable::rows_big(&self.$c) )*
            }
        }
    };
}
pub(crate) use markable_fields;

/// Checkpoint of a Markable row builder: the lengths of all its columns.
pub struct Mark(Vec<usize>);

impl Mark {
    pub fn of<M: Markable + ?Sized>(m: &M) -> Mark {
        let mut v = Vec::new();
        m.marks(&mut v);
        Mark(v)
    }

    /// Truncates every column of `m` back to this checkpoint.
    pub fn restore<M: Markable + ?Sized>(&self, m: &mut M) {
        m.restore(&mut self.0.iter().copied());
    }
}
