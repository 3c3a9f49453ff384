//! Profiles: a run written down as versioned TOML so it can be run again.

/// A run written down.
#[derive(Clone, Debug, Default)]
pub struct Profile {}
