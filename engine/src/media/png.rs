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

/// Reads a PNG as 8-bit RGB (palette, grey, 16-bit and alpha are converted; alpha is dropped)
/// with all its text chunks.
///
/// # Errors
/// The file cannot be read, is not a PNG, is truncated, or has a corrupt text chunk.
pub fn read_png(path: &Path) -> Result<(Image, PngText)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, path)
}

/// The text chunks of PNG `bytes` (read from `path`, which errors name), checked strictly.
///
/// # Errors
/// As [`read_png`].
pub fn read_png_text_bytes(bytes: &[u8], path: &Path) -> Result<PngText> {
    decode(bytes, path).map(|(_, t)| t)
}

fn decode(bytes: &[u8], path: &Path) -> Result<(Image, PngText)> {
    let chunks = png_chunks::text_chunks(bytes, path)?;
    let bad = |e: png::DecodingError| Error::file(path, format!("not a readable PNG: {}", one_line(&e.to_string())));
    let mut dec = png::Decoder::new(Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(bad)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::file(path, "PNG is too large to decode"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    // Text chunks after the image data are only seen once the rest is read.
    reader.finish().map_err(bad)?;
    let image = to_rgb(&buf, &info).map_err(|e| Error::file(path, e))?;

    let mut entries = Vec::with_capacity(chunks.len());
    let png_info = reader.info();
    for c in chunks {
        let text = match c.text {
            Some(t) => t,
            None => inflated(png_info, &c.keyword, c.kind).ok_or_else(|| {
                Error::file(path, format!("PNG {} chunk '{}' could not be decompressed", c.kind, c.keyword))
            })?,
        };
        entries.push((c.keyword, text));
    }
    Ok((image, PngText { entries }))
}

/// The decompressed text of a compressed chunk, as parsed by the `png` crate.
fn inflated(info: &png::Info<'_>, keyword: &str, kind: &str) -> Option<String> {
    if kind == "zTXt" {
        let c = info.compressed_latin1_text.iter().find(|c| c.keyword == keyword)?;
        c.get_text().ok()
    } else {
        let c = info.utf8_text.iter().find(|c| c.keyword == keyword && c.compressed)?;
        c.get_text().ok()
    }
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
