//! A borrowed backend as an adaptor with no hooks, so adaptors can wrap a backend someone
//! else owns for the length of one operation (the pool caps its backend per allocation).

use super::Adaptor;
use crate::Backend;

/// Forwards everything to the borrowed backend.
pub struct ByRef<'a>(pub &'a mut dyn Backend);

impl std::fmt::Debug for ByRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ByRef").field(&self.0.name()).finish()
    }
}

impl Adaptor for ByRef<'_> {
    fn inner(&self) -> &dyn Backend {
        &*self.0
    }
    fn inner_mut(&mut self) -> &mut dyn Backend {
        &mut *self.0
    }
}
