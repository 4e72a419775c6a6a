//! An independent check of a plan: no two live blocks overlap at any op, and the plan's count
//! of mapped granules is the number of granules touched by live blocks after every op.

use super::{OracleInput, Plan};
use std::collections::{BTreeMap, HashMap};

/// Verifies `plan` against `input`. Shares no code with the planner but [`Plan::granules_of`].
pub fn check_plan(input: &OracleInput, plan: &Plan) -> Result<(), String> {
    let n = input.blocks.len();
    if plan.offsets.len() != n || plan.sizes.len() != n || plan.mapped.len() != input.ops {
        return Err("plan does not match the input's size".into());
    }
    for (i, b) in input.blocks.iter().enumerate() {
        let (off, size) = (plan.offsets[i], plan.sizes[i]);
        if size < b.size.max(1) || off % plan.align != 0 || off + size > plan.extent {
            return Err(format!(
                "block {i}: {size} bytes at {off} (asked {}, align {}, extent {})",
                b.size, plan.align, plan.extent
            ));
        }
    }
    let mut at: Vec<Vec<(usize, bool)>> = vec![Vec::new(); input.ops];
    for (i, b) in input.blocks.iter().enumerate() {
        at[b.alloc].push((i, true));
        if let Some(f) = b.free {
            at[f].push((i, false));
        }
    }
    // Live blocks by start: start -> (end, block).
    let mut live: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    let mut touching: HashMap<u64, u32> = HashMap::new();
    for (t, evs) in at.iter().enumerate() {
        for &(i, alloc) in evs {
            let (start, end) = (plan.offsets[i], plan.offsets[i] + plan.sizes[i]);
            if alloc {
                if let Some((_, &(e, j))) = live.range(..=start).next_back()
                    && e > start
                {
                    return Err(format!("op {t}: block {i} overlaps live block {j}"));
                }
                if let Some((&s, &(_, j))) = live.range(start..).next()
                    && s < end
                {
                    return Err(format!("op {t}: block {i} overlaps live block {j}"));
                }
                live.insert(start, (end, i));
                for g in plan.granules_of(i) {
                    *touching.entry(g).or_default() += 1;
                }
            } else {
                live.remove(&start);
                for g in plan.granules_of(i) {
                    let c = touching.get_mut(&g).expect("touched by a live block");
                    *c -= 1;
                    if *c == 0 {
                        touching.remove(&g);
                    }
                }
            }
        }
        if touching.len() != plan.mapped[t] as usize {
            return Err(format!(
                "op {t}: {} granules touched by live blocks, the plan says {}",
                touching.len(),
                plan.mapped[t]
            ));
        }
    }
    Ok(())
}
