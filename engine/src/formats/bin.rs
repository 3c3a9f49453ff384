//! Bounds-checked reading of untrusted bytes: a cursor whose every read checks the length against
//! what is left, memory-mapping a file, and reading a file's first bytes.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Memory-maps a whole file read-only. An empty file is an error (nothing to map, nothing to read).
pub(crate) fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(Error::file(path, "empty file (0 bytes)"));
    }
    // SAFETY: the map is read-only and only read through bounds-checked slices; if another process
    // truncates the file while we read its header we may get SIGBUS, which is the accepted risk of
    // every memory-mapped model reader (safetensors, llama.cpp, candle).
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Reads up to `n` bytes from the start of a file (fewer if the file is shorter).
pub(crate) fn read_head(path: &Path, n: usize) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = Vec::with_capacity(n.min(64));
    file.take(n as u64).read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// A byte count for messages: exact below 10 KiB, else with a binary unit.
pub(crate) fn human_bytes(n: u64) -> String {
    if n < 10 * 1024 {
        return format!("{n} bytes");
    }
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {} ({n} bytes)", units[u])
}

/// A reading position in an untrusted buffer. Every read checks the remaining length first.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Multi-byte numbers are big-endian (GGUF allows big-endian files).
    pub big_endian: bool,
}

impl<'a> Cursor<'a> {
    /// A little-endian cursor at the start of `buf`; errors name `path`.
    pub fn new(buf: &'a [u8], path: &'a Path) -> Self {
        Self { buf, pos: 0, path, big_endian: false }
    }

    /// The current offset from the start of the buffer.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the current position.
    pub fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// The file this cursor reads, for error messages.
    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// A `path: problem` error.
    pub fn err(&self, problem: impl Into<String>) -> Error {
        Error::file(self.path, problem.into())
    }

    /// The next `n` bytes, or an error saying what was being read and how short the file is.
    pub fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "{what} needs {} at offset {} but only {} remain (truncated or corrupt)",
                human_bytes(n),
                self.pos,
                human_bytes(self.remaining())
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    /// Fixed-size array read.
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        if self.big_endian {
            a.reverse();
        }
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    /// Unsigned 16-bit in the cursor's byte order.
    pub fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// Unsigned 32-bit in the cursor's byte order.
    pub fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// Unsigned 64-bit in the cursor's byte order.
    pub fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// Signed 32-bit in the cursor's byte order.
    pub fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }
    /// 32-bit float in the cursor's byte order.
    pub fn f32(&mut self, what: &str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }
    /// 64-bit float in the cursor's byte order.
    pub fn f64(&mut self, what: &str) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array(what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read past the end is an error naming the file and what was read, never a panic.
    #[test]
    fn take_past_end_is_an_error() {
        let p = Path::new("x.bin");
        let mut c = Cursor::new(&[1, 2, 3], p);
        assert_eq!(c.u8("first").unwrap(), 1);
        let e = c.take(u64::MAX, "a huge string").unwrap_err().to_string();
        assert!(e.starts_with("x.bin: a huge string needs"), "{e}");
        assert_eq!(c.remaining(), 2);
    }

    /// Big-endian cursors read numbers the other way round.
    #[test]
    fn big_endian_numbers() {
        let p = Path::new("x");
        let mut c = Cursor::new(&[0, 0, 0, 3], p);
        c.big_endian = true;
        assert_eq!(c.u32("n").unwrap(), 3);
    }
}
