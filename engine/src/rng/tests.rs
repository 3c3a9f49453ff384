//! Bit-exact comparisons with noise written by real torch (tests/fixtures/noise, made by
//! tools/make_noise_fixtures.py), plus the file writer and tensor maker.

use std::collections::HashMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{TorchCpuRng, randn, write_noise_safetensors};

const SEEDS: [u64; 5] = [0, 1, 42, (1 << 32) + 5, 1 << 63];
const NUMELS: [usize; 6] = [1, 7, 16, 17, 1000, 16384];

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/noise")
}

/// All tensors of one fixture file, flat.
fn load(name: &str) -> HashMap<String, Vec<f32>> {
    let path = fixture_dir().join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture parses");
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32);
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
            (k, vals.collect())
        })
        .collect()
}

fn index() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json parses")
}

fn sha256_hex(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Distance in units in the last place between two finite floats of the same sign convention.
fn ulp_distance(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i64::from(i32::MIN) - i64::from(i)
        } else {
            i64::from(i)
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// (mismatching values, largest ulp distance) between ours and torch's.
fn compare(ours: &[f32], torch: &[f32]) -> (usize, u64) {
    assert_eq!(ours.len(), torch.len());
    let mut mismatches = 0;
    let mut max_ulp = 0;
    for (&a, &b) in ours.iter().zip(torch) {
        if a.to_bits() != b.to_bits() {
            mismatches += 1;
            max_ulp = max_ulp.max(ulp_distance(a, b));
        }
    }
    (mismatches, max_ulp)
}

/// Every stored seed and size matches torch bit for bit (full tensors, or the first 64 values).
#[test]
fn matches_torch_values_bit_for_bit() {
    for seed in SEEDS {
        let stored = load(&format!("seed_{seed}.safetensors"));
        for numel in NUMELS {
            let ours = randn(seed, &[numel]);
            let (torch, ours) = match stored.get(&format!("n{numel}")) {
                Some(full) => (full.clone(), ours),
                None => (
                    stored[&format!("n{numel}_head64")].clone(),
                    ours[..64].to_vec(),
                ),
            };
            let (mismatches, max_ulp) = compare(&ours, &torch);
            assert_eq!(
                mismatches, 0,
                "seed {seed}, {numel} elements: max {max_ulp} ulp"
            );
        }
    }
}

/// The sha256 of every case's full bytes equals torch's, including the big shapes stored only
/// as hashes.
#[test]
fn matches_torch_hashes() {
    let index = index();
    for seed in SEEDS {
        let cases = &index["seeds"][seed.to_string()];
        for numel in NUMELS {
            let case = &cases[format!("n{numel}")];
            let shape: Vec<usize> = case["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            assert_eq!(shape.iter().product::<usize>(), numel);
            let want = case["sha256"].as_str().expect("sha256");
            assert_eq!(
                sha256_hex(&randn(seed, &shape)),
                want,
                "seed {seed}, shape {shape:?}"
            );
        }
    }
}

/// One generator continues like torch's across randn(3), randn(1000), randn(5), randn(17):
/// the cached second normal of the small path survives the large call in between.
#[test]
fn stream_continues_like_torch() {
    let stored = load("stream.safetensors");
    let mut rng = TorchCpuRng::new(42);
    for (i, numel) in [3usize, 1000, 5, 17].into_iter().enumerate() {
        let ours = rng.randn(numel);
        let (mismatches, max_ulp) = compare(&ours, &stored[&format!("call{i}")]);
        assert_eq!(
            mismatches, 0,
            "call {i} ({numel} elements): max {max_ulp} ulp"
        );
    }
}

/// A fresh generator's second call differs from its first, and a clone continues identically.
#[test]
fn state_advances_and_clones_continue() {
    let mut rng = TorchCpuRng::new(7);
    let first = rng.randn(33);
    let mut twin = rng.clone();
    let second = rng.randn(33);
    assert_ne!(first, second);
    assert_eq!(twin.randn(33), second);
    // The odd small call leaves a cached sample that the next small call starts with.
    let mut a = TorchCpuRng::new(7);
    let mut b = TorchCpuRng::new(7);
    let three = a.randn(3);
    let two_then_one = [b.randn(2), b.randn(1)].concat();
    assert_eq!(three, two_then_one);
}

/// The noise file holds one f32 tensor "noise" of the asked shape with randn's values, and no
/// temporary file is left behind.
#[test]
fn writes_noise_file_atomically() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("noise.safetensors");
    write_noise_safetensors(&path, 42, &[1, 4, 8, 8]).expect("write");
    let bytes = std::fs::read(&path).expect("read back");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parses");
    let t = st.tensor("noise").expect("tensor named noise");
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    assert_eq!(t.shape(), &[1, 4, 8, 8]);
    let vals: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, randn(42, &[1, 4, 8, 8]));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "left behind: {names:?}");
}

/// Writing into a folder that does not exist fails with an error naming the file.
#[test]
fn write_error_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("missing/noise.safetensors");
    let err = write_noise_safetensors(&path, 1, &[4]).expect_err("no folder");
    assert!(err.to_string().contains("noise.safetensors"), "{err}");
}

/// randn_tensor gives a tensor of the asked shape with the same numbers as randn.
#[test]
fn tensor_has_shape_and_values() {
    let mut rng = TorchCpuRng::new(0);
    let t = rng
        .randn_tensor(&[1, 4, 8, 8], &candle_core::Device::Cpu)
        .expect("tensor");
    assert_eq!(t.dims(), &[1, 4, 8, 8]);
    let vals = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(vals, randn(0, &[256]));
    let too_big = TorchCpuRng::new(0).randn_tensor(&[usize::MAX, 2], &candle_core::Device::Cpu);
    assert!(too_big.is_err());
}

/// Times randn of 1x4x128x128 (run with `--ignored --nocapture`); checks its length.
#[test]
#[ignore]
fn time_randn_1x4x128x128() {
    let start = std::time::Instant::now();
    let runs = 10;
    for seed in 0..runs {
        assert_eq!(randn(seed, &[1, 4, 128, 128]).len(), 65536);
    }
    println!(
        "randn 1x4x128x128: {:.2} ms per call",
        start.elapsed().as_secs_f64() * 1e3 / runs as f64
    );
}

/// Compares against a large torch dump made by `make_noise_fixtures.py --sweep DIR` (run with
/// `HEADROOM_NOISE_SWEEP=DIR ... -- --ignored --nocapture`): every value bit for bit.
#[test]
#[ignore]
fn sweep_against_torch_dump() {
    let dir =
        PathBuf::from(std::env::var("HEADROOM_NOISE_SWEEP").expect("set HEADROOM_NOISE_SWEEP"));
    let spec = std::fs::read_to_string(dir.join("sweep.txt")).expect("sweep.txt");
    let raw = std::fs::read(dir.join("sweep.bin")).expect("sweep.bin");
    let torch: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let (mut at, mut total, mut mismatches, mut max_ulp) = (0usize, 0usize, 0usize, 0u64);
    for line in spec.lines() {
        let nums: Vec<u64> = line
            .split_whitespace()
            .map(|v| v.parse().expect("number"))
            .collect();
        let mut rng = TorchCpuRng::new(nums[0]);
        for &n in &nums[1..] {
            let n = n as usize;
            let ours = rng.randn(n);
            let (m, u) = compare(&ours, &torch[at..at + n]);
            if m > 0 {
                println!("seed {} call of {n}: {m} mismatches, max {u} ulp", nums[0]);
            }
            mismatches += m;
            max_ulp = max_ulp.max(u);
            at += n;
            total += n;
        }
    }
    assert_eq!(at, torch.len(), "sweep.txt and sweep.bin disagree");
    println!("{total} values, {mismatches} mismatches, max {max_ulp} ulp");
    assert_eq!(mismatches, 0);
}
