//! ExportMetricsServiceRequest → one table per metric type (otel_metrics_*).

use arrow_array::StructArray;

use crate::cols::*;
use crate::render::{push_attr, push_id, validate_kv, Parts};
use crate::walk::{
    decode_request, envelope, parse_scope, with_scratch, ResourceScratch, Scope, ScopeCols,
    ScopeRow, Signal,
};
use crate::wire::{utf8, Reader, Res, Val};

pub const TABLES: [&str; 5] = [
    "otel_metrics_gauge",
    "otel_metrics_sum",
    "otel_metrics_histogram",
    "otel_metrics_exponential_histogram",
    "otel_metrics_summary",
];

const GAUGE: usize = 0;
const SUM: usize = 1;
const HIST: usize = 2;
const EXP: usize = 3;
const SUMMARY: usize = 4;

/// Every column any metrics table has; each table fills the ones of its schema.
pub struct MetricTable {
    kind: usize,
    sc: ScopeCols,
    scope_dropped: Vec<u32>,
    name: StrCol,
    desc: StrCol,
    unit: StrCol,
    attrs: MapCol,
    start: Vec<i64>,
    time: Vec<i64>,
    ex_attrs: ListMapCol,
    ex_time: ListTsCol,
    ex_value: ListPrimCol<f64>,
    ex_span: ListStrCol,
    ex_trace: ListStrCol,
    value: Vec<f64>,
    flags: Vec<u32>,
    temporality: Vec<i32>,
    monotonic: Vec<bool>,
    count: Vec<u64>,
    sum: Vec<f64>,
    buckets: ListPrimCol<u64>,
    bounds: ListPrimCol<f64>,
    scale: Vec<i32>,
    zero_count: Vec<u64>,
    pos_offset: Vec<i32>,
    pos: ListPrimCol<u64>,
    neg_offset: Vec<i32>,
    neg: ListPrimCol<u64>,
    min: Vec<f64>,
    max: Vec<f64>,
    quantile: ListPrimCol<f64>,
    qvalue: ListPrimCol<f64>,
}

markable_fields!(MetricTable {
    sc,
    scope_dropped,
    name,
    desc,
    unit,
    attrs,
    start,
    time,
    ex_attrs,
    ex_time,
    ex_value,
    ex_span,
    ex_trace,
    value,
    flags,
    temporality,
    monotonic,
    count,
    sum,
    buckets,
    bounds,
    scale,
    zero_count,
    pos_offset,
    pos,
    neg_offset,
    neg,
    min,
    max,
    quantile,
    qvalue,
});

/// Per-scope / per-metric values copied into every data point row.
struct Ctx<'a, 'b> {
    scope: &'b ScopeRow<'a, 'b>,
    name: &'a [u8],
    desc: &'a [u8],
    unit: &'a [u8],
}

#[inline]
fn zigzag32(x: u64) -> i32 {
    let n = x as u32;
    ((n >> 1) as i32) ^ -((n & 1) as i32)
}

/// Appends a repeated fixed64/double field (packed or not).
#[inline]
fn push_fixed64s(v: Val<'_>, out: &mut Vec<u64>) -> Res<()> {
    match v {
        Val::Fixed64(x) => out.push(x),
        Val::Bytes(b) => {
            if b.len() % 8 != 0 {
                return Err("packed fixed64 field length is not a multiple of 8".into());
            }
            out.extend(
                b.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap())),
            );
        }
        _ => {}
    }
    Ok(())
}

#[inline]
fn push_doubles(v: Val<'_>, out: &mut Vec<f64>) -> Res<()> {
    match v {
        Val::Fixed64(x) => out.push(f64::from_bits(x)),
        Val::Bytes(b) => {
            if b.len() % 8 != 0 {
                return Err("packed double field length is not a multiple of 8".into());
            }
            out.extend(
                b.chunks_exact(8)
                    .map(|c| f64::from_bits(u64::from_le_bytes(c.try_into().unwrap()))),
            );
        }
        _ => {}
    }
    Ok(())
}

/// Appends a repeated uint64 varint field (packed or not).
#[inline]
fn push_varints(v: Val<'_>, out: &mut Vec<u64>) -> Res<()> {
    match v {
        Val::Varint(x) => out.push(x),
        Val::Bytes(b) => {
            let mut r = Reader::new(b);
            while !r.at_end() {
                out.push(r.read_varint()?);
            }
        }
        _ => {}
    }
    Ok(())
}

impl MetricTable {
    fn new(kind: usize) -> Self {
        MetricTable {
            kind,
            sc: ScopeCols::default(),
            scope_dropped: Vec::new(),
            name: StrCol::new(),
            desc: StrCol::new(),
            unit: StrCol::new(),
            attrs: MapCol::new(),
            start: Vec::new(),
            time: Vec::new(),
            ex_attrs: ListMapCol::new(),
            ex_time: ListTsCol::new(),
            ex_value: ListPrimCol::new(),
            ex_span: ListStrCol::new(),
            ex_trace: ListStrCol::new(),
            value: Vec::new(),
            flags: Vec::new(),
            temporality: Vec::new(),
            monotonic: Vec::new(),
            count: Vec::new(),
            sum: Vec::new(),
            buckets: ListPrimCol::new(),
            bounds: ListPrimCol::new(),
            scale: Vec::new(),
            zero_count: Vec::new(),
            pos_offset: Vec::new(),
            pos: ListPrimCol::new(),
            neg_offset: Vec::new(),
            neg: ListPrimCol::new(),
            min: Vec::new(),
            max: Vec::new(),
            quantile: ListPrimCol::new(),
            qvalue: ListPrimCol::new(),
        }
    }

    fn rows(&self) -> usize {
        self.time.len()
    }

    /// Common columns of a finished data point row.
    fn common(&mut self, c: &Ctx<'_, '_>, start: u64, time: u64) -> Res<()> {
        self.sc.push(c.scope)?;
        self.scope_dropped.push(c.scope.scope.dropped);
        self.name.push(c.name);
        self.desc.push(c.desc);
        self.unit.push(c.unit);
        self.attrs.end_row();
        self.start.push(start as i64);
        self.time.push(time as i64);
        self.ex_attrs.end_row();
        self.ex_time.end_row();
        self.ex_value.end_row();
        self.ex_span.end_row();
        self.ex_trace.end_row();
        Ok(())
    }

    fn exemplar(&mut self, buf: &[u8]) -> Res<()> {
        let mut time = 0u64;
        let mut value = 0f64;
        let mut span: &[u8] = &[];
        let mut trace: &[u8] = &[];
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (7, Val::Bytes(kv)) => push_attr(kv, &mut self.ex_attrs.values, 8)?,
                (2, Val::Fixed64(x)) => time = x,
                (3, Val::Fixed64(x)) => value = f64::from_bits(x),
                (6, Val::Fixed64(x)) => value = x as i64 as f64,
                (4, Val::Bytes(b)) => span = b,
                (5, Val::Bytes(b)) => trace = b,
                _ => {}
            }
        }
        self.ex_attrs.values.end_row();
        self.ex_time.values.push(time as i64);
        self.ex_value.values.push(value);
        push_id(&mut self.ex_span.values, span, 8, "exemplar span_id")?;
        push_id(&mut self.ex_trace.values, trace, 16, "exemplar trace_id")?;
        Ok(())
    }

    fn number_point(&mut self, buf: &[u8], c: &Ctx<'_, '_>, temp: i32, mono: bool) -> Res<()> {
        let (mut start, mut time, mut value, mut flags) = (0u64, 0u64, 0f64, 0u32);
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (7, Val::Bytes(kv)) => push_attr(kv, &mut self.attrs, 7)?,
                (2, Val::Fixed64(x)) => start = x,
                (3, Val::Fixed64(x)) => time = x,
                (4, Val::Fixed64(x)) => value = f64::from_bits(x),
                (6, Val::Fixed64(x)) => value = x as i64 as f64,
                (5, Val::Bytes(b)) => self.exemplar(b)?,
                (8, Val::Varint(x)) => flags = x as u32,
                _ => {}
            }
        }
        self.value.push(value);
        self.flags.push(flags);
        if self.kind == SUM {
            self.temporality.push(temp);
            self.monotonic.push(mono);
        }
        self.common(c, start, time)
    }

    fn histogram_point(&mut self, buf: &[u8], c: &Ctx<'_, '_>, temp: i32) -> Res<()> {
        let (mut start, mut time, mut count, mut sum, mut flags) = (0u64, 0u64, 0u64, 0f64, 0u32);
        let (mut min, mut max) = (0f64, 0f64);
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (9, Val::Bytes(kv)) => push_attr(kv, &mut self.attrs, 7)?,
                (2, Val::Fixed64(x)) => start = x,
                (3, Val::Fixed64(x)) => time = x,
                (4, Val::Fixed64(x)) => count = x,
                (5, Val::Fixed64(x)) => sum = f64::from_bits(x),
                (6, v @ (Val::Fixed64(_) | Val::Bytes(_))) => {
                    push_fixed64s(v, &mut self.buckets.values)?
                }
                (7, v @ (Val::Fixed64(_) | Val::Bytes(_))) => {
                    push_doubles(v, &mut self.bounds.values)?
                }
                (8, Val::Bytes(b)) => self.exemplar(b)?,
                (10, Val::Varint(x)) => flags = x as u32,
                (11, Val::Fixed64(x)) => min = f64::from_bits(x),
                (12, Val::Fixed64(x)) => max = f64::from_bits(x),
                _ => {}
            }
        }
        self.buckets.end_row();
        self.bounds.end_row();
        self.hist_stats(count, sum, flags, (min, max), temp);
        self.common(c, start, time)
    }

    /// Columns histogram and exponential histogram points share.
    #[inline]
    fn hist_stats(&mut self, count: u64, sum: f64, flags: u32, min_max: (f64, f64), temp: i32) {
        self.count.push(count);
        self.sum.push(sum);
        self.flags.push(flags);
        self.min.push(min_max.0);
        self.max.push(min_max.1);
        self.temporality.push(temp);
    }

    fn buckets(buf: &Parts<'_>, out: &mut ListPrimCol<u64>) -> Res<i32> {
        let mut offset = 0i32;
        for b in buf.slices() {
            let mut r = Reader::new(b);
            while let Some((f, v)) = r.next()? {
                match (f, v) {
                    (1, Val::Varint(x)) => offset = zigzag32(x),
                    (2, v @ (Val::Varint(_) | Val::Bytes(_))) => push_varints(v, &mut out.values)?,
                    _ => {}
                }
            }
        }
        out.end_row();
        Ok(offset)
    }

    fn exp_histogram_point(&mut self, buf: &[u8], c: &Ctx<'_, '_>, temp: i32) -> Res<()> {
        let (mut start, mut time, mut count, mut sum, mut flags) = (0u64, 0u64, 0u64, 0f64, 0u32);
        let (mut min, mut max, mut scale, mut zero) = (0f64, 0f64, 0i32, 0u64);
        let (mut pos, mut neg) = (Parts::Absent, Parts::Absent);
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (1, Val::Bytes(kv)) => push_attr(kv, &mut self.attrs, 7)?,
                (2, Val::Fixed64(x)) => start = x,
                (3, Val::Fixed64(x)) => time = x,
                (4, Val::Fixed64(x)) => count = x,
                (5, Val::Fixed64(x)) => sum = f64::from_bits(x),
                (6, Val::Varint(x)) => scale = zigzag32(x),
                (7, Val::Fixed64(x)) => zero = x,
                (8, Val::Bytes(b)) => pos.push(b),
                (9, Val::Bytes(b)) => neg.push(b),
                (10, Val::Varint(x)) => flags = x as u32,
                (11, Val::Bytes(b)) => self.exemplar(b)?,
                (12, Val::Fixed64(x)) => min = f64::from_bits(x),
                (13, Val::Fixed64(x)) => max = f64::from_bits(x),
                _ => {}
            }
        }
        self.scale.push(scale);
        self.zero_count.push(zero);
        let po = Self::buckets(&pos, &mut self.pos)?;
        self.pos_offset.push(po);
        let no = Self::buckets(&neg, &mut self.neg)?;
        self.neg_offset.push(no);
        self.hist_stats(count, sum, flags, (min, max), temp);
        self.common(c, start, time)
    }

    fn summary_point(&mut self, buf: &[u8], c: &Ctx<'_, '_>) -> Res<()> {
        let (mut start, mut time, mut count, mut sum, mut flags) = (0u64, 0u64, 0u64, 0f64, 0u32);
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match (f, v) {
                (7, Val::Bytes(kv)) => push_attr(kv, &mut self.attrs, 7)?,
                (2, Val::Fixed64(x)) => start = x,
                (3, Val::Fixed64(x)) => time = x,
                (4, Val::Fixed64(x)) => count = x,
                (5, Val::Fixed64(x)) => sum = f64::from_bits(x),
                (6, Val::Bytes(b)) => {
                    let (mut q, mut qv) = (0f64, 0f64);
                    let mut qr = Reader::new(b);
                    while let Some((qf, v)) = qr.next()? {
                        match (qf, v) {
                            (1, Val::Fixed64(x)) => q = f64::from_bits(x),
                            (2, Val::Fixed64(x)) => qv = f64::from_bits(x),
                            _ => {}
                        }
                    }
                    self.quantile.values.push(q);
                    self.qvalue.values.push(qv);
                }
                (8, Val::Varint(x)) => flags = x as u32,
                _ => {}
            }
        }
        self.count.push(count);
        self.sum.push(sum);
        self.quantile.end_row();
        self.qvalue.end_row();
        self.flags.push(flags);
        self.common(c, start, time)
    }

    /// Decodes the data points of one metric data member (all its merged occurrences).
    fn data(&mut self, parts: &Parts<'_>, c: &Ctx<'_, '_>) -> Res<()> {
        let mut points: Vec<&[u8]> = Vec::new();
        let mut temp = 0i32;
        let mut mono = false;
        for b in parts.slices() {
            let mut r = Reader::new(b);
            while let Some((f, v)) = r.next()? {
                match (f, v) {
                    (1, Val::Bytes(p)) => points.push(p),
                    (2, Val::Varint(x)) if self.kind != GAUGE && self.kind != SUMMARY => {
                        temp = x as i32
                    }
                    (3, Val::Varint(x)) if self.kind == SUM => mono = x != 0,
                    _ => {}
                }
            }
        }
        for p in points {
            match self.kind {
                GAUGE | SUM => self.number_point(p, c, temp, mono)?,
                HIST => self.histogram_point(p, c, temp)?,
                EXP => self.exp_histogram_point(p, c, temp)?,
                _ => self.summary_point(p, c)?,
            }
        }
        Ok(())
    }

    /// The table's columns in schema order (each kind keeps only its own columns).
    fn finish(self) -> StructArray {
        let mut cols = vec![
            ("ResourceAttributes", self.sc.res_attrs.into_array()),
            ("ResourceSchemaUrl", self.sc.res_schema.into_array()),
            ("ScopeName", self.sc.scope_name.into_array()),
            ("ScopeVersion", self.sc.scope_version.into_array()),
            ("ScopeAttributes", self.sc.scope_attrs.into_array()),
            ("ScopeDroppedAttrCount", u32_array(self.scope_dropped)),
            ("ScopeSchemaUrl", self.sc.scope_schema.into_array()),
            ("ServiceName", self.sc.service.into_array()),
            ("MetricName", self.name.into_array()),
            ("MetricDescription", self.desc.into_array()),
            ("MetricUnit", self.unit.into_array()),
            ("Attributes", self.attrs.into_array()),
            ("StartTimeUnix", ts_col(self.start)),
            ("TimeUnix", ts_col(self.time)),
        ];
        let exemplars = [
            ("Exemplars.FilteredAttributes", self.ex_attrs.into_array()),
            ("Exemplars.TimeUnix", self.ex_time.into_array()),
            ("Exemplars.Value", self.ex_value.into_array()),
            ("Exemplars.SpanId", self.ex_span.into_array()),
            ("Exemplars.TraceId", self.ex_trace.into_array()),
        ];
        let value = ("Value", f64_array(self.value));
        let flags = ("Flags", u32_array(self.flags));
        let temporality = ("AggregationTemporality", i32_array(self.temporality));
        let count = ("Count", u64_array(self.count));
        let sum = ("Sum", f64_array(self.sum));
        let min_max_temporality = [
            ("Min", f64_array(self.min)),
            ("Max", f64_array(self.max)),
            temporality.clone(),
        ];
        match self.kind {
            GAUGE => {
                cols.extend([value, flags]);
                cols.extend(exemplars);
            }
            SUM => {
                cols.extend([value, flags]);
                cols.extend(exemplars);
                cols.extend([temporality, ("IsMonotonic", bool_array(self.monotonic))]);
            }
            HIST => {
                cols.extend([
                    count,
                    sum,
                    ("BucketCounts", self.buckets.into_array()),
                    ("ExplicitBounds", self.bounds.into_array()),
                ]);
                cols.extend(exemplars);
                cols.push(flags);
                cols.extend(min_max_temporality);
            }
            EXP => {
                cols.extend([
                    count,
                    sum,
                    ("Scale", i32_array(self.scale)),
                    ("ZeroCount", u64_array(self.zero_count)),
                    ("PositiveOffset", i32_array(self.pos_offset)),
                    ("PositiveBucketCounts", self.pos.into_array()),
                    ("NegativeOffset", i32_array(self.neg_offset)),
                    ("NegativeBucketCounts", self.neg.into_array()),
                ]);
                cols.extend(exemplars);
                cols.push(flags);
                cols.extend(min_max_temporality);
            }
            _ => {
                cols.extend([
                    count,
                    sum,
                    ("ValueAtQuantiles.Quantile", self.quantile.into_array()),
                    ("ValueAtQuantiles.Value", self.qvalue.into_array()),
                    flags,
                ]);
            }
        }
        struct_of(cols)
    }
}

/// The five metrics tables, decoded together.
pub struct Metrics {
    tables: Vec<MetricTable>,
    scratch: ResourceScratch,
    scope_attrs: MapCol,
    /// Throw-away table for data members replaced by a later oneof member (still validated).
    trash: Option<Box<Metrics>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            tables: (0..5).map(MetricTable::new).collect(),
            scratch: ResourceScratch::new(),
            scope_attrs: MapCol::new(),
            trash: None,
        }
    }

    pub fn rows(&self) -> usize {
        self.tables.iter().map(|t| t.rows()).sum()
    }

    /// Some column outgrew i32 offsets (string bytes or list children).
    pub fn too_big(&self) -> bool {
        self.big()
    }

    pub fn decode(&mut self, buf: &[u8]) -> Res<()> {
        decode_request(self, buf)
    }

    fn metric<'a>(&mut self, buf: &'a [u8], ctx: &mut Ctx<'a, '_>) -> Res<()> {
        // data oneof: members in order; consecutive occurrences of one member merge.
        let mut members: Vec<(usize, Parts<'a>)> = Vec::new();
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            let kind = match (f, v) {
                (1, Val::Bytes(b)) => {
                    utf8(b, "Metric.name")?;
                    ctx.name = b;
                    continue;
                }
                (2, Val::Bytes(b)) => {
                    utf8(b, "Metric.description")?;
                    ctx.desc = b;
                    continue;
                }
                (3, Val::Bytes(b)) => {
                    utf8(b, "Metric.unit")?;
                    ctx.unit = b;
                    continue;
                }
                (12, Val::Bytes(kv)) => {
                    validate_kv(kv, 5)?;
                    continue;
                }
                (5, Val::Bytes(_)) => GAUGE,
                (7, Val::Bytes(_)) => SUM,
                (9, Val::Bytes(_)) => HIST,
                (10, Val::Bytes(_)) => EXP,
                (11, Val::Bytes(_)) => SUMMARY,
                _ => continue,
            };
            let Val::Bytes(b) = v else { continue };
            match members.last_mut() {
                Some((k, p)) if *k == kind => p.push(b),
                _ => members.push((kind, Parts::One(b))),
            }
        }
        let Some((kind, parts)) = members.pop() else {
            return Ok(());
        };
        for (k, p) in &members {
            // replaced by a later member: a full protobuf parse still validates it
            let trash = self.trash.get_or_insert_with(|| Box::new(Metrics::new()));
            let mark = Mark::of(&**trash);
            let res = trash.tables[*k].data(p, ctx);
            mark.restore(&mut **trash);
            res?;
        }
        self.tables[kind].data(&parts, ctx)
    }

    pub fn finish(self) -> Vec<StructArray> {
        self.tables.into_iter().map(|t| t.finish()).collect()
    }
}

impl Markable for Metrics {
    fn grow(&mut self, num: usize, den: usize) {
        for t in &mut self.tables {
            t.grow(num, den);
        }
    }
    fn marks(&self, v: &mut Vec<usize>) {
        for t in &self.tables {
            t.marks(v);
        }
    }
    fn restore(&mut self, it: &mut dyn Iterator<Item = usize>) {
        for t in &mut self.tables {
            t.restore(it);
        }
    }
    fn big(&self) -> bool {
        self.tables.iter().any(|t| t.big())
    }
}

impl Signal for Metrics {
    const RESOURCE_SCHEMA: &'static str = "ResourceMetrics.schema_url";

    #[inline]
    fn resource_scratch(&mut self) -> &mut ResourceScratch {
        &mut self.scratch
    }

    fn scope(&mut self, buf: &[u8], res: &ResourceScratch, res_schema: &[u8]) -> Res<()> {
        let mut metrics: Vec<&[u8]> = Vec::new();
        let mut scope_parts: Vec<&[u8]> = Vec::new();
        let scope_schema = envelope(buf, "ScopeMetrics.schema_url", &mut metrics, |b| {
            scope_parts.push(b);
            Ok(())
        })?;
        with_scratch(
            self,
            |m| &mut m.scope_attrs,
            |m, sattrs| {
                sattrs.clear_entries();
                let mut scope = Scope::default();
                for b in scope_parts {
                    parse_scope(b, &mut scope, Some(&mut *sattrs))?;
                }
                let row = ScopeRow {
                    res,
                    res_schema,
                    scope,
                    scope_attrs: sattrs,
                    scope_schema,
                };
                for b in metrics {
                    let mut ctx = Ctx {
                        scope: &row,
                        name: &[],
                        desc: &[],
                        unit: &[],
                    };
                    m.metric(b, &mut ctx)?;
                }
                Ok(())
            },
        )
    }
}
