//! PNG outputs: 8-bit RGB images with the run's profile in an iTXt chunk named `headroom` and an
//! AUTOMATIC1111-style `parameters` chunk that other tools (and image hosts) understand.

use std::io::Cursor;
use std::path::Path;

use super::Image;
use super::png_chunks::{self, SIGNATURE};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::profile::Profile;

/// Keyword of the text chunk holding the profile TOML.
pub const PROFILE_KEYWORD: &str = "headroom";
/// Keyword of the A1111-style generation parameters chunk.
pub const PARAMETERS_KEYWORD: &str = "parameters";

/// The text chunks of a PNG, in file order (tEXt, zTXt and iTXt alike).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PngText {
    /// (keyword, text) pairs.
    pub entries: Vec<(String, String)>,
}

impl PngText {
    /// The text of the first chunk with this keyword.
    pub fn get(&self, keyword: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == keyword).map(|(_, v)| v.as_str())
    }
}

/// True if `bytes` start with the PNG signature.
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&SIGNATURE)
}

/// Writes `image` as a PNG, atomically, with `profile` (if given) embedded as the `headroom`
/// chunk and summarized in an A1111-style `parameters` chunk.
///
/// # Errors
/// The image's buffer does not match its size, or the file cannot be written.
pub fn write_png(path: &Path, image: &Image, profile: Option<&Profile>) -> Result<()> {
    let mut texts = Vec::new();
    if let Some(p) = profile {
        texts.push((PARAMETERS_KEYWORD.to_string(), super::a1111::format_parameters(p)));
        texts.push((PROFILE_KEYWORD.to_string(), p.to_toml_string()));
    }
    let bytes = encode_png(image, &texts).map_err(|e| Error::file(path, e))?;
    write_atomic(path, &bytes)
}

/// Encodes `image` as PNG bytes with the given text chunks. Each is written as tEXt when its
/// text is Latin-1 (as PIL, and so A1111 and ComfyUI, do), otherwise as iTXt; the `headroom`
/// chunk is always iTXt (UTF-8).
///
/// # Errors
/// A message (without a path) when the buffer does not match the size or a keyword is invalid.
pub fn encode_png(image: &Image, texts: &[(String, String)]) -> std::result::Result<Vec<u8>, String> {
    let expected = image.width as usize * image.height as usize * 3;
    if image.rgb.len() != expected || image.width == 0 || image.height == 0 {
        return Err(format!(
            "image of {}×{} needs {expected} RGB bytes, has {}",
            image.width,
            image.height,
            image.rgb.len()
        ));
    }
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, image.width, image.height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    for (k, v) in texts {
        let latin1 = v.chars().all(|c| (c as u32) < 256);
        let r = if latin1 && k != PROFILE_KEYWORD {
            enc.add_text_chunk(k.clone(), v.clone())
        } else {
            enc.add_itxt_chunk(k.clone(), v.clone())
        };
        r.map_err(|e| format!("text chunk '{k}': {e}"))?;
    }
    let mut w = enc.write_header().map_err(|e| e.to_string())?;
    w.write_image_data(&image.rgb).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// The most pixels a PNG may have for its image to be decoded: 8192×8192 (about 200 MB as RGB).
/// Far beyond what the engine makes; a header claiming more is refused before anything is
/// allocated.
pub const MAX_DECODE_PIXELS: u64 = 8192 * 8192;

/// The most bytes a compressed text chunk may inflate to (profiles and ComfyUI workflows are
/// kilobytes; this stops a zip bomb in a text chunk).
pub const MAX_TEXT_BYTES: u64 = 32 << 20;

/// Reads a PNG as 8-bit RGB (palette, grey, 16-bit and alpha are converted; alpha is dropped)
/// with all its text chunks.
///
/// # Errors
/// The file cannot be read, is not a PNG, is truncated, has a corrupt text chunk, or claims more
/// than [`MAX_DECODE_PIXELS`] pixels.
pub fn read_png(path: &Path) -> Result<(Image, PngText)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_png_bytes(&bytes, path)
}

/// [`read_png`] of a PNG's bytes (read from `path`, which errors name).
///
/// # Errors
/// As [`read_png`].
pub fn read_png_bytes(bytes: &[u8], path: &Path) -> Result<(Image, PngText)> {
    let text = read_png_text_bytes(bytes, path)?;
    let image = decode_image(bytes, path)?;
    Ok((image, text))
}

/// The text chunks of PNG `bytes` (read from `path`, which errors name), checked strictly. Only
/// the chunks are walked: the image is never decoded, whatever size its header claims.
///
/// # Errors
/// Not a PNG, a truncated or corrupt chunk, or a compressed text that cannot be inflated or
/// inflates to more than [`MAX_TEXT_BYTES`].
pub fn read_png_text_bytes(bytes: &[u8], path: &Path) -> Result<PngText> {
    let chunks = png_chunks::text_chunks(bytes, path)?;
    let mut entries = Vec::with_capacity(chunks.len());
    for c in chunks {
        let text = match c.text {
            Some(t) => t,
            None => inflate_text(&c.compressed, c.kind == "zTXt").map_err(|problem| {
                Error::file(path, format!("PNG {} chunk '{}' {problem}", c.kind, c.keyword))
            })?,
        };
        entries.push((c.keyword, text));
    }
    Ok(PngText { entries })
}

/// Inflates a compressed text chunk's zlib stream: Latin-1 text for zTXt, UTF-8 for iTXt.
fn inflate_text(stream: &[u8], latin1: bool) -> std::result::Result<String, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(stream)
        .take(MAX_TEXT_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("could not be decompressed ({e})"))?;
    if out.len() as u64 > MAX_TEXT_BYTES {
        return Err(format!("inflates to more than {} MiB of text", MAX_TEXT_BYTES >> 20));
    }
    if latin1 {
        return Ok(png_chunks::latin1(&out));
    }
    String::from_utf8(out).map_err(|e| format!("is not valid UTF-8 (at byte {} of its text)", e.utf8_error().valid_up_to()))
}

/// Refuses a PNG whose header claims more than [`MAX_DECODE_PIXELS`] pixels (or none).
///
/// # Errors
/// A one-line error naming the file and the claimed size.
pub fn check_decode_size(bytes: &[u8], path: &Path) -> Result<()> {
    let Some((w, h)) = png_chunks::header_size(bytes) else {
        return Err(Error::file(path, "not a readable PNG: no IHDR chunk after the signature"));
    };
    let pixels = u64::from(w) * u64::from(h);
    if pixels == 0 || pixels > MAX_DECODE_PIXELS {
        return Err(Error::file(
            path,
            format!("PNG header claims {w}×{h} pixels; images up to {MAX_DECODE_PIXELS} pixels (8192×8192) are decoded"),
        ));
    }
    Ok(())
}

/// Decodes the pixels of PNG `bytes` as RGB after [`check_decode_size`].
fn decode_image(bytes: &[u8], path: &Path) -> Result<Image> {
    check_decode_size(bytes, path)?;
    let bad = |e: png::DecodingError| Error::file(path, format!("not a readable PNG: {}", one_line(&e.to_string())));
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(bad)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::file(path, "PNG is too large to decode"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    reader.finish().map_err(bad)?;
    to_rgb(&buf, &info).map_err(|e| Error::file(path, e))
}

fn to_rgb(buf: &[u8], info: &png::OutputInfo) -> std::result::Result<Image, String> {
    let (w, h) = (info.width as usize, info.height as usize);
    let data = &buf[..info.buffer_size().min(buf.len())];
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("palette image was not expanded".into()),
    };
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let row = &data[y * info.line_size..y * info.line_size + w * channels];
        for px in row.chunks_exact(channels) {
            match channels {
                1 | 2 => rgb.extend_from_slice(&[px[0]; 3]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok(Image { width: info.width, height: info.height, rgb })
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}
