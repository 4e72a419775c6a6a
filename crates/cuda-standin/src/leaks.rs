//! The leak report (on request and, with `COALESCE_STANDIN_LEAK_CHECK`, at exit).
//!
//! A leak is a handle not released, a mapping not unmapped, a reservation not freed, an
//! allocation not freed, or stream work that faulted. Live streams and events and retained
//! primary contexts are listed but are not leaks (a process may keep them to the end).

use crate::config::LeakCheck;
use crate::state::{self, State};
use std::fmt::Write;

impl State {
    /// The report as one JSON object, and how many leaks it lists.
    pub fn leak_report(&self) -> (String, usize) {
        let mut out = String::from("{");
        let mut count = 0;
        let handles: Vec<String> = self
            .handles
            .iter()
            .filter(|(_, h)| !h.released)
            .map(|(id, h)| {
                format!(
                    r#"{{"handle":{id},"size":{},"device":{},"mappings":{}}}"#,
                    h.size, h.device, h.maps
                )
            })
            .collect();
        count += handles.len();
        let _ = write!(out, r#""handles_not_released":[{}],"#, handles.join(","));
        let mappings: Vec<String> = self
            .mappings
            .iter()
            .map(|(p, m)| format!(r#"{{"ptr":{p},"size":{},"handle":{}}}"#, m.size, m.handle))
            .collect();
        count += mappings.len();
        let _ = write!(out, r#""mappings_left":[{}],"#, mappings.join(","));
        let reservations: Vec<String> = self
            .reservations
            .iter()
            .map(|(p, s)| format!(r#"{{"ptr":{p},"size":{s}}}"#))
            .collect();
        count += reservations.len();
        let _ = write!(
            out,
            r#""reservations_not_freed":[{}],"#,
            reservations.join(",")
        );
        let allocations: Vec<String> = self
            .allocations
            .iter()
            .map(|(p, a)| format!(r#"{{"ptr":{p},"size":{},"device":{}}}"#, a.size, a.device))
            .collect();
        count += allocations.len();
        let _ = write!(
            out,
            r#""allocations_not_freed":[{}],"#,
            allocations.join(",")
        );
        let faults: Vec<String> = self
            .streams
            .async_faults
            .iter()
            .map(|f| format!("{f:?}"))
            .collect();
        count += faults.len();
        let _ = write!(out, r#""async_faults":[{}],"#, faults.join(","));
        let used: Vec<String> = self.devices.iter().map(|d| d.used.to_string()).collect();
        let refs: Vec<String> = self
            .devices
            .iter()
            .map(|d| d.primary_refs.to_string())
            .collect();
        let _ = write!(
            out,
            r#""bytes_in_use":[{}],"primary_context_refs":[{}],"streams":{},"events":{},"leaks":{count}}}"#,
            used.join(","),
            refs.join(","),
            self.streams.live_streams(),
            self.streams.live_events(),
        );
        (out, count)
    }
}

/// Registers [`at_exit`] once, if the environment asks for a leak check.
pub(crate) fn register_exit_check(mode: LeakCheck) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if mode != LeakCheck::Off {
        ONCE.call_once(|| {
            // SAFETY: `at_exit` is an `extern "C" fn()` that lives as long as the process: the
            // library is never unloaded (cudarc keeps it; the loader opens it RTLD_NODELETE).
            unsafe { libc::atexit(at_exit) };
        });
    }
}

/// Prints the leak report to stderr; with `abort`, ends the process with status 86 if
/// something leaked.
extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let Some((mode, (report, leaks))) =
            state::try_with(|s| (s.config.leak_check, s.leak_report()))
        else {
            eprintln!("coalesce-cuda-standin: leak check skipped: the driver lock is held at exit");
            return;
        };
        eprintln!("coalesce-cuda-standin: leak report: {report}");
        if mode == LeakCheck::Abort && leaks > 0 {
            eprintln!("coalesce-cuda-standin: {leaks} leak(s); exiting with status 86");
            // SAFETY: ends the process at once, as exit would after the remaining handlers.
            unsafe { libc::_exit(86) };
        }
    });
}
