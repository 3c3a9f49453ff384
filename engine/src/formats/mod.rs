//! Model file readers: headers only (safetensors, diffusers folders, GGUF, PyTorch zip checkpoints),
//! and the inspect summary built from them.
