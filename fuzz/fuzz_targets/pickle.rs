//! The pickle reader (opcodes, allowlisted globals, work budget) and the checkpoint's flattening
//! of its dicts into tensors, fed through a zip built around the fuzzed `data.pkl`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let zip = headroom_fuzz::checkpoint_with_pickle(data);
    headroom_fuzz::inspect(&zip, "fuzz.ckpt");
});
