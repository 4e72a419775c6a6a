//! The registry of policies. Adding a policy is one entry here plus its module.

use super::spec::{PolicySpec, SpecError};
use super::{Policy, bfc_classic, buddy, coalesce, cuda_malloc, oracle, tf_bfc, torch};

/// A policy the CLI, the pool and the C ABI can build by name.
#[derive(Debug)]
pub struct PolicyInfo {
    pub name: &'static str,
    /// One line for `--help` and reports.
    pub summary: &'static str,
    /// `(key, help)` for each option the policy accepts.
    pub options: &'static [(&'static str, &'static str)],
    /// Builds the policy; options were already checked against `options`.
    pub build: fn(&PolicySpec) -> Result<Box<dyn Policy>, SpecError>,
}

/// Every policy, in the order reports list them.
pub static REGISTRY: &[PolicyInfo] = &[
    coalesce::INFO,
    bfc_classic::INFO,
    cuda_malloc::INFO,
    torch::NATIVE_INFO,
    torch::EXPANDABLE_INFO,
    tf_bfc::INFO,
    buddy::INFO,
];

/// Offline policies: they need the whole trace before the first allocation, so [`build`]
/// refuses them with [`SpecError::NeedsTrace`] and front-ends build them from the trace
/// (`oracle::OraclePolicy::new(oracle::plan(&input, &config))`). They are kept out of
/// [`REGISTRY`], every entry of which builds from a spec alone.
pub static OFFLINE: &[PolicyInfo] = &[oracle::INFO];

/// The policy named `name`, online or offline.
pub fn lookup(name: &str) -> Option<&'static PolicyInfo> {
    REGISTRY.iter().chain(OFFLINE).find(|p| p.name == name)
}

/// Builds a policy from its spec, rejecting unknown names and options with an explanation.
pub fn build(spec: &PolicySpec) -> Result<Box<dyn Policy>, SpecError> {
    let info = lookup(&spec.name).ok_or_else(|| SpecError::UnknownPolicy {
        name: spec.name.clone(),
        known: REGISTRY
            .iter()
            .chain(OFFLINE)
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let keys: Vec<&str> = info.options.iter().map(|(k, _)| *k).collect();
    spec.expect_only(&keys)?;
    (info.build)(spec)
}

/// Parses a comma-separated list of specs and checks that each one builds; an offline policy
/// (which front-ends build from the trace) only has its options checked.
pub fn parse_list(text: &str) -> Result<Vec<PolicySpec>, SpecError> {
    let specs = PolicySpec::parse_list(text, |name| lookup(name).is_some())?;
    for spec in &specs {
        match build(spec) {
            Err(SpecError::NeedsTrace { .. }) | Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(specs)
}

/// Whether `name` is an offline policy: one that front-ends build from the whole trace.
pub fn is_offline(name: &str) -> bool {
    OFFLINE.iter().any(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_build_without_options() {
        for (i, p) in REGISTRY.iter().enumerate() {
            assert!(
                REGISTRY[..i].iter().all(|q| q.name != p.name),
                "duplicate {}",
                p.name
            );
            let policy = build(&PolicySpec::named(p.name)).unwrap();
            assert_eq!(policy.name(), p.name);
        }
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let e = build(&PolicySpec::named("nope")).unwrap_err().to_string();
        assert!(
            e.starts_with("unknown policy \"nope\"; known policies: "),
            "{e}"
        );
        assert!(e.contains("bfc-classic"));
        assert!(e.contains("oracle"));
    }

    #[test]
    fn offline_policies_are_found_but_need_a_trace() {
        for p in OFFLINE {
            assert!(REGISTRY.iter().all(|q| q.name != p.name), "{}", p.name);
            assert_eq!(lookup(p.name).map(|q| q.name), Some(p.name));
            let e = build(&PolicySpec::named(p.name)).unwrap_err();
            assert_eq!(
                e,
                SpecError::NeedsTrace {
                    policy: p.name.to_owned()
                }
            );
            assert!(e.to_string().contains("needs the whole trace"), "{e}");
            assert!(is_offline(p.name));
        }
        assert!(REGISTRY.iter().all(|p| !is_offline(p.name)));
    }

    #[test]
    fn lists_accept_offline_policies_but_check_their_options() {
        let specs = parse_list("coalesce,oracle").unwrap();
        assert_eq!(specs[1], PolicySpec::named("oracle"));
        let e = parse_list("oracle:frob:1").unwrap_err();
        assert!(
            matches!(&e, SpecError::UnknownOption { policy, key, .. } if policy == "oracle" && key == "frob"),
            "{e}"
        );
    }
}
