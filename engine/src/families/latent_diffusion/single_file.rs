//! Single-file checkpoints (`.safetensors`, `.ckpt` torch zips read by our own pickle reader, or
//! stable-diffusion.cpp's `.gguf`) in the original LDM layout, served to the modules under
//! diffusers names: a candle `SimpleBackend` per component that finds each tensor through
//! [`super::ldm_keys`], reads it from the memory map (or the zip entry) only when a module asks
//! for it, and reshapes or splits it. A GGUF's tensors can also be handed over as stored
//! ([`SingleFile::stored_source`]: GGML blocks and f16 kept as they are).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use candle_nn::var_builder::SimpleBackend;

use super::ldm_keys::{self, LdmHints, LdmLayout, Shapes, Source, Take};
use crate::error::{Error, Result};
use crate::formats::ckpt::{self, CkptTensor};
use crate::knobs::Component;
use crate::nn::mapped::MappedSafetensors;
use crate::nn::mapped_gguf::MappedGguf;
use crate::nn::{StoredSource, StoredWeight};

/// Where the tensors' bytes are.
enum Storage {
    Safetensors(MappedSafetensors),
    Gguf(MappedGguf),
    Ckpt { tensors: HashMap<String, CkptTensor>, zip: Mutex<zip::ZipArchive<File>> },
}

/// An open single-file checkpoint: its storage and its inferred layout.
pub struct SingleFile {
    path: PathBuf,
    storage: Arc<Storage>,
    /// Configs and name maps inferred from the file (and an LDM `.yaml` beside it).
    pub layout: LdmLayout,
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "I64" => DType::I64,
        "U32" => DType::U32,
        _ => return None,
    })
}

impl SingleFile {
    /// Opens `path` and infers its layout; an LDM `.yaml` with the same stem, when present, gives
    /// the head counts and prediction type.
    ///
    /// # Errors
    /// An unreadable file, a format other than safetensors or a torch zip, or a key layout that
    /// is not SD 1.x/2.x or SDXL base LDM (the message names a few keys, or the SDXL text
    /// encoder that is missing).
    pub fn open(path: &Path) -> Result<Self> {
        let (storage, shapes, metadata) = read(path)?;
        let hints = hints_beside(path);
        if let Some(keys) = ldm_keys::denoiser_keys(&shapes) {
            return Err(Error::file(path, denoiser_only_message(keys.len())));
        }
        let layout = ldm_keys::layout(&shapes, &hints, &metadata).map_err(|e| Error::file(path, e))?;
        check_runnable(path, &storage, &layout)?;
        Ok(Self { path: path.to_path_buf(), storage: Arc::new(storage), layout })
    }

    /// Opens a file that holds only an LDM denoiser (stable-diffusion.cpp's or ComfyUI-GGUF's
    /// names): its layout has the UNet's config and names; the text encoder, VAE, tokenizer and
    /// scheduler come from a companion ([`super::checkpoint::Companions`]).
    ///
    /// # Errors
    /// As [`SingleFile::open`]; a whole model or names that are no SD 1.x/2.x denoiser.
    pub fn open_denoiser(path: &Path) -> Result<Self> {
        let (storage, shapes, _) = read(path)?;
        let keys = ldm_keys::denoiser_keys(&shapes).ok_or_else(|| {
            let some: Vec<&str> = shapes.keys().take(3).map(String::as_str).collect();
            Error::file(path, format!("is not a denoiser-only file (LDM '{}*' names); first keys: {}", ldm_keys::UNET_PREFIX, some.join(", ")))
        })?;
        let ldm_keys::DenoiserLayout { unet, names, notes } =
            ldm_keys::denoiser_layout(&shapes, &keys, &hints_beside(path)).map_err(|e| Error::file(path, e))?;
        let layout = ldm_keys::LdmLayout {
            unet,
            // not in the file: the companion's are used
            vae: Default::default(),
            text: Default::default(),
            text_2: None,
            tower: ldm_keys::TextTower::Clip,
            scheduler: Default::default(),
            names: [HashMap::new(), names, HashMap::new(), HashMap::new()],
            notes,
        };
        check_runnable(path, &storage, &layout)?;
        Ok(Self { path: path.to_path_buf(), storage: Arc::new(storage), layout })
    }

    /// Whether the file is a GGUF, whose tensors [`SingleFile::stored_source`] hands over as stored.
    pub fn is_gguf(&self) -> bool {
        matches!(*self.storage, Storage::Gguf(_))
    }

    /// For a GGUF, one component's tensors under their diffusers names as the file stores them
    /// (blocks, f16, f32), for [`crate::nn::Weights::as_stored`]; `None` for other formats.
    pub fn stored_source(&self, component: Component) -> Option<Arc<dyn StoredSource>> {
        if !self.is_gguf() {
            return None;
        }
        let names = self.layout.names[component_index(component)].clone();
        Some(Arc::new(ComponentBackend { path: self.path.clone(), storage: Arc::clone(&self.storage), names }))
    }

    /// As [`SingleFile::stored_source`] for SDXL's second text encoder.
    pub fn stored_source_text_2(&self) -> Option<Arc<dyn StoredSource>> {
        if !self.is_gguf() || self.layout.text_2.is_none() {
            return None;
        }
        let names = self.layout.names[TEXT_2].clone();
        Some(Arc::new(ComponentBackend { path: self.path.clone(), storage: Arc::clone(&self.storage), names }))
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A memory-mapped builder for one component, in `dtype` on `device`, and its number of weight
    /// elements.
    pub fn weights(&self, component: Component, dtype: DType, device: &Device) -> (VarBuilder<'static>, u64) {
        self.weights_at(component_index(component), dtype, device)
    }

    /// As [`SingleFile::weights`] for SDXL's second text encoder (`conditioner.embedders.1.*`);
    /// `None` when the file has none.
    pub fn weights_text_2(&self, dtype: DType, device: &Device) -> Option<(VarBuilder<'static>, u64)> {
        self.layout.text_2.as_ref().map(|_| self.weights_at(TEXT_2, dtype, device))
    }

    fn weights_at(&self, index: usize, dtype: DType, device: &Device) -> (VarBuilder<'static>, u64) {
        let names = self.layout.names[index].clone();
        let elements = names.values().map(|s| self.elements(s)).sum();
        let backend = ComponentBackend { path: self.path.clone(), storage: Arc::clone(&self.storage), names };
        (VarBuilder::from_backend(Box::new(backend), dtype, device.clone()), elements)
    }

    fn elements(&self, s: &Source) -> u64 {
        let n = match &*self.storage {
            Storage::Safetensors(st) => st.elements(&s.key).unwrap_or(0) as u64,
            Storage::Gguf(g) => g.entry(&s.key).map_or(0, |e| e.elements() as u64),
            Storage::Ckpt { tensors, .. } => tensors.get(&s.key).map(CkptTensor::elements).unwrap_or(0),
        };
        if matches!(s.take, Take::Third(_)) { n / 3 } else { n }
    }
}

/// What a single file holds: its storage, tensor shapes and metadata (a checkpoint's).
fn read(path: &Path) -> Result<(Storage, Shapes, BTreeMap<String, String>)> {
    let magic = {
        let mut magic = [0u8; 4];
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let n = std::io::Read::read(&mut f, &mut magic).map_err(|e| Error::io(path, e))?;
        magic[..n].to_vec()
    };
    Ok(if magic == b"GGUF" || magic == b"FUGG" {
        let g = MappedGguf::open(path)?;
        let shapes: Shapes = g.entries().map(|(n, e)| (n.to_string(), e.shape.iter().map(|&d| d as u64).collect())).collect();
        (Storage::Gguf(g), shapes, BTreeMap::new())
    } else if magic == b"PK\x03\x04" {
        let (located, metadata, _) = ckpt::locate(path)?;
        let shapes: Shapes = located.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
        let tensors = located.into_iter().map(|t| (t.name.clone(), t)).collect();
        let zip = Mutex::new(ckpt::open_archive(path)?);
        (Storage::Ckpt { tensors, zip }, shapes, metadata)
    } else {
        // not a torch zip: safetensors, or an error naming the file
        let st = MappedSafetensors::open(path)?;
        let shapes: Shapes = st.shapes().map(|(n, s)| (n.to_string(), s.iter().map(|&d| d as u64).collect())).collect();
        (Storage::Safetensors(st), shapes, BTreeMap::new())
    })
}

/// The hints of an LDM `.yaml` with the same stem beside `path`, if there is one.
fn hints_beside(path: &Path) -> LdmHints {
    match std::fs::read_to_string(path.with_extension("yaml")) {
        Ok(text) => LdmHints::from_yaml(&text),
        Err(_) => LdmHints::default(),
    }
}

/// Refuses a GGUF whose used tensors this build cannot run as they are stored: a GGML type it
/// has no kernel for, or a tensor ComfyUI-GGUF's converter stored reshaped.
fn check_runnable(path: &Path, storage: &Storage, layout: &LdmLayout) -> Result<()> {
    if let Storage::Gguf(g) = storage {
        let used = || layout.names.iter().flat_map(|m| m.values()).map(|s| s.key.as_str());
        if let Some(message) = g.unrunnable(used()).or_else(|| g.reshaped(used())) {
            return Err(Error::file(path, message));
        }
    }
    Ok(())
}

/// What a denoiser-only file needs to run, in one line.
pub fn denoiser_only_message(tensors: usize) -> String {
    format!(
        "holds only a denoiser ({tensors} UNet tensors, no text encoder or VAE): run it with a companion, \
         --base PATH (a Stable Diffusion 1.x/2.x model to take the text encoder and VAE from) or \
         --vae PATH --text-encoder PATH (diffusers vae/ and text_encoder/ folders)"
    )
}

/// A builder over a torch zip (`pytorch_model.bin` / `diffusion_pytorch_model.bin` in a diffusers
/// folder) serving its tensors under their own names, read one by one when asked for; and the
/// number of weight elements in it.
///
/// # Errors
/// A file that is not a torch zip checkpoint (a legacy non-zip pickle among them), named.
pub fn zip_var_builder(path: &Path, dtype: DType, device: &Device) -> Result<(VarBuilder<'static>, u64)> {
    let (located, _, _) = ckpt::locate(path)?;
    let elements = located.iter().map(CkptTensor::elements).sum();
    let names = located.iter().map(|t| (t.name.clone(), Source { key: t.name.clone(), take: Take::Whole })).collect();
    let tensors = located.into_iter().map(|t| (t.name.clone(), t)).collect();
    let storage = Storage::Ckpt { tensors, zip: Mutex::new(ckpt::open_archive(path)?) };
    let backend = ComponentBackend { path: path.to_path_buf(), storage: Arc::new(storage), names };
    Ok((VarBuilder::from_backend(Box::new(backend), dtype, device.clone()), elements))
}

/// Index of SDXL's second text encoder in [`LdmLayout::names`].
const TEXT_2: usize = 3;

/// Index of a component in [`LdmLayout::names`].
fn component_index(c: Component) -> usize {
    match c {
        Component::Text => 0,
        Component::Unet => 1,
        Component::Vae => 2,
    }
}

/// One component's tensors under their diffusers names.
struct ComponentBackend {
    path: PathBuf,
    storage: Arc<Storage>,
    names: HashMap<String, Source>,
}

impl ComponentBackend {
    fn raw(&self, key: &str) -> candle_core::Result<Tensor> {
        match &*self.storage {
            Storage::Safetensors(st) => st.load(key),
            // blocks expanded to f32 once: a precision knob then stores the tensor its own way
            Storage::Gguf(g) => g.dense(key, None),
            Storage::Ckpt { tensors, zip } => {
                let t = tensors.get(key).ok_or_else(|| candle_core::Error::Msg(format!("'{key}' is not in the file")))?;
                let dtype = dtype_of(t.dtype)
                    .ok_or_else(|| candle_core::Error::Msg(format!("tensor '{key}' has dtype {}, which is not supported", t.dtype)))?;
                let bytes = {
                    let mut zip = zip.lock().map_err(|_| candle_core::Error::Msg("checkpoint reader poisoned".into()))?;
                    ckpt::read_tensor_bytes(&mut zip, &self.path, t).map_err(|e| candle_core::Error::Msg(e.to_string()))?
                };
                let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
                Tensor::from_raw_buffer(&bytes, dtype, &shape, &Device::Cpu)
            }
        }
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let src = self
            .names
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor maps to '{name}' in the LDM checkpoint")))?;
        let t = self.raw(&src.key)?;
        let t = match src.take {
            Take::Whole => t,
            Take::Squeeze1x1 => {
                let d = t.dims().to_vec();
                t.reshape((d[0], d[1..].iter().product::<usize>()))?
            }
            Take::Third(k) => {
                let n = t.dim(0)? / 3;
                t.narrow(0, k * n, n)?.contiguous()?
            }
            Take::Transpose => t.t()?.contiguous()?,
        };
        t.to_dtype(dtype)?.to_device(dev)
    }
}

impl StoredSource for ComponentBackend {
    fn stored(&self, name: &str, device: &Device) -> candle_core::Result<StoredWeight> {
        let src = self
            .names
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no tensor maps to '{name}' in the LDM checkpoint")))?;
        let Storage::Gguf(g) = &*self.storage else {
            candle_core::bail!("{}: only a GGUF's tensors are read as stored", self.path.display());
        };
        let rows = match src.take {
            Take::Third(k) => {
                let first = g.entry(&src.key).and_then(|e| e.shape.first().copied()).unwrap_or(0);
                Some((k * (first / 3), first / 3))
            }
            // a 1×1 kernel's rows are its input channels whatever its shape says; the weight
            // reader takes dense tensors to the shape it expects, and blocks are already rows
            Take::Whole | Take::Squeeze1x1 => None,
            // blocks run along the stored rows, which a transpose would cut across: widened
            Take::Transpose => return Ok(StoredWeight::Dense(g.dense(&src.key, None)?.t()?.contiguous()?.to_device(device)?)),
        };
        g.stored(&src.key, rows, device)
    }
}

impl SimpleBackend for ComponentBackend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "tensor '{}' has shape {:?}, the model expects {:?}",
                self.names.get(name).map_or(name, |s| s.key.as_str()),
                t.dims(),
                s.dims()
            )));
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
}
