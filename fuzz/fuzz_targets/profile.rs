//! Profiles (TOML): parsing with unknown fields kept, writing back, reading the written text
//! again, and drift, as `headroom reproduce` does.
#![no_main]

use std::hint::black_box;
use std::path::Path;

use headroom_engine::profile::Profile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.toml");
    let Ok(p) = Profile::from_bytes(data, path) else { return };
    let again = Profile::from_toml_str(&p.to_toml_string(), path);
    if let Ok(q) = &again {
        black_box(p.drift_explained(q));
    }
});
