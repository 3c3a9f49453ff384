//! The planner: predicted bytes per device for a model + knobs + request, and a verdict.

/// A memory prediction with its verdict.
#[derive(Clone, Debug, Default)]
pub struct Plan {}
