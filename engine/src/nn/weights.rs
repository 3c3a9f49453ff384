//! [`Weights`]: where a model constructor reads its tensors, and how it should store them.
//!
//! Every model constructor takes a `Weights` instead of a bare `candle_nn::VarBuilder`, so that
//! the knobs that decide how a component's weights are held (precision, later placement) reach
//! every layer through one explicit value rather than a global.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;

/// A component's tensor source (a prefixed `VarBuilder`) and the storage rules for its layers.
#[derive(Clone)]
pub struct Weights<'a> {
    vb: VarBuilder<'a>,
}

impl<'a> Weights<'a> {
    /// Dense weights in `vb`'s dtype.
    pub fn new(vb: VarBuilder<'a>) -> Self {
        Self { vb }
    }

    /// The same source and rules under the prefix `name` (`vb.pp`).
    pub fn pp<S: ToString>(&self, name: S) -> Self {
        Self { vb: self.vb.pp(name) }
    }

    /// The underlying builder, for layers that are always dense (norms, embeddings).
    pub fn vb(&self) -> &VarBuilder<'a> {
        &self.vb
    }

    /// A dense tensor `name` of `shape`, in the builder's dtype.
    ///
    /// # Errors
    /// A missing tensor or one of the wrong shape.
    pub fn get<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        self.vb.get(shape, name)
    }

    /// Whether the source holds `name` (relative to this prefix).
    pub fn contains_tensor(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// The device tensors are loaded onto.
    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    /// The dense storage dtype.
    pub fn dtype(&self) -> DType {
        self.vb.dtype()
    }
}
