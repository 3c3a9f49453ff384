//! WAVs: the RIFF chunk walk, the embedded profile (hdrm chunk), the checked sample read, and
//! restoring settings from it, as for a dropped file.
#![no_main]

use std::hint::black_box;
use std::path::Path;

use headroom_engine::media;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.wav");
    black_box(media::wav::read_wav_bytes(data, path).ok());
    black_box(media::restore::restore_from_bytes(data, path).ok());
});
