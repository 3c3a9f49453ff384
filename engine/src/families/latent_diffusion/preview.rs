//! A cheap look at the latents during denoising: a fixed linear map from latent channels to RGB
//! (the SD 1.x/2.x factors ComfyUI and A1111 use), at latent resolution, no decoder involved.

use candle_core::{DType, Result, Tensor};

use crate::media::Image;

/// Latent channel → (R, G, B) weights for SD's 4-channel latents.
const SD_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// The first image of `latents` `(B, C, h, w)` as an `h × w` RGB picture. 4-channel latents use
/// SD's factors; any other channel count shows the channel mean in grey.
///
/// # Errors
/// Tensor errors.
pub fn latents_to_rgb(latents: &Tensor) -> Result<Image> {
    let (_, c, h, w) = latents.dims4()?;
    let x = latents.get(0)?.to_dtype(DType::F32)?.reshape((c, h * w))?.t()?; // (hw, C)
    let m = if c == 4 {
        Tensor::new(&SD_LATENT_RGB, latents.device())?
    } else {
        Tensor::full(1.0 / c as f32, (c, 3), latents.device())?
    };
    let rgb = x.matmul(&m)?; // (hw, 3)
    let rgb = ((rgb + 1.0)? * 127.5)?.clamp(0f32, 255f32)?.round()?;
    let rgb: Vec<u8> = rgb.flatten_all()?.to_vec1::<f32>()?.into_iter().map(|v| v as u8).collect();
    Ok(Image { width: w as u32, height: h as u32, rgb })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Zero latents are mid-grey; a strong first channel turns the pixel warm (R > B).
    #[test]
    fn grey_and_warm() {
        let z = Tensor::zeros((1, 4, 2, 3), DType::F32, &Device::Cpu).unwrap();
        let img = latents_to_rgb(&z).unwrap();
        assert_eq!((img.width, img.height, img.rgb.len()), (3, 2, 18));
        assert!(img.rgb.iter().all(|&v| v == 128));
        let mut v = vec![0f32; 24];
        v[0] = 1.0;
        let img = latents_to_rgb(&Tensor::from_vec(v, (1, 4, 2, 3), &Device::Cpu).unwrap()).unwrap();
        assert!(img.rgb[0] > img.rgb[2], "{:?}", &img.rgb[..3]);
    }
}
