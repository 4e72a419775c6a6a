//! Policy specifications: a name plus options, in PyTorch's `PYTORCH_CUDA_ALLOC_CONF` syntax.
//!
//! ```text
//! torch-native:max_split_size_mb:512,roundup_power2_divisions:[256:1,>:8]
//! ^ name       ^ key             ^ value
//! ```
//!
//! A list of specs is comma-separated too (`--policy coalesce,torch-native:max_split_size_mb:512`):
//! a comma-separated piece that starts with a known policy name begins a new spec, any other
//! piece continues the options of the spec before it. Commas inside `[...]` never split.

use std::fmt;

/// One policy with its options, as the user wrote them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub name: String,
    /// `(key, value)` in the order given.
    pub options: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown policy {name:?}; known policies: {known}")]
    UnknownPolicy { name: String, known: String },
    #[error("policy {policy}: option {piece:?} is not of the form key:value")]
    Malformed { policy: String, piece: String },
    #[error("policy {policy}: unknown option {key:?}; its options are: {known}")]
    UnknownOption {
        policy: String,
        key: String,
        known: String,
    },
    #[error("policy {policy}: option {key}: {problem}")]
    BadValue {
        policy: String,
        key: String,
        problem: String,
    },
    #[error(
        "policy {policy} is offline: it needs the whole trace first, so it cannot be built from a spec alone (front-ends build it from the trace)"
    )]
    NeedsTrace { policy: String },
    #[error("empty policy list")]
    Empty,
}

impl PolicySpec {
    /// A spec with no options.
    pub fn named(name: &str) -> Self {
        PolicySpec {
            name: name.to_owned(),
            options: vec![],
        }
    }

    /// Parses one spec: `name` or `name:key:value,key:value`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let text = text.trim();
        let (name, rest) = text.split_once(':').unwrap_or((text, ""));
        let mut spec = PolicySpec::named(name.trim());
        for piece in split_top_level(rest) {
            spec.push_option(piece)?;
        }
        Ok(spec)
    }

    /// Parses a comma-separated list of specs; `is_policy` tells policy names apart from
    /// option keys.
    pub fn parse_list(
        text: &str,
        is_policy: impl Fn(&str) -> bool,
    ) -> Result<Vec<Self>, SpecError> {
        let mut specs: Vec<PolicySpec> = vec![];
        for piece in split_top_level(text) {
            let head = piece.split(':').next().unwrap_or("").trim();
            match specs.last_mut() {
                Some(last) if !is_policy(head) => last.push_option(piece)?,
                _ => specs.push(PolicySpec::parse(piece)?),
            }
        }
        if specs.is_empty() {
            return Err(SpecError::Empty);
        }
        Ok(specs)
    }

    fn push_option(&mut self, piece: &str) -> Result<(), SpecError> {
        let piece = piece.trim();
        if piece.is_empty() {
            return Ok(());
        }
        match piece.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                self.options
                    .push((k.trim().to_owned(), v.trim().to_owned()));
                Ok(())
            }
            _ => Err(SpecError::Malformed {
                policy: self.name.clone(),
                piece: piece.to_owned(),
            }),
        }
    }

    /// The value given for `key`, if any (the last one wins, as in PyTorch).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Fails on any option not in `known`.
    pub fn expect_only(&self, known: &[&str]) -> Result<(), SpecError> {
        match self
            .options
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((key, _)) => Err(SpecError::UnknownOption {
                policy: self.name.clone(),
                key: key.clone(),
                known: if known.is_empty() {
                    "(none)".into()
                } else {
                    known.join(", ")
                },
            }),
        }
    }

    /// Parses option `key` with `parse`, or returns `default` when absent.
    pub fn parse_option<T>(
        &self,
        key: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, SpecError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse(v).map_err(|problem| SpecError::BadValue {
                policy: self.name.clone(),
                key: key.to_owned(),
                problem,
            }),
        }
    }

    pub fn bad_value(&self, key: &str, problem: impl Into<String>) -> SpecError {
        SpecError::BadValue {
            policy: self.name.clone(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for PolicySpec {
    /// The spec as it would be written on the command line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for (i, (k, v)) in self.options.iter().enumerate() {
            write!(f, "{}{k}:{v}", if i == 0 { ':' } else { ',' })?;
        }
        Ok(())
    }
}

/// Splits on commas that are not inside `[...]`.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut pieces, mut depth, mut start) = (vec![], 0i32, 0);
    for (i, ch) in text.char_indices() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth <= 0 => {
                pieces.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_policy(s: &str) -> bool {
        ["torch-native", "coalesce", "bfc-classic"].contains(&s)
    }

    #[test]
    fn parses_pytorch_syntax() {
        let s = PolicySpec::parse(
            "torch-native:max_split_size_mb:512,roundup_power2_divisions:[256:1,512:2,>:8]",
        )
        .unwrap();
        assert_eq!(s.name, "torch-native");
        assert_eq!(s.get("max_split_size_mb"), Some("512"));
        assert_eq!(s.get("roundup_power2_divisions"), Some("[256:1,512:2,>:8]"));
        assert_eq!(
            s.to_string(),
            "torch-native:max_split_size_mb:512,roundup_power2_divisions:[256:1,512:2,>:8]"
        );
    }

    #[test]
    fn lists_split_at_policy_names_only() {
        let v = PolicySpec::parse_list("coalesce,torch-native:max_split_size_mb:512,garbage_collection_threshold:0.8,bfc-classic", is_policy).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].options.len(), 2);
        assert_eq!(v[2], PolicySpec::named("bfc-classic"));
        assert_eq!(
            PolicySpec::parse_list(" , ", is_policy),
            Err(SpecError::Empty)
        );
    }

    #[test]
    fn malformed_and_unknown_options_are_explained() {
        let e = PolicySpec::parse("torch-native:max_split_size_mb").unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy torch-native: option \"max_split_size_mb\" is not of the form key:value"
        );
        let s = PolicySpec::parse("bfc-classic:frob:1").unwrap();
        assert_eq!(
            s.expect_only(&["a", "b"]).unwrap_err().to_string(),
            "policy bfc-classic: unknown option \"frob\"; its options are: a, b"
        );
        let n: Result<u64, _> = s.parse_option("frob", 0, |v| {
            v.parse::<u64>()
                .map_err(|e| e.to_string())
                .and_then(|x| if x > 0 { Err("too big".into()) } else { Ok(x) })
        });
        assert_eq!(
            n.unwrap_err().to_string(),
            "policy bfc-classic: option frob: too big"
        );
    }
}
