//! The safetensors header reader (8-byte length, JSON header, offsets) and the inspect summary.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| headroom_fuzz::inspect(data, "fuzz.safetensors"));
