//! `coalesce tune`'s output: a table of the best settings and the line to paste, or JSON.

use super::{Outcome, Tuning};
use crate::units::bytes;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use serde_json::{Value, json};

/// What the report is about, besides the search's result.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub trace: &'a str,
    /// Simulated device memory.
    pub capacity: u64,
    /// Whether the user chose the capacity (else the 80 GiB default: out-of-memory is moot).
    pub capacity_given: bool,
    pub searched: usize,
    pub seconds: f64,
    pub threads: usize,
}

/// The best `top` settings with distinct results (settings that reserve exactly what a better
/// ranked one does add nothing), the default excluded.
pub fn shown(t: &Tuning, top: usize) -> Vec<&Outcome> {
    let mut seen: Vec<(u64, u64)> = vec![(t.default.ooms, t.default.peak_reserved_bytes)];
    let mut out = vec![];
    for o in &t.ranked {
        let key = (o.ooms, o.peak_reserved_bytes);
        if o.candidate.is_default() || seen.contains(&key) {
            continue;
        }
        seen.push(key);
        out.push(o);
        if out.len() == top {
            break;
        }
    }
    out
}

/// "saves 4.36 GiB (17.5%)" or "costs 1.00 GiB (+4.0%)".
fn saving(o: &Outcome, default: &Outcome) -> String {
    let saved = o.saved_vs(default);
    let pct = 100.0 * saved as f64 / default.peak_reserved_bytes.max(1) as f64;
    if saved >= 0 {
        format!("saves {} ({pct:.1}%)", bytes(saved as u64))
    } else {
        format!(
            "costs {} (+{:.1}%)",
            bytes(saved.unsigned_abs() as u64),
            -pct
        )
    }
}

/// The human report.
pub fn text(t: &Tuning, ctx: &Context, top: usize) -> String {
    let d = &t.default;
    let mut s = format!(
        "{}: peak requested {}; default torch-native reserves {} ({:.3}x)",
        ctx.trace,
        bytes(d.peak_requested_bytes),
        bytes(d.peak_reserved_bytes),
        d.peak_reserved_bytes as f64 / d.peak_requested_bytes.max(1) as f64
    );
    if ctx.capacity_given {
        s += &format!(
            ", {} out-of-memory error(s) and {} cache flush(es) at {}",
            d.ooms,
            d.retries,
            bytes(ctx.capacity)
        );
    }
    s += &format!(
        "\nsearched {} settings in {:.1} s on {} thread(s)\n",
        ctx.searched, ctx.seconds, ctx.threads
    );
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header([
        "rank",
        "PYTORCH_CUDA_ALLOC_CONF",
        "peak reserved",
        "against default",
        "OOMs",
        "cache flushes",
    ]);
    for (i, o) in shown(t, top).iter().enumerate() {
        table.add_row(vec![
            Cell::new(i + 1),
            Cell::new(o.candidate.conf()),
            Cell::new(bytes(o.peak_reserved_bytes)).set_alignment(CellAlignment::Right),
            Cell::new(saving(o, d)),
            Cell::new(o.ooms).set_alignment(CellAlignment::Right),
            Cell::new(o.retries).set_alignment(CellAlignment::Right),
        ]);
    }
    s += &format!("{table}\n");
    if ctx.capacity_given && d.ooms > 0 {
        let avoiding = t.avoiding_oom();
        if avoiding.is_empty() {
            s += &format!(
                "no setting searched avoids the default's out-of-memory at {}\n",
                bytes(ctx.capacity)
            );
        } else {
            s += &format!(
                "{} setting(s) avoid the default's out-of-memory at {}, e.g. {}\n",
                avoiding.len(),
                bytes(ctx.capacity),
                avoiding
                    .iter()
                    .take(3)
                    .map(|o| o.candidate.conf())
                    .collect::<Vec<_>>()
                    .join("  |  ")
            );
        }
    }
    s += &best_lines(t);
    if s.contains("per_process_memory_fraction") {
        s += "(garbage_collection_threshold acts only under a memory fraction, hence \
              per_process_memory_fraction:1.0; PyTorch releases without that key in \
              PYTORCH_CUDA_ALLOC_CONF take torch.cuda.set_per_process_memory_fraction(1.0))\n";
    }
    s
}

/// Whether `o` is better than the default: fewer out-of-memory errors, or as many and less
/// reserved.
fn beats(o: &Outcome, default: &Outcome) -> bool {
    o.ooms < default.ooms || (o.ooms == default.ooms && o.saved_vs(default) > 0)
}

/// The saving, plus the out-of-memory errors avoided.
fn gain(o: &Outcome, default: &Outcome) -> String {
    let mut s = format!("{} of peak reserved memory", saving(o, default));
    if o.ooms < default.ooms {
        s += &format!(
            ", {} out-of-memory error(s) instead of {}",
            o.ooms, default.ooms
        );
    }
    s
}

/// The lines to paste: the best setting, and the best without expandable segments when the
/// best uses them.
fn best_lines(t: &Tuning) -> String {
    let best = t.best();
    if !beats(best, &t.default) {
        return "no setting searched beats the default\n".into();
    }
    let mut s = format!(
        "\nbest:\nPYTORCH_CUDA_ALLOC_CONF={}    # {}\n",
        best.candidate.conf(),
        gain(best, &t.default)
    );
    if best.candidate.uses_expandable() {
        match t.best_without_expandable() {
            Some(alt) if beats(alt, &t.default) => {
                s += &format!(
                    "without expandable segments (they conflict with some setups):\n\
                     PYTORCH_CUDA_ALLOC_CONF={}    # {}\n",
                    alt.candidate.conf(),
                    gain(alt, &t.default)
                );
            }
            _ => s += "without expandable segments, no setting searched beats the default\n",
        }
    }
    s
}

fn outcome_json(o: &Outcome, default: &Outcome) -> Value {
    json!({
        "conf": o.candidate.conf(),
        "peak_reserved_bytes": o.peak_reserved_bytes,
        "saved_bytes": o.saved_vs(default) as i64,
        "saved_fraction": o.saved_vs(default) as f64 / default.peak_reserved_bytes.max(1) as f64,
        "ooms": o.ooms,
        "alloc_retries": o.retries,
        "avoids_default_oom": default.ooms > 0 && o.ooms == 0,
    })
}

/// One JSON object for the file: the default, the best, the shown settings.
pub fn json(t: &Tuning, ctx: &Context, top: usize) -> String {
    let d = &t.default;
    json!({
        "trace": ctx.trace,
        "policy": super::grid::POLICY,
        "capacity_bytes": ctx.capacity,
        "searched": ctx.searched,
        "seconds": ctx.seconds,
        "peak_requested_bytes": d.peak_requested_bytes,
        "default": outcome_json(d, d),
        "best": outcome_json(t.best(), d),
        "best_without_expandable": t.best_without_expandable().map(|o| outcome_json(o, d)),
        "settings": shown(t, top).iter().map(|o| outcome_json(o, d)).collect::<Vec<_>>(),
        "avoiding_oom": t.avoiding_oom().iter().map(|o| o.candidate.conf()).collect::<Vec<_>>(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::Candidate;

    fn outcome(options: Vec<(&'static str, &'static str)>, reserved: u64, ooms: u64) -> Outcome {
        Outcome {
            candidate: Candidate { options },
            peak_reserved_bytes: reserved,
            peak_requested_bytes: 100,
            ooms,
            retries: 0,
        }
    }

    #[test]
    fn shows_distinct_results_and_the_paste_line() {
        let d = outcome(vec![], 200, 1);
        let t = Tuning {
            default: d.clone(),
            ranked: vec![
                outcome(vec![("expandable_segments", "True")], 120, 0),
                outcome(
                    vec![
                        ("expandable_segments", "True"),
                        ("max_split_size_mb", "512"),
                    ],
                    120,
                    0,
                ),
                outcome(vec![("max_split_size_mb", "512")], 150, 0),
                d,
            ],
        };
        let shown: Vec<String> = shown(&t, 5).iter().map(|o| o.candidate.conf()).collect();
        assert_eq!(shown, ["expandable_segments:True", "max_split_size_mb:512"]);
        let ctx = Context {
            trace: "x",
            capacity: 1 << 30,
            capacity_given: true,
            searched: 4,
            seconds: 0.1,
            threads: 2,
        };
        let text = text(&t, &ctx, 5);
        assert!(
            text.contains("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True    # saves 80 B (40.0%) of peak reserved memory, 0 out-of-memory error(s) instead of 1"),
            "{text}"
        );
        assert!(text.contains("PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:512"));
        assert!(text.contains("3 setting(s) avoid"), "{text}");
        let v: Value = serde_json::from_str(&json(&t, &ctx, 5)).unwrap();
        assert_eq!(v["best"]["saved_bytes"], 80);
        assert_eq!(v["best"]["avoids_default_oom"], true);
    }
}
