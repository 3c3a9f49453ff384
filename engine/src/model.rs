//! Which model a run uses: a path on disk or one of the embedded default models.

use std::fmt;
use std::path::PathBuf;

/// A model as the user names it: a path (file or diffusers folder) or `builtin:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelRef {
    /// A `.safetensors`/`.gguf`/`.ckpt`/`.pth` file or a diffusers folder.
    Path(PathBuf),
    /// An embedded default model under `models/`, e.g. `shapes` for `builtin:shapes`.
    Builtin(String),
}

impl ModelRef {
    /// Parses `builtin:NAME` or a path.
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix("builtin:") {
            Some(name) => ModelRef::Builtin(name.to_string()),
            None => ModelRef::Path(PathBuf::from(s)),
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Path(p) => write!(f, "{}", p.display()),
            ModelRef::Builtin(n) => write!(f, "builtin:{n}"),
        }
    }
}

impl std::str::FromStr for ModelRef {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(s))
    }
}
