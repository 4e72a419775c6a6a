//! Finding and loading traces.

use coalesce_trace::{Trace, TraceError, read_trace, resolve, synth};
use std::path::{Path, PathBuf};

/// The traces bundled with coalesce (`traces/` at the repository root), sorted by name.
pub fn bundled_traces() -> Result<Vec<PathBuf>, String> {
    let candidates = [
        PathBuf::from("traces"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../traces"),
    ];
    let dir = candidates.iter().find(|d| d.is_dir()).ok_or_else(|| {
        "no TRACE given and the bundled traces/ directory was not found (run from the repository root)".to_owned()
    })?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_trace_file(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{} holds no trace files", dir.display()));
    }
    Ok(files)
}

fn is_trace_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    [
        ".csv",
        ".csv.gz",
        ".pickle",
        ".pickle.gz",
        ".pkl",
        ".pkl.gz",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

/// A trace's display name: the file name without trace-format extensions.
pub fn trace_name(path: &Path) -> String {
    let mut name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("trace")
        .to_owned();
    for ext in [".gz", ".csv", ".pickle", ".pkl", ".trace"] {
        if let Some(stripped) = name.strip_suffix(ext) {
            name = stripped.to_owned();
        }
    }
    name
}

/// A synthetic trace by generator name, optionally `@SEED` (default seed 1).
pub fn synth_trace(spec: &str) -> Result<Trace, String> {
    let (name, seed) = match spec.split_once('@') {
        Some((n, s)) => (
            n,
            s.parse::<u64>()
                .map_err(|_| format!("{spec:?}: the seed after @ must be a number"))?,
        ),
        None => (spec, 1),
    };
    let g = synth::lookup(name).ok_or_else(|| {
        let known: Vec<&str> = synth::GENERATORS.iter().map(|g| g.name).collect();
        format!(
            "unknown synthetic trace {name:?}; known: {}",
            known.join(", ")
        )
    })?;
    let label = if seed == 1 {
        name.to_owned()
    } else {
        format!("{name}@{seed}")
    };
    Ok(resolve(label, &(g.generate)(seed)))
}

/// Reads and resolves a trace file; a snapshot with several devices gives one trace each.
pub fn load_trace(path: &Path) -> Result<Vec<Trace>, TraceError> {
    let (_, devices) = read_trace(path)?;
    let name = trace_name(path);
    let several = devices.len() > 1;
    Ok(devices
        .iter()
        .map(|d| {
            let label = if several {
                format!("{name}/cuda{}", d.device)
            } else {
                name.clone()
            };
            resolve(label, &d.events)
        })
        .collect())
}

/// Reads every file of `paths` in order; a file may hold several traces (one per device).
pub fn load_traces(paths: &[PathBuf]) -> Result<Vec<Trace>, TraceError> {
    let mut traces = Vec::new();
    for path in paths {
        traces.extend(load_trace(path)?);
    }
    Ok(traces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_drop_format_extensions() {
        assert_eq!(
            trace_name(Path::new("traces/gpt2_train.trace.csv.gz")),
            "gpt2_train"
        );
        assert_eq!(trace_name(Path::new("/tmp/run.pickle")), "run");
        assert_eq!(trace_name(Path::new("x.csv")), "x");
    }
}
