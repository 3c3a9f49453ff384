//! Hostile and broken files, built byte by byte in the tests: each must give one clear error line
//! naming the file and the problem, without panicking, allocating what the file claims, or
//! running anything.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{inspect, inspect_bytes};

/// Writes `bytes` to `name` in a fresh temporary folder and inspects it; returns the error text.
fn error_of(name: &str, bytes: &[u8]) -> (String, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let e = inspect(&path).err().unwrap_or_else(|| panic!("{name} was accepted")).to_string();
    assert!(e.starts_with(&path.display().to_string()), "error does not name the file: {e}");
    assert!(!e.contains('\n'), "error is not one line: {e}");
    (e, dir, path)
}

/// A safetensors file from a header string and data bytes.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

/// An empty file is named as empty.
#[test]
fn empty_file() {
    let (e, ..) = error_of("m.safetensors", b"");
    assert!(e.contains("empty file"), "{e}");
}

/// Fewer than 8 bytes cannot hold the header length.
#[test]
fn truncated_safetensors_header() {
    let (e, ..) = error_of("m.safetensors", &[5, 0, 0]);
    assert!(e.contains("truncated"), "{e}");
}

/// A header length of 2^63 is compared with the file size, not allocated.
#[test]
fn header_longer_than_file() {
    let mut b = (1u64 << 63).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let (e, ..) = error_of("m.safetensors", &b);
    assert!(e.contains("header length says") && e.contains("9223372036854775808"), "{e}");
}

/// Header JSON that is valid but not an object.
#[test]
fn header_not_an_object() {
    let (e, ..) = error_of("m.safetensors", &st("[1, 2, 3]", b""));
    assert!(e.contains("header JSON is an array, expected an object"), "{e}");
    let (e, ..) = error_of("m.safetensors", &st("{not json", b""));
    assert!(e.contains("not valid JSON"), "{e}");
}

/// Offsets past the data section, and two tensors sharing bytes.
#[test]
fn bad_offsets() {
    let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let (e, ..) = error_of("m.safetensors", &st(h, &[0; 8]));
    assert!(e.contains("tensor 'a'") && e.contains("outside the data section"), "{e}");
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let (e, ..) = error_of("m.safetensors", &st(h, &[0; 12]));
    assert!(e.contains("'a' and 'b' overlap"), "{e}");
    let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let (e, ..) = error_of("m.safetensors", &st(h, &[0; 8]));
    assert!(e.contains("needs 12 bytes"), "{e}");
}

/// A dtype string safetensors does not define.
#[test]
fn unknown_dtype() {
    let h = r#"{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,2]}}"#;
    let (e, ..) = error_of("m.safetensors", &st(h, &[0; 2]));
    assert!(e.contains("tensor 'a': unknown dtype 'Q7'"), "{e}");
}

/// A well-formed safetensors file is accepted (so the failures above are about their defects).
#[test]
fn good_safetensors_is_accepted() {
    let h = r#"{"__metadata__":{"k":"v"},"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    std::fs::write(&p, st(h, &[0; 8])).unwrap();
    let i = inspect(&p).unwrap();
    assert_eq!((i.parameters(), i.metadata["k"].as_str()), (4, "v"));
}

/// A GGUF header: magic, version, tensor count, kv count (u64 counts as in v2/v3).
fn gguf(magic: &[u8; 4], version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = magic.to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&kvs.to_le_bytes());
    b
}

/// A wrong magic in a `.gguf` file.
#[test]
fn gguf_wrong_magic() {
    let (e, ..) = error_of("m.gguf", &gguf(b"GGUX", 3, 0, 0));
    assert!(e.contains("not a GGUF file"), "{e}");
}

/// Version 99 is refused by number.
#[test]
fn gguf_version_99() {
    let (e, ..) = error_of("m.gguf", &gguf(b"GGUF", 99, 0, 0));
    assert!(e.contains("GGUF version 99 is not supported"), "{e}");
}

/// A key whose string length runs past the end of the file.
#[test]
fn gguf_string_past_end() {
    let mut b = gguf(b"GGUF", 3, 0, 1);
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.extend_from_slice(b"general.name");
    let (e, ..) = error_of("m.gguf", &b);
    assert!(e.contains("metadata key needs") && e.contains("remain"), "{e}");
}

/// 2^40 tensors claimed in a tiny file is refused before any allocation or loop.
#[test]
fn gguf_absurd_tensor_count() {
    let (e, ..) = error_of("m.gguf", &gguf(b"GGUF", 3, 1 << 40, 0));
    assert!(e.contains("claims 1099511627776 tensors"), "{e}");
}

/// An array claiming 2^62 elements is refused before looping.
#[test]
fn gguf_absurd_array() {
    let mut b = gguf(b"GGUF", 3, 0, 1);
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(b"arr");
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    b.extend_from_slice(&4u32.to_le_bytes()); // of u32
    b.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let (e, ..) = error_of("m.gguf", &b);
    assert!(e.contains("key 'arr': array of 4611686018427387904 elements"), "{e}");
}

/// A version-1 GGUF (u32 counts and dims) with a type id nobody knows: read, reported unknown.
#[test]
fn gguf_v1_with_unknown_type() {
    let mut b = b"GGUF".to_vec();
    for v in [1u32, 2, 0] {
        b.extend_from_slice(&v.to_le_bytes()); // version, tensors, kvs
    }
    for (name, ty) in [("a", 0u32), ("b", 200)] {
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&2u32.to_le_bytes()); // n_dims
        b.extend_from_slice(&4u32.to_le_bytes()); // ne0
        b.extend_from_slice(&2u32.to_le_bytes()); // ne1
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&(if name == "a" { 0u64 } else { 32 }).to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32 + 64, 0);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, &b).unwrap();
    let i = inspect(&p).unwrap();
    let t: Vec<_> = i.tensors().map(|t| (t.dtype.as_str(), t.shape.clone(), t.bytes)).collect();
    assert_eq!(t, [("F32", vec![2, 4], Some(32)), ("unknown(200)", vec![2, 4], None)]);
    assert_eq!(i.metadata["gguf.version"], "1");
}

/// A GGUF v3 file with tensors (name, type id, dims innermost first) at offset 0, padded to the
/// data alignment.
fn gguf_tensors(tensors: &[(&str, u32, &[u64])]) -> Vec<u8> {
    let mut b = gguf(b"GGUF", 3, tensors.len() as u64, 0);
    for (name, type_id, ne) in tensors {
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in *ne {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&type_id.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    b
}

/// Shapes whose products pass u64 in a header that is otherwise fine (a zero-size safetensors
/// tensor, a GGUF tensor of a type whose size is unknown) are inspected without overflowing:
/// rows and sizes saturate instead of panicking (debug) or wrapping to small numbers (release).
#[test]
fn huge_shapes_saturate() {
    let h = r#"{"a":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}}"#;
    let i = inspect_bytes(&st(h, b""), Path::new("zero.safetensors")).unwrap();
    assert_eq!(i.parameters(), 0);
    assert!(i.bytes_by_precision().values().all(|&b| b == 0), "{:?}", i.bytes_by_precision());

    let b = gguf_tensors(&[("w", 200, &[1 << 32, 1 << 31])]);
    let i = inspect_bytes(&b, Path::new("unknown.gguf")).unwrap();
    assert_eq!(i.parameters(), 1 << 63);
    assert_eq!(i.bytes_by_precision()["f32"], u64::MAX);
    assert_eq!(i.dtype_histogram()["unknown(200)"], 1 << 63);
    // Two such tensors: the histogram and the totals saturate too.
    let b = gguf_tensors(&[("w", 200, &[1 << 32, 1 << 31]), ("v", 200, &[1 << 32, 1 << 31])]);
    let i = inspect_bytes(&b, Path::new("two.gguf")).unwrap();
    assert_eq!((i.parameters(), i.dtype_histogram()["unknown(200)"]), (u64::MAX, u64::MAX));
}

/// Found by `tools/fuzz.sh` (gguf target, crash-4ec8cff1…): a nameless tensor of GGUF type
/// 3224422 (unknown, so no size check) with dims 0x44c0000000 × 2^24 made `bytes_by_precision`
/// multiply past u64 (a panic in debug builds, a wrapped size in release).
#[test]
fn fuzz_gguf_unknown_type_huge_shape() {
    let crash: &[u8] = b"GGUF\x03\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\
        \x02\0\0\0\0\0\0\xc0\x44\0\0\0\0\0\0\x01\0\0\0\0\x66\x33\x31\0\0\0\0\0\0\0\0\0\0\0\0\0";
    assert_eq!(crash.len(), 68);
    let i = inspect_bytes(crash, Path::new("crash.gguf")).unwrap();
    assert_eq!(i.tensors().next().unwrap().dtype, "unknown(3224422)");
    assert_eq!(i.bytes_by_precision()["f32"], u64::MAX);
}

/// A GGUF F32 tensor of 2^63 elements is refused for its size, not for its rows (an F32 row is
/// always whole blocks).
#[test]
fn gguf_tensor_too_large_for_any_file() {
    let (e, ..) = error_of("m.gguf", &gguf_tensors(&[("w", 0, &[1 << 32, 1 << 31])]));
    assert!(e.contains("tensor 'w': shape [2147483648, 4294967296] of F32 takes more bytes than a file can hold"), "{e}");
    let (e, ..) = error_of("m.gguf", &gguf_tensors(&[("w", 12, &[100, 2])]));
    assert!(e.contains("tensor 'w': rows of 100 are not whole Q4_K blocks of 256"), "{e}");
}

/// A zip checkpoint holding `pkl` as `archive/data.pkl`.
fn zip_with_pickle(path: &Path, pkl: &[u8]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pkl).unwrap();
    z.finish().unwrap();
}

/// A pickle that calls `os.system` is refused by name, and the command never runs.
#[test]
fn pickle_calling_os_system_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let cmd = format!("touch {}", marker.display());
    let mut pkl = b"\x80\x02cos\nsystem\nq\x00X".to_vec();
    pkl.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    pkl.extend_from_slice(cmd.as_bytes());
    pkl.extend_from_slice(b"\x85R.");
    let p = dir.path().join("evil.ckpt");
    zip_with_pickle(&p, &pkl);
    let e = inspect(&p).unwrap_err().to_string();
    assert!(e.contains("refused global 'os.system'") && e.contains("evil.ckpt"), "{e}");
    assert!(!marker.exists());
    // The same through STACK_GLOBAL (protocol 4), with builtins.eval.
    let pkl = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.";
    zip_with_pickle(&p, pkl);
    let e = inspect(&p).unwrap_err().to_string();
    assert!(e.contains("'builtins.eval'"), "{e}");
}

/// A checkpoint whose tensor names a storage the archive lacks is an error naming the tensor.
#[test]
fn pickle_with_missing_storage() {
    // {"w": _rebuild_tensor_v2(persid(('storage', FloatStorage, '0', 'cpu', 4)), 0, (4,), (1,), False, OrderedDict())}
    let pkl = b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs.";
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.pth");
    zip_with_pickle(&p, pkl);
    let e = inspect(&p).unwrap_err().to_string();
    assert!(e.contains("tensor 'w': storage archive/data/0 is missing"), "{e}");
}

/// A legacy (pre-zip) torch pickle gets an error saying the format is not supported.
#[test]
fn legacy_pickle() {
    let (e, ..) = error_of("old.ckpt", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.");
    assert!(e.contains("legacy (non-zip) PyTorch pickle format is not supported"), "{e}");
}

/// A `.ckpt` that is neither zip nor pickle, and a zip without data.pkl.
#[test]
fn not_a_checkpoint() {
    let (e, ..) = error_of("m.ckpt", b"hello world, no zip here");
    assert!(e.contains("not a PyTorch zip checkpoint"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.pt");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    z.start_file("readme.txt", zip::write::SimpleFileOptions::default()).unwrap();
    z.finish().unwrap();
    assert!(inspect(&p).unwrap_err().to_string().contains("no <name>/data.pkl"));
}

/// Overwriting bytes of real files (headers, pickle opcodes) never panics: every result is a
/// clean `Ok` or a one-line error. Deterministic positions, so failures reproduce.
#[test]
fn corrupted_bytes_never_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats");
    let dir = tempfile::tempdir().unwrap();
    for rel in ["tiny.gguf", "tiny.safetensors"] {
        let bytes = std::fs::read(root.join(rel)).unwrap();
        let path = dir.path().join(rel);
        let header_end = bytes.len().min(1200);
        for pos in (0..header_end).step_by(3) {
            for v in [0x00, 0xff, 0x7f] {
                let mut b = bytes.clone();
                b[pos] = v;
                std::fs::write(&path, &b).unwrap();
                if let Err(e) = inspect(&path) {
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
            }
        }
    }
    // The checkpoint's pickle, mutated directly (the zip's CRC would catch it first otherwise).
    let mut zip = zip::ZipArchive::new(std::fs::File::open(root.join("ldm.ckpt")).unwrap()).unwrap();
    let mut pkl = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("ldm/data.pkl").unwrap(), &mut pkl).unwrap();
    let mut ok = 0;
    for pos in 0..pkl.len() {
        for v in [0x00, 0xff, b'R', b'h'] {
            let mut b = pkl.clone();
            b[pos] = v;
            ok += usize::from(super::pickle::load(&b, Path::new("data.pkl")).is_ok());
        }
    }
    assert!(super::pickle::load(&pkl, Path::new("data.pkl")).is_ok() && ok > 0);
}
