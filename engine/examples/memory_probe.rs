//! Prints one memory reading (RAM, this process's RSS, every NVIDIA GPU or why there is none)
//! and what each reading costs, to check the telemetry on a new machine:
//! `cargo run -p headroom-engine --example memory_probe`.

use std::time::{Duration, Instant};

use headroom_engine::telemetry::{Sampler, procmem, sample_once};

fn main() {
    let t = Instant::now();
    let s = sample_once();
    println!("sample_once (starts NVML): {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    println!(
        "RAM {:.2} / {:.2} GiB used, this process {:.1} MiB",
        s.ram_used_bytes as f64 / (1u64 << 30) as f64,
        s.ram_total_bytes as f64 / (1u64 << 30) as f64,
        s.process_rss_bytes as f64 / (1u64 << 20) as f64
    );
    for g in &s.gpus {
        println!(
            "GPU {} {}: {} / {} bytes, {}%, this process {:?}",
            g.index, g.name, g.used_bytes, g.total_bytes, g.utilization_percent, g.process_bytes
        );
    }
    let n = 1000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(procmem::current_rss_bytes());
    }
    println!(
        "one RSS reading (the peak watcher's 100 Hz read): {:.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let sampler = Sampler::spawn(Duration::from_millis(100), || {});
    while sampler.history().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("sampler GPU status: {:?}", sampler.gpu_status());
}
