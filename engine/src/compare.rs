//! A/B metrics: PSNR, SSIM and max abs difference for images; SNR and log-spectral distance for audio.
