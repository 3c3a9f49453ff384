//! Knob-aware layers: quantized linear/conv, sliced attention, placement.
//!
//! Model code in `families/` builds its layers from here rather than from `candle_nn` directly, so
//! that a knob (precision, slicing, placement) changes one place: constructors take [`Weights`]
//! (the tensor source and the component's precision), [`Linear`] holds a quantized matmul when
//! asked, [`attention`] honours `attention_slice`, [`TileGrid`] runs layers on a map held in tiles
//! (`vae_tile`).

pub mod attention;
pub mod cpu;
pub mod layers;
pub mod mapped;
pub mod mapped_gguf;
pub mod norm;
pub mod tiles;
pub mod weights;

pub use attention::attention;
pub use layers::{Activation, Conv2d, Linear, geglu};
pub use norm::{GroupNorm, GroupStats, layer_norm};
pub use tiles::TileGrid;
pub use weights::{Ledger, StoredSource, StoredWeight, Weights, Widened};
