//! Decode loop without Python, for profiling: `cargo run --release --example profile -- FILE
//! [traces|logs] [iterations]` where FILE holds u32-LE length-prefixed payloads.

use std::time::Instant;

use arrow_array::Array;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).expect("read payload file");
    let kind = args.get(2).map(String::as_str).unwrap_or("traces");
    let iters: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut payloads: Vec<&[u8]> = Vec::new();
    let mut pos = 0;
    while pos + 4 <= data.len() {
        let n = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        payloads.push(&data[pos + 4..pos + 4 + n]);
        pos += 4 + n;
    }
    let mut best = f64::MAX;
    let mut rows = 0;
    for _ in 0..iters {
        let t = Instant::now();
        let (arr, errors, _) = if kind == "logs" {
            _native::decode_all(_native::logs::Logs::new(), &payloads)
        } else {
            _native::decode_all(_native::traces::Traces::new(), &payloads)
        };
        best = best.min(t.elapsed().as_secs_f64());
        assert!(errors.is_empty());
        rows = arr.len();
    }
    println!("{kind}: {rows} rows, best {:.0} rows/s", rows as f64 / best);
}
