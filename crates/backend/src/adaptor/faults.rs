//! Fault injection: the k-th call of a kind fails with a chosen error before it reaches the
//! driver, so tests can prove that a failing driver call loses nothing.

use super::{Adaptor, Call};
use crate::{Backend, BackendError, BackendResult, DriverCall};

/// Fail the `nth` (1-based, counted from when the fault was armed) call of `call` with `error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub call: DriverCall,
    pub nth: u64,
    pub error: BackendError,
}

/// `inner` with armed faults. Each fault fires once.
#[derive(Debug)]
pub struct Faults<B> {
    inner: B,
    armed: Vec<(Fault, u64)>,
    fired: Vec<Fault>,
}

impl<B: Backend> Faults<B> {
    pub fn new(inner: B) -> Self {
        Faults {
            inner,
            armed: Vec::new(),
            fired: Vec::new(),
        }
    }

    /// Arms `fault`; calls of its kind are counted from now.
    pub fn arm(&mut self, fault: Fault) {
        self.armed.push((fault, 0));
    }

    /// Faults that have fired, in order.
    pub fn fired(&self) -> &[Fault] {
        &self.fired
    }

    pub fn inner_backend(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Backend> Adaptor for Faults<B> {
    fn inner(&self) -> &dyn Backend {
        &self.inner
    }
    fn inner_mut(&mut self) -> &mut dyn Backend {
        &mut self.inner
    }
    fn before(&mut self, call: &Call) -> BackendResult<()> {
        let kind = call.kind();
        let mut hit = None;
        for (i, (fault, seen)) in self.armed.iter_mut().enumerate() {
            if fault.call == kind {
                *seen += 1;
                if *seen == fault.nth && hit.is_none() {
                    hit = Some(i);
                }
            }
        }
        match hit {
            Some(i) => {
                let (fault, _) = self.armed.remove(i);
                let error = fault.error.clone();
                self.fired.push(fault);
                Err(error)
            }
            None => Ok(()),
        }
    }
}
