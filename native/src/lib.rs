//! otelwax._native: OTLP protobuf ⇄ Arrow codec.
//!
//! Python interface (wrapped by otelwax/codec/native.py):
//!   decode_traces(payloads: list[bytes]) -> (pyarrow.RecordBatch, errors, rows)
//!   decode_logs(payloads: list[bytes])   -> same
//!   decode_metrics(payloads: list[bytes]) -> ({table: pyarrow.RecordBatch}, errors, rows)
//!   encode_traces(schema_capsule, array_capsule) -> bytes   (ExportTraceServiceRequest)
//!   split_traces(payload, limit, validate) -> ([(key, value)], spans, rejected)  (ingest)
//!   native_strings(schema_capsule, array_capsule) -> bytes  (ClickHouse Native String column)
//!   native_strings_into(schema_capsule, array_capsule, out: bytearray, at) -> size  (the same
//!     body written into out[at:at + size] when it fits; out is left alone when it does not)
//! The batch is handed over through the Arrow C data interface (no copy) with the exact
//! otelwax.schemas schema; errors is a list of (index, reason) and rows the row count each
//! payload contributed. encode_traces takes the capsules of `batch.__arrow_c_array__()`.

// Builders are constructed with `new()` on purpose (no meaningful Default); the wire reader's
// `next` returns a Result, so it is not an Iterator.
#![allow(
    clippy::new_without_default,
    clippy::should_implement_trait,
    clippy::len_without_is_empty
)]
#![allow(clippy::type_complexity)]

pub mod chnative;
pub mod cols;
pub mod encode;
pub mod logs;
pub mod metrics;
pub mod render;
pub mod split;
pub mod traces;
pub mod walk;
pub mod wire;

use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow_array::{ffi::FFI_ArrowArray, ffi::FFI_ArrowSchema, Array, StructArray};
use arrow_data::ArrayData;
use arrow_schema::Field;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyCapsule, PyDict, PyList, PyTuple};
use std::collections::HashMap;

pub type DecodeOut<O> = (O, Vec<(usize, String)>, Vec<usize>);

/// A table builder that can checkpoint and roll back per payload.
pub trait Table {
    type Mark;
    type Out;
    fn mark(&self) -> Self::Mark;
    fn rollback(&mut self, m: &Self::Mark);
    fn rows(&self) -> usize;
    fn too_big(&self) -> bool;
    fn grow(&mut self, num: usize, den: usize);
    fn decode(&mut self, buf: &[u8]) -> wire::Res<()>;
    fn finish(self) -> Self::Out;
}

/// `Table` for a signal's row builder: columns checkpoint through `Markable`, the rest is
/// the builder's own `rows`/`too_big`/`decode`/`finish`.
macro_rules! table {
    ($t:ty => $out:ty) => {
        impl Table for $t {
            type Mark = cols::Mark;
            type Out = $out;
            fn mark(&self) -> cols::Mark {
                cols::Mark::of(self)
            }
            fn rollback(&mut self, m: &cols::Mark) {
                m.restore(self)
            }
            fn rows(&self) -> usize {
                <$t>::rows(self)
            }
            fn too_big(&self) -> bool {
                <$t>::too_big(self)
            }
            fn grow(&mut self, num: usize, den: usize) {
                cols::Markable::grow(self, num, den)
            }
            fn decode(&mut self, buf: &[u8]) -> wire::Res<()> {
                <$t>::decode(self, buf)
            }
            fn finish(self) -> $out {
                <$t>::finish(self)
            }
        }
    };
}

table!(traces::Traces => StructArray);
table!(metrics::Metrics => Vec<StructArray>);
table!(logs::Logs => StructArray);

/// Decodes every payload into `t`; a payload that fails (or panics) is rolled back and
/// reported, the others keep their rows.
pub fn decode_all<T: Table, B: AsRef<[u8]>>(mut t: T, payloads: &[B]) -> DecodeOut<T::Out> {
    let mut errors = Vec::new();
    let mut rows = Vec::with_capacity(payloads.len());
    let total: usize = payloads.iter().map(|p| p.as_ref().len()).sum();
    let mut seen = 0usize;
    for (i, p) in payloads.iter().enumerate() {
        if i == 1 && seen >= 256 {
            // Plan capacity from the first payload: the rest is likely alike.
            t.grow(total - seen, seen);
        }
        seen += p.as_ref().len();
        let mark = t.mark();
        let before = t.rows();
        let res = catch_unwind(AssertUnwindSafe(|| t.decode(p.as_ref())));
        let res = match res {
            Ok(Ok(())) if t.too_big() => Err("batch exceeds 2 GiB of string data".to_string()),
            Ok(r) => r,
            Err(_) => Err("internal decoder error (panic)".to_string()),
        };
        match res {
            Ok(()) => rows.push(t.rows() - before),
            Err(e) => {
                t.rollback(&mark);
                errors.push((i, e));
                rows.push(0);
            }
        }
    }
    (t.finish(), errors, rows)
}

/// One-shot holder of an exported struct array, handed to `pyarrow.record_batch` through the
/// Arrow PyCapsule interface (`__arrow_c_array__`).
#[pyclass(module = "otelwax._native")]
struct CArray {
    capsules: Option<(Py<PyCapsule>, Py<PyCapsule>)>,
}

#[pymethods]
impl CArray {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &mut self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Py<PyCapsule>, Py<PyCapsule>)> {
        let _ = requested_schema;
        let _ = py;
        self.capsules
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("array already exported"))
    }
}

static RECORD_BATCH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Exports a struct array as a `pyarrow.RecordBatch` without copying (C data interface); the
/// schema carries the table name as metadata, like otelwax.schemas.
fn to_record_batch<'py>(
    py: Python<'py>,
    arr: StructArray,
    table: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let field = Field::new("", arr.data_type().clone(), false).with_metadata(HashMap::from([(
        "otelwax.table".to_string(),
        table.to_string(),
    )]));
    let schema =
        FFI_ArrowSchema::try_from(&field).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let data: ArrayData = arr.into_data();
    let array = FFI_ArrowArray::new(&data);
    let s = PyCapsule::new_with_value(py, schema, c"arrow_schema")?.unbind();
    let a = PyCapsule::new_with_value(py, array, c"arrow_array")?.unbind();
    let holder = Py::new(
        py,
        CArray {
            capsules: Some((s, a)),
        },
    )?;
    let rb = RECORD_BATCH.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("pyarrow")?.getattr("record_batch")?.unbind())
    })?;
    rb.bind(py).call1((holder,))
}

type PyDecodeOut<'py> = (Bound<'py, PyAny>, Vec<(usize, String)>, Vec<usize>);

fn run_decode<'py, T: Table<Out = StructArray> + Send>(
    py: Python<'py>,
    payloads: Vec<PyBackedBytes>,
    make: fn() -> T,
    table: &str,
) -> PyResult<PyDecodeOut<'py>> {
    let out = py.detach(|| catch_unwind(AssertUnwindSafe(|| decode_all(make(), &payloads))));
    let (arr, errors, rows) =
        out.map_err(|_| PyRuntimeError::new_err("internal decoder error (panic)"))?;
    Ok((to_record_batch(py, arr, table)?, errors, rows))
}

/// Decodes serialized ExportTraceServiceRequest payloads into otel_traces columns.
#[pyfunction]
fn decode_traces<'py>(py: Python<'py>, payloads: Vec<PyBackedBytes>) -> PyResult<PyDecodeOut<'py>> {
    run_decode(py, payloads, traces::Traces::new, "otel_traces")
}

/// Decodes serialized ExportLogsServiceRequest payloads into otel_logs columns.
#[pyfunction]
fn decode_logs<'py>(py: Python<'py>, payloads: Vec<PyBackedBytes>) -> PyResult<PyDecodeOut<'py>> {
    run_decode(py, payloads, logs::Logs::new, "otel_logs")
}

/// The array behind `__arrow_c_array__()` capsules (moved out: the capsule's copy is released).
fn import_array(
    schema: &Bound<'_, PyCapsule>,
    array: &Bound<'_, PyCapsule>,
) -> PyResult<ArrayData> {
    let sp = schema.pointer_checked(Some(c"arrow_schema"))?;
    let ap = array.pointer_checked(Some(c"arrow_array"))?;
    // SAFETY: the capsules follow the Arrow PyCapsule interface; from_raw moves the array out
    // (marking the capsule's copy released) and the schema is only borrowed.
    unsafe {
        let ffi_array = FFI_ArrowArray::from_raw(ap.as_ptr() as *mut FFI_ArrowArray);
        let ffi_schema = &*(sp.as_ptr() as *const FFI_ArrowSchema);
        arrow_array::ffi::from_ffi(ffi_array, ffi_schema)
    }
    .map_err(|e| PyValueError::new_err(format!("cannot import Arrow array: {e}")))
}

/// A string/binary array (Arrow PyCapsules) as the body of a ClickHouse Native `String`
/// column: per row a varint length and the bytes; nulls as empty strings.
#[pyfunction]
fn native_strings<'py>(
    py: Python<'py>,
    schema: Bound<'py, PyCapsule>,
    array: Bound<'py, PyCapsule>,
) -> PyResult<Bound<'py, PyBytes>> {
    let arr = arrow_array::make_array(import_array(&schema, &array)?);
    let s = chnative::Strings::of(arr.as_ref()).map_err(PyValueError::new_err)?;
    PyBytes::new_with(py, s.encoded_len(), |buf| {
        s.write(buf);
        Ok(())
    })
}

/// `native_strings`' body written into `out[at..]` of a caller's reusable buffer (no fresh,
/// zero-filled bytes per column), if it fits; returns its size either way.
#[pyfunction]
fn native_strings_into<'py>(
    schema: Bound<'py, PyCapsule>,
    array: Bound<'py, PyCapsule>,
    out: Bound<'py, PyByteArray>,
    at: usize,
) -> PyResult<usize> {
    let arr = arrow_array::make_array(import_array(&schema, &array)?);
    let s = chnative::Strings::of(arr.as_ref()).map_err(PyValueError::new_err)?;
    let size = s.encoded_len();
    // SAFETY: the GIL is held from here to the end of the write and nothing in between runs
    // Python code, so the bytearray cannot be resized or freed while it is borrowed.
    let buf = unsafe { out.as_bytes_mut() };
    if let Some(dst) = buf.get_mut(at..).and_then(|b| b.get_mut(..size)) {
        s.write(dst);
    }
    Ok(size)
}

/// Encodes otel_traces rows (Arrow PyCapsules of a struct array / record batch) as one
/// serialized ExportTraceServiceRequest.
#[pyfunction]
fn encode_traces<'py>(
    py: Python<'py>,
    schema: Bound<'py, PyCapsule>,
    array: Bound<'py, PyCapsule>,
) -> PyResult<Bound<'py, PyBytes>> {
    let data = import_array(&schema, &array)?;
    let bytes = py.detach(|| {
        catch_unwind(AssertUnwindSafe(|| {
            let arr = StructArray::from(data);
            encode::encode_traces(&arr)
        }))
    });
    match bytes {
        Ok(Ok(b)) => Ok(PyBytes::new(py, &b)),
        Ok(Err(e)) => Err(PyValueError::new_err(e)),
        Err(_) => Err(PyRuntimeError::new_err("internal encoder error (panic)")),
    }
}

/// Decodes serialized ExportMetricsServiceRequest payloads into one batch per metrics table:
/// returns ({table name: pyarrow.RecordBatch}, errors, data points per payload).
#[pyfunction]
fn decode_metrics<'py>(
    py: Python<'py>,
    payloads: Vec<PyBackedBytes>,
) -> PyResult<(Bound<'py, PyDict>, Vec<(usize, String)>, Vec<usize>)> {
    let out = py.detach(|| {
        catch_unwind(AssertUnwindSafe(|| {
            decode_all(metrics::Metrics::new(), &payloads)
        }))
    });
    let (arrs, errors, rows) =
        out.map_err(|_| PyRuntimeError::new_err("internal decoder error (panic)"))?;
    let d = PyDict::new(py);
    for (name, arr) in metrics::TABLES.iter().zip(arrs) {
        d.set_item(*name, to_record_batch(py, arr, name)?)?;
    }
    Ok((d, errors, rows))
}

/// Splits a serialized ExportTraceServiceRequest into Kafka records of at most `limit` bytes,
/// one trace per record: returns ([(key or None, value)], spans, spans rejected as too large).
/// With `validate`, the request is also checked as a protobuf parser would; raises ValueError
/// naming the problem when it is malformed.
#[pyfunction]
fn split_traces<'py>(
    py: Python<'py>,
    payload: &[u8],
    limit: usize,
    validate: bool,
) -> PyResult<(Bound<'py, PyList>, usize, usize)> {
    // The GIL stays held: the split takes tens of microseconds, and giving the GIL away to
    // the other server threads and taking it back costs more than that buys.
    let out = catch_unwind(AssertUnwindSafe(|| {
        split::split_traces(payload, limit, validate)
    }));
    let s = match out {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(PyValueError::new_err(e)),
        Err(_) => return Err(PyRuntimeError::new_err("internal splitter error (panic)")),
    };
    let mut recs = Vec::with_capacity(s.records.len());
    for (k, v) in &s.records {
        let key = match k {
            Some(k) => PyBytes::new(py, k).into_any(),
            None => py.None().into_bound(py),
        };
        recs.push(PyTuple::new(py, [key, PyBytes::new(py, v).into_any()])?);
    }
    Ok((PyList::new(py, recs)?, s.items, s.rejected))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CArray>()?;
    m.add_function(wrap_pyfunction!(decode_traces, m)?)?;
    m.add_function(wrap_pyfunction!(decode_logs, m)?)?;
    m.add_function(wrap_pyfunction!(decode_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(encode_traces, m)?)?;
    m.add_function(wrap_pyfunction!(split_traces, m)?)?;
    m.add_function(wrap_pyfunction!(native_strings, m)?)?;
    m.add_function(wrap_pyfunction!(native_strings_into, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
