//! What refusing non-finite weights costs at load (issue 17): the scan of every value of
//! all-MiniLM-L6-v2 alone, and the whole classifier load that includes it.
//!
//! `cargo run --release --example finite_scan_cost` (after `ttlora fetch`).

use std::time::Instant;

use candle_core::Device;
use ttlora::models::{Pooling, load_classifier};

fn main() {
    let dir = ttlora::io::cache_dir().join(ttlora::io::DEFAULT_MODEL);
    let file = dir.join("model.safetensors");
    if !file.is_file() {
        eprintln!("{} not found; run `ttlora fetch` first", file.display());
        std::process::exit(1);
    }
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).expect("readable weights");
    let values: usize = tensors.values().map(|t| t.elem_count()).sum();
    for _ in 0..3 {
        let scan = Instant::now();
        for t in tensors.values() {
            let bad = ttlora::io::fs::first_non_finite(t).expect("scannable");
            assert!(bad.is_none(), "the packaged weights are finite");
        }
        let scan = scan.elapsed().as_secs_f64() * 1e3;
        let load = Instant::now();
        let model = load_classifier(&dir, 2, Pooling::Cls, &Device::Cpu, 0).expect("loads");
        let load = load.elapsed().as_secs_f64() * 1e3;
        drop(model);
        println!("{values} values: scan {scan:.1} ms; whole load, scan included, {load:.1} ms");
    }
}
