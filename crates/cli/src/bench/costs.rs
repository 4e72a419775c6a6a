//! Estimated driver time: calls and bytes times a per-call cost table.

use coalesce_backend::{DriverCall, DriverCalls};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The table shipped with coalesce (`crates/cli/data/driver-costs.json`).
const BUNDLED: &str = include_str!("../../data/driver-costs.json");

#[derive(Clone, Debug, Deserialize)]
pub struct CallCost {
    pub us: f64,
    pub us_per_mib: f64,
    pub source: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CostTable {
    pub calls: BTreeMap<String, CallCost>,
}

impl CostTable {
    pub fn bundled() -> Self {
        Self::parse(BUNDLED).expect("the bundled cost table parses")
    }

    /// Reads a table of the same shape (e.g. measured on a GPU with scripts/gpu-check.sh).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let table: CostTable = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for call in DriverCall::ALL {
            if !table.calls.contains_key(call.name()) {
                return Err(format!(
                    "no cost for {} ({})",
                    call.name(),
                    call.cuda_name()
                ));
            }
        }
        Ok(table)
    }

    /// Estimated driver time in microseconds.
    pub fn estimate_us(&self, calls: &DriverCalls, bytes: &DriverCalls) -> f64 {
        DriverCall::ALL
            .iter()
            .map(|&c| {
                let cost = &self.calls[c.name()];
                calls.get(c) as f64 * cost.us
                    + bytes.get(c) as f64 / (1u64 << 20) as f64 * cost.us_per_mib
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coalesce_backend::Meter;

    #[test]
    fn the_bundled_table_covers_every_call_and_cites_a_source() {
        let t = CostTable::bundled();
        for call in DriverCall::ALL {
            let c = &t.calls[call.name()];
            assert!(c.us > 0.0 && !c.source.is_empty(), "{}", call.name());
        }
    }

    #[test]
    fn estimates_add_per_call_and_per_mib_costs() {
        let t = CostTable::bundled();
        let mut m = Meter::default();
        m.count_sized(DriverCall::MemAlloc, 2 << 20);
        m.count_sized(DriverCall::MemFree, 0);
        m.add_bytes(DriverCall::MemFree, 2 << 20);
        // The cuMemAlloc+cuMemFree pair at 2 MiB is the H100 anchor: about 85 us.
        let pair = t.estimate_us(&m.calls, &m.bytes);
        assert!((pair - 85.5).abs() < 1.0, "{pair}");
    }

    #[test]
    fn a_table_missing_a_call_is_refused() {
        let e = CostTable::parse(r#"{"calls": {}}"#).unwrap_err();
        assert!(e.starts_with("no cost for mem_alloc"), "{e}");
    }
}
