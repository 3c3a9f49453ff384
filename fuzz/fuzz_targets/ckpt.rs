//! PyTorch zip checkpoints: the zip container, its data.pkl through the pickle reader, and the inspect summary.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| headroom_fuzz::inspect(data, "fuzz.ckpt"));
