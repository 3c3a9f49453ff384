//! The GGUF v1–v3 header reader (metadata key/values, tensor infos) and the inspect summary.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| headroom_fuzz::inspect(data, "fuzz.gguf"));
