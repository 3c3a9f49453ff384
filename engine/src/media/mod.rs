//! Output media: images and audio in memory, PNG and WAV files with the profile embedded, and
//! reading back outputs made by Headroom, AUTOMATIC1111 and ComfyUI.
//!
//! - [`png`]: write/read PNGs with the `headroom` profile chunk and an A1111 `parameters` chunk.
//! - [`wav`]: write/read WAVs with the profile in an `hdrm` RIFF chunk.
//! - [`a1111`], [`comfy`]: the foreign formats' settings text, read into a request.
//! - [`restore`]: one call for "what can be restored from this dropped file".

pub mod a1111;
pub mod comfy;
pub mod png;
mod png_chunks;
pub mod restore;
pub mod wav;
#[cfg(test)]
mod tests;

pub use png::{PngText, read_png, write_png};
pub use restore::{Restored, Source, restore_from_file};
pub use wav::{WavFormat, read_wav, write_wav, write_wav_as};

/// An 8-bit RGB image, rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

/// Mono audio as f32 samples in [-1, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

impl Audio {
    /// The clip's length in seconds.
    pub fn duration_secs(&self) -> f32 {
        self.samples.len() as f32 / self.sample_rate.max(1) as f32
    }
}

/// SHA-256 (hex) of an output's content — the RGB bytes with the size, or the samples with the
/// rate — which is what reproducibility compares (the file around it also holds timings).
pub fn content_sha256(artifact: &crate::worker::protocol::Artifact) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match artifact {
        crate::worker::protocol::Artifact::Image(img) => {
            h.update(b"rgb8");
            h.update(img.width.to_le_bytes());
            h.update(img.height.to_le_bytes());
            h.update(&img.rgb);
        }
        crate::worker::protocol::Artifact::Audio(a) => {
            h.update(b"f32mono");
            h.update(a.sample_rate.to_le_bytes());
            for s in &a.samples {
                h.update(s.to_le_bytes());
            }
        }
    }
    format!("{:x}", h.finalize())
}
