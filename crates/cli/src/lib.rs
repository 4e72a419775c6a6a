//! # coalesce-cli: the `coalesce` command as a library
//!
//! Front-end layer: replay orchestration, reports (table, JSON, SVG) and units. The binary in
//! `main.rs` only parses arguments and calls in here, so everything is testable.

pub mod bench;
pub mod oracle;
pub mod replay;
pub mod report;
pub mod tune;
pub mod units;
