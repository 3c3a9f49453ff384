//! The system's default output device through cpal. A device whose configuration cannot be read
//! (no sound card) is reported as "no audio device: …", never a panic.

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, SampleFormat, SizedSample};

use super::{AudioOutput, OutputInfo, Renderer};

/// Largest device buffer rendered in one go; bigger buffers are rendered in pieces.
const SCRATCH_FRAMES: usize = 8192;

/// The default output device of cpal's default host.
#[derive(Debug, Default)]
pub struct CpalOutput;

impl AudioOutput for CpalOutput {
    fn open(&mut self, renderer: Renderer) -> Result<(OutputInfo, Box<dyn std::any::Any>), String> {
        let host = cpal::default_host();
        let device = host
            .default_output_device()
            .ok_or("no audio device: none found")?;
        let supported = device
            .default_output_config()
            .map_err(|e| format!("no audio device: {e}"))?;
        let config = supported.config();
        let info = OutputInfo {
            sample_rate: config.sample_rate,
            channels: config.channels,
        };
        let stream = match supported.sample_format() {
            SampleFormat::F32 => build::<f32>(&device, &config, renderer),
            SampleFormat::I16 => build::<i16>(&device, &config, renderer),
            SampleFormat::U16 => build::<u16>(&device, &config, renderer),
            SampleFormat::I32 => build::<i32>(&device, &config, renderer),
            other => {
                return Err(format!(
                    "no audio device: sample format {other} is not supported"
                ));
            }
        }?;
        stream.play().map_err(|e| format!("no audio device: {e}"))?;
        Ok((info, Box::new(stream)))
    }
}

fn build<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    mut renderer: Renderer,
) -> Result<cpal::Stream, String>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = config.channels as usize;
    // Allocated here, before the stream starts, so the callback never allocates.
    let mut scratch = vec![0.0f32; SCRATCH_FRAMES * channels.max(1)];
    device
        .build_output_stream::<T, _, _>(
            *config,
            move |out: &mut [T], _| {
                for chunk in out.chunks_mut(scratch.len()) {
                    let buf = &mut scratch[..chunk.len()];
                    renderer.render(buf, channels);
                    for (o, s) in chunk.iter_mut().zip(buf.iter()) {
                        *o = T::from_sample(*s);
                    }
                }
            },
            |_err| {},
            None,
        )
        .map_err(|e| format!("no audio device: {e}"))
}
