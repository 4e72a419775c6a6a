//! The PYTORCH_CUDA_ALLOC_CONF settings `coalesce tune` tries.
//!
//! A candidate is a list of `(key, value)` options of the torch-native model; the empty list is
//! PyTorch's default. Every candidate of a grid is distinct, the default comes first, and every
//! option value is one `coalesce_policy`'s torch config accepts.

use coalesce_policy::PolicySpec;

/// The model whose settings are searched.
pub const POLICY: &str = "torch-native";

/// One setting: options in PYTORCH_CUDA_ALLOC_CONF order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub options: Vec<(&'static str, &'static str)>,
}

impl Candidate {
    /// The value to paste after `PYTORCH_CUDA_ALLOC_CONF=`; empty for the default.
    pub fn conf(&self) -> String {
        self.options
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The torch-native spec this setting replays under.
    pub fn spec(&self) -> PolicySpec {
        PolicySpec {
            name: POLICY.to_owned(),
            options: self
                .options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    pub fn is_default(&self) -> bool {
        self.options.is_empty()
    }

    pub fn uses_expandable(&self) -> bool {
        self.options.contains(&("expandable_segments", "True"))
    }
}

/// How much of the space to search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GridChoice {
    /// A handful of settings (tests, a first look) instead of the full grid.
    pub quick: bool,
    /// Leave out `expandable_segments:True` (it conflicts with some setups, e.g. vLLM's sleep
    /// mode and CUDA graphs on older torch).
    pub expandable: bool,
}

/// `garbage_collection_threshold` acts only when a memory fraction is set (PyTorch checks
/// `set_fraction`), so it is tried together with a fraction of the whole device.
const GC_FRACTION: (&str, &str) = ("per_process_memory_fraction", "1.0");

/// Every combination of the option values of `choice`, the default first.
pub fn candidates(choice: GridChoice) -> Vec<Candidate> {
    let (split, divisions, gc): (&[&str], &[&str], &[&str]) = if choice.quick {
        (&["512"], &["4"], &[])
    } else {
        (
            &["20", "64", "128", "256", "512", "1024", "4096"],
            &["2", "4", "8", "16", "[256:1,512:2,1024:4,>:8]"],
            &["0.6", "0.8"],
        )
    };
    let expandable: &[bool] = if choice.expandable {
        &[false, true]
    } else {
        &[false]
    };
    let with_none = |values: &[&'static str]| -> Vec<Option<&'static str>> {
        std::iter::once(None)
            .chain(values.iter().copied().map(Some))
            .collect()
    };
    let mut out = Vec::new();
    for &exp in expandable {
        for s in with_none(split) {
            for d in with_none(divisions) {
                for g in with_none(gc) {
                    let mut options = Vec::new();
                    if exp {
                        options.push(("expandable_segments", "True"));
                    }
                    if let Some(s) = s {
                        options.push(("max_split_size_mb", s));
                    }
                    if let Some(d) = d {
                        options.push(("roundup_power2_divisions", d));
                    }
                    if let Some(g) = g {
                        options.push(("garbage_collection_threshold", g));
                        options.push(GC_FRACTION);
                    }
                    out.push(Candidate { options });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_start_with_the_default_and_hold_distinct_valid_settings() {
        for quick in [true, false] {
            for expandable in [true, false] {
                let grid = candidates(GridChoice { quick, expandable });
                assert!(grid[0].is_default());
                let mut confs: Vec<String> = grid.iter().map(Candidate::conf).collect();
                confs.sort();
                confs.dedup();
                assert_eq!(confs.len(), grid.len(), "duplicates");
                assert_eq!(grid.iter().any(Candidate::uses_expandable), expandable);
                for c in &grid {
                    coalesce_policy::build(&c.spec())
                        .unwrap_or_else(|e| panic!("{}: {e}", c.conf()));
                }
            }
        }
        assert_eq!(
            candidates(GridChoice {
                quick: false,
                expandable: true
            })
            .len(),
            8 * 6 * 3 * 2
        );
    }

    #[test]
    fn conf_is_the_pytorch_syntax() {
        let c = Candidate {
            options: vec![
                ("expandable_segments", "True"),
                ("max_split_size_mb", "512"),
            ],
        };
        assert_eq!(c.conf(), "expandable_segments:True,max_split_size_mb:512");
        assert_eq!(
            c.spec().to_string(),
            "torch-native:expandable_segments:True,max_split_size_mb:512"
        );
    }
}
