//! PNGs: the strict text-chunk walk (CRCs, tEXt/zTXt/iTXt, inflate limits), the size-checked
//! decode, and restoring settings from the chunks (Headroom profile, ComfyUI, A1111), as for a
//! dropped file.
#![no_main]

use std::hint::black_box;
use std::path::Path;

use headroom_engine::media;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.png");
    black_box(media::png::read_png_bytes(data, path).ok());
    black_box(media::restore::restore_from_bytes(data, path).ok());
});
