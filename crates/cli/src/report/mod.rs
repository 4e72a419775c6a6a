//! Rendering replay results: a human table, JSON lines, SVG plots.

pub mod anchors;
pub mod json;
pub mod plot;
pub mod table;
