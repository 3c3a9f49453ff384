//! AUTOMATIC1111 `parameters` text read back into a request.
#![no_main]

use std::hint::black_box;

use headroom_engine::media::a1111;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    black_box(a1111::parse_parameters(&String::from_utf8_lossy(data)));
});
