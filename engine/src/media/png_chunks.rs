//! A strict walk over a PNG's chunks that finds its text chunks (tEXt, zTXt, iTXt), checks their
//! CRCs and structure, and decodes the uncompressed ones.
//!
//! The `png` crate quietly drops ancillary chunks it cannot parse; outputs carry their profile in
//! such chunks, so a damaged one must be reported, not skipped.

use std::path::Path;

use crate::error::{Error, Result};

/// The 8-byte PNG signature.
pub(crate) const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// One text chunk as found in the file.
#[derive(Clone, Debug)]
pub(crate) struct TextChunk {
    /// `tEXt`, `zTXt` or `iTXt`.
    pub kind: &'static str,
    pub keyword: String,
    /// The text, or `None` for compressed chunks (see `compressed`).
    pub text: Option<String>,
    /// For compressed chunks: the zlib stream holding the text (Latin-1 for zTXt, UTF-8 for iTXt).
    pub compressed: Vec<u8>,
}

/// The width and height an `IHDR` chunk at the start of `bytes` claims, without decoding anything.
/// `None` when the file does not start with a signature and an `IHDR` chunk.
pub(crate) fn header_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let ihdr = bytes.get(SIGNATURE.len()..SIGNATURE.len() + 16)?;
    if !bytes.starts_with(&SIGNATURE) || &ihdr[4..8] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&ihdr[8..12]), be(&ihdr[12..16])))
}

/// Every text chunk of the PNG in `bytes`, in file order.
///
/// # Errors
/// A chunk that runs past the end of the file, a text chunk whose CRC does not match, a text
/// chunk without a valid keyword or separators, or an iTXt text that is not UTF-8.
pub(crate) fn text_chunks(bytes: &[u8], path: &Path) -> Result<Vec<TextChunk>> {
    if !bytes.starts_with(&SIGNATURE) {
        return Err(Error::file(path, "not a PNG file (no PNG signature)"));
    }
    let mut out = Vec::new();
    let mut pos = SIGNATURE.len();
    while pos < bytes.len() {
        let left = bytes.len() - pos;
        if left < 12 {
            return Err(Error::file(path, format!("PNG is truncated: {left} stray bytes at byte {pos}")));
        }
        let len = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
        let kind_bytes = &bytes[pos + 4..pos + 8];
        let name = String::from_utf8_lossy(kind_bytes).into_owned();
        if len > left - 12 {
            return Err(Error::file(
                path,
                format!("PNG is truncated: {name} chunk at byte {pos} needs {len} bytes, {} left", left - 12),
            ));
        }
        let data = &bytes[pos + 8..pos + 8 + len];
        let stored = u32::from_be_bytes(bytes[pos + 8 + len..pos + 12 + len].try_into().unwrap_or([0; 4]));
        let kind = match kind_bytes {
            b"tEXt" => Some("tEXt"),
            b"zTXt" => Some("zTXt"),
            b"iTXt" => Some("iTXt"),
            b"IEND" => break,
            _ => None,
        };
        if let Some(kind) = kind {
            let at = |problem: String| Error::file(path, format!("PNG {kind} chunk at byte {pos}: {problem}"));
            let keyword_end = data.iter().position(|&b| b == 0).filter(|&n| (1..=79).contains(&n));
            let keyword = keyword_end.map(|n| latin1(&data[..n]));
            if crc32(&bytes[pos + 4..pos + 8 + len]) != stored {
                let which = keyword.map_or(String::new(), |k| format!(" '{k}'"));
                return Err(Error::file(
                    path,
                    format!("PNG {kind} chunk{which} at byte {pos} is corrupt (CRC mismatch)"),
                ));
            }
            let (Some(n), Some(keyword)) = (keyword_end, keyword) else {
                return Err(at("no valid keyword (1 to 79 bytes ending in a zero byte)".into()));
            };
            let rest = &data[n + 1..];
            let (text, compressed) = match kind {
                "tEXt" => (Some(latin1(rest)), Vec::new()),
                "zTXt" => match rest {
                    [0, stream @ ..] => (None, stream.to_vec()),
                    _ => return Err(at(format!("'{keyword}' has an unknown compression method"))),
                },
                _ => itxt_text(rest).map_err(|p| at(format!("'{keyword}' {p}")))?,
            };
            out.push(TextChunk { kind, keyword, text, compressed });
        }
        pos += 12 + len;
    }
    Ok(out)
}

/// The text of an iTXt chunk after its keyword, or `None` and the zlib stream if compressed.
fn itxt_text(rest: &[u8]) -> std::result::Result<(Option<String>, Vec<u8>), String> {
    let [flag, method, tail @ ..] = rest else {
        return Err("is malformed (no compression flag)".into());
    };
    let lang_end = tail.iter().position(|&b| b == 0).ok_or("is malformed (no language tag end)")?;
    let tail = &tail[lang_end + 1..];
    let tk_end = tail.iter().position(|&b| b == 0).ok_or("is malformed (no translated keyword end)")?;
    let text = &tail[tk_end + 1..];
    match (flag, method) {
        (0, _) => String::from_utf8(text.to_vec())
            .map(|t| (Some(t), Vec::new()))
            .map_err(|e| format!("is not valid UTF-8 (at byte {} of its text)", e.utf8_error().valid_up_to())),
        (1, 0) => Ok((None, text.to_vec())),
        _ => Err(format!("has an unknown compression (flag {flag}, method {method})")),
    }
}

pub(crate) fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

/// CRC-32 (ISO-HDLC, as PNG uses) of `data`.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (n, slot) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRC matches the standard check value for "123456789".
    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
