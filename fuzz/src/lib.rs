//! What the fuzz targets share: each hands the fuzzer's bytes to the same entry point the app and
//! the CLI use for a file's bytes, then uses the result the way `headroom inspect` or a drop
//! does. Nothing is asserted beyond "returns": a panic, an abort, a hang or a runaway allocation
//! is the finding.

use std::hint::black_box;
use std::io::Write;
use std::path::Path;

use headroom_engine::formats;

/// Inspects `data` as a model file called `name` (the name breaks ties, as for a real file), and
/// computes everything `headroom inspect --json` prints from the result.
pub fn inspect(data: &[u8], name: &str) {
    let Ok(insp) = formats::inspect_bytes(data, Path::new(name)) else { return };
    black_box(insp.parameters());
    black_box(insp.stored_bytes());
    black_box(insp.bytes_by_precision());
    black_box(insp.dtype_histogram());
    black_box(insp.largest(10));
    black_box(serde_json::to_string(&insp).ok());
}

/// Storage entries put beside the fuzzed `data.pkl` (`archive/data/0` …), 4 KiB each: enough for
/// the seeds' tensors, so the pickle's tensors are checked against real entries.
const STORAGES: usize = 8;
const STORAGE_BYTES: usize = 4096;

/// A `torch.save`-shaped zip around `pickle` as its `archive/data.pkl`, so mutations reach the
/// pickle reader (mutating a real checkpoint mostly breaks the zip's CRC first).
pub fn checkpoint_with_pickle(pickle: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::with_capacity(pickle.len() + STORAGES * (STORAGE_BYTES + 128) + 512));
    let mut z = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut write = |name: &str, bytes: &[u8]| {
        z.start_file(name, opts).and_then(|()| z.write_all(bytes).map_err(Into::into)).expect("writing to memory");
    };
    write("archive/data.pkl", pickle);
    let zeros = [0u8; STORAGE_BYTES];
    for i in 0..STORAGES {
        write(&format!("archive/data/{i}"), &zeros);
    }
    z.finish().expect("writing to memory");
    out.into_inner()
}
