//! The counting allocator, installed as this test binary's global allocator: it counts known
//! allocations, and a run recorder reports heap peaks per stage with it.

use std::sync::Mutex;

use headroom_engine::telemetry::{self, CountingAlloc, RunRecorder};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

/// The counters are process-wide: tests that reset the peak take turns.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: u64 = 1 << 20;
/// What the test harness's own threads may allocate or free while a test measures.
const SLACK: u64 = 256 << 10;

/// A 16 MiB allocation raises the current count by 16 MiB and the peak stays after it is freed.
#[test]
fn counts_a_known_allocation() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = telemetry::heap_current().expect("installed as the global allocator");
    telemetry::reset_heap_peak();
    let v: Vec<u8> = Vec::with_capacity((16 * MIB) as usize);
    let during = telemetry::heap_current().unwrap();
    // Other test threads allocate and free a little at the same time; allow them some slack.
    assert!(
        during + SLACK >= before + 16 * MIB && during < before + 16 * MIB + SLACK,
        "before {before}, during {during}"
    );
    drop(v);
    let after = telemetry::heap_current().unwrap();
    assert!(after < during - 15 * MIB, "after {after}, during {during}");
    assert!(telemetry::heap_peak().unwrap() + SLACK >= before + 16 * MIB);
    telemetry::reset_heap_peak();
    assert!(telemetry::heap_peak().unwrap() < before + MIB);
}

/// Growing a vector by reallocation is counted at its final size, not more than once.
#[test]
fn realloc_is_counted_once() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = telemetry::heap_current().unwrap();
    let mut v: Vec<u8> = Vec::with_capacity(1024);
    v.reserve_exact((8 * MIB) as usize);
    let during = telemetry::heap_current().unwrap();
    assert!(
        during + SLACK >= before + 8 * MIB && during < before + 8 * MIB + SLACK,
        "before {before}, during {during}"
    );
    drop(v);
}

/// The recorder gives each stage its own heap peak: 24 MiB held in "denoise" only.
#[test]
fn recorder_reports_heap_peaks_by_stage() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = telemetry::heap_current().unwrap();
    let mut rec = RunRecorder::start();
    rec.stage("text");
    rec.stage("denoise");
    let v = vec![7u8; (24 * MIB) as usize];
    std::hint::black_box(&v);
    drop(v);
    rec.stage("decode");
    let t = rec.finish();
    let denoise = t.peaks_by_stage["denoise"].heap_bytes.expect("heap counted");
    let decode = t.peaks_by_stage["decode"].heap_bytes.expect("heap counted");
    assert!(denoise + SLACK >= base + 24 * MIB, "denoise {denoise}, base {base}");
    assert!(decode < base + 8 * MIB, "decode {decode}, base {base}");
    assert!(t.peak_heap_bytes.unwrap() >= denoise);
}
