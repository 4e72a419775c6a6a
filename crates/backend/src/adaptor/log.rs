//! A call log (RMM's `logging_resource_adaptor`): every driver call with its outcome, the last
//! `capacity` kept, for debugging a policy or checking what a test did.

use super::{Adaptor, Call};
use crate::{Backend, BackendError};
use std::collections::VecDeque;

/// One logged call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub call: Call,
    /// `None` on success, else the error's message.
    pub error: Option<String>,
}

/// `inner` with its last `capacity` calls logged.
#[derive(Debug)]
pub struct Log<B> {
    inner: B,
    capacity: usize,
    entries: VecDeque<LogEntry>,
}

impl<B: Backend> Log<B> {
    pub fn new(inner: B, capacity: usize) -> Self {
        Log {
            inner,
            capacity,
            entries: VecDeque::new(),
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = &LogEntry> {
        self.entries.iter()
    }

    pub fn inner_backend(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Backend> Adaptor for Log<B> {
    fn inner(&self) -> &dyn Backend {
        &self.inner
    }
    fn inner_mut(&mut self) -> &mut dyn Backend {
        &mut self.inner
    }
    fn after(&mut self, call: &Call, outcome: Result<(), &BackendError>) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(LogEntry {
            call: *call,
            error: outcome.err().map(ToString::to_string),
        });
    }
}
