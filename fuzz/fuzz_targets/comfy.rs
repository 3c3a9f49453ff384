//! ComfyUI graphs read back into a request: the API `prompt` JSON and the editor `workflow` JSON.
#![no_main]

use std::hint::black_box;

use headroom_engine::media::comfy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    black_box(comfy::parse_prompt(&text).ok());
    black_box(comfy::parse_workflow(&text).ok());
});
