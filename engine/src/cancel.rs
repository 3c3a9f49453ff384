//! [`CancelCheck`]: a cancel request that code deep inside a load (a component's weights, read
//! tensor by tensor) can keep and ask, so a cancel ends a load within one tensor.

use std::sync::Arc;

/// An owned, cheap-to-clone question "has this command been cancelled?". The worker makes one
/// per command (its sequence number against the cancel token); tests make them from atomics.
#[derive(Clone)]
pub struct CancelCheck(Arc<dyn Fn() -> bool + Send + Sync>);

impl CancelCheck {
    /// A check that asks `f`.
    pub fn new(f: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// A check that is never cancelled.
    pub fn never() -> Self {
        Self::new(|| false)
    }

    /// True once the command was cancelled.
    pub fn is_cancelled(&self) -> bool {
        (self.0)()
    }

    /// `Err(Cancelled)` once the command was cancelled, for `?` between steps.
    ///
    /// # Errors
    /// [`crate::Error::Cancelled`].
    pub fn stop(&self) -> crate::Result<()> {
        if self.is_cancelled() { Err(crate::Error::Cancelled) } else { Ok(()) }
    }
}

impl std::fmt::Debug for CancelCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelCheck(cancelled: {})", self.is_cancelled())
    }
}
