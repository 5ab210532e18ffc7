//! Path patterns: exact paths, `*` / `{name}` for one segment, a final `*` for the rest.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;

/// The longest pattern accepted, in bytes.
const MAX_PATTERN_LEN: usize = 1024;

/// A path pattern a policy or an exemption applies to.
///
/// - `/accounts/login/` matches that path exactly (the trailing slash matters);
/// - `*` or `{id}` as a segment matches exactly one segment: `/users/{id}/orders`;
/// - a final `*` matches the rest, including nothing: `/health/*` matches `/health`,
///   `/health/` and `/health/live/`;
/// - `*` alone matches every path.
///
/// # Example
///
/// ```
/// use tower_rampart::rate_limit::PathPattern;
///
/// let p: PathPattern = "/api/*".parse().unwrap();
/// assert!(p.matches("/api/v1/orders"));
/// assert!(!p.matches("/apiary"));
/// let p = PathPattern::new("/users/{id}/orders").unwrap();
/// assert!(p.matches("/users/42/orders"));
/// assert!(!p.matches("/users/42/43/orders"));
/// assert!(PathPattern::new("").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
    rest: bool,
    fast: Fast,
}

/// How [`PathPattern::matches`] decides without splitting the path (checked per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fast {
    /// `*`, `/*`: every path.
    All,
    /// Only literal segments: the path equals the pattern.
    Exact,
    /// Literal segments then `/*`: the path is `source[..n]`, or it followed by `/…`.
    Prefix(usize),
    /// A one-segment wildcard: segment by segment.
    Segments,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

impl PathPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    ///
    /// When the pattern is empty, does not start with `/` (other than `*`), is longer
    /// than 1 KiB, or has a `*` or `{` inside a segment.
    pub fn new(pattern: &str) -> Result<Self, ConfigError> {
        let fix = |why: &str| {
            ConfigError::new(format!(
                "rate-limit path pattern {pattern:?} {why}: write an absolute path such as \
                 \"/accounts/login/\", \"/users/{{id}}/orders\" or \"/health/*\" (\"*\" alone \
                 matches everything)"
            ))
        };
        if pattern.is_empty() {
            return Err(fix("is empty"));
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(fix("is longer than 1024 bytes"));
        }
        if pattern == "*" {
            return Ok(Self {
                source: pattern.to_owned(),
                segments: Vec::new(),
                rest: true,
                fast: Fast::All,
            });
        }
        let Some(body) = pattern.strip_prefix('/') else {
            return Err(fix("does not start with `/`"));
        };
        let mut segments = Vec::new();
        let mut rest = false;
        let parts: Vec<&str> = body.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if *part == "*" && last {
                rest = true;
            } else if *part == "*"
                || (part.starts_with('{') && part.ends_with('}') && part.len() > 2)
            {
                segments.push(Segment::Any);
            } else if part.contains(['*', '{', '}']) {
                return Err(fix("has a wildcard inside a segment"));
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        let fast = if segments.contains(&Segment::Any) {
            Fast::Segments
        } else if !rest {
            Fast::Exact
        } else if segments.is_empty() {
            Fast::All
        } else {
            Fast::Prefix(pattern.len() - 2) // without the final "/*"
        };
        Ok(Self {
            source: pattern.to_owned(),
            segments,
            rest,
            fast,
        })
    }

    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self.fast {
            Fast::All => true,
            Fast::Exact => path == self.source,
            Fast::Prefix(n) => path
                .strip_prefix(&self.source[..n])
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            Fast::Segments => self.matches_segments(path),
        }
    }

    fn matches_segments(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return self.rest && self.segments.is_empty();
        };
        let mut parts = body.split('/');
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Any, Some(_)) => {}
                (Segment::Literal(l), Some(p)) if l == p => {}
                _ => return false,
            }
        }
        self.rest || parts.next().is_none()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for PathPattern {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::new(s).unwrap()
    }

    #[test]
    fn exact_paths() {
        assert!(p("/accounts/login/").matches("/accounts/login/"));
        assert!(!p("/accounts/login/").matches("/accounts/login"));
        assert!(!p("/accounts/login/").matches("/accounts/login/x"));
        assert!(p("/").matches("/"));
        assert!(!p("/").matches("/a"));
    }

    #[test]
    fn wildcards() {
        let h = p("/health/*");
        for ok in ["/health", "/health/", "/health/live/", "/health/a/b"] {
            assert!(h.matches(ok), "{ok}");
        }
        assert!(!h.matches("/healthz"));
        assert!(p("*").matches("/anything/at/all"));
        assert!(p("*").matches(""));
        assert!(!p("/a").matches(""));
        assert!(p("/a/*/c").matches("/a/b/c"));
        assert!(!p("/a/*/c").matches("/a/c"));
        assert_eq!(p("/x/{id}").as_str(), "/x/{id}");
        assert_eq!(p("/x/{id}").to_string(), "/x/{id}");
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "api/*", "/a*b", "/a/{x", "/{}/"] {
            let e = PathPattern::new(bad).unwrap_err();
            assert!(e.message().contains("absolute path"), "{bad}: {e}");
        }
        assert!(PathPattern::new(&format!("/{}", "a".repeat(2000))).is_err());
        assert!("/ok".parse::<PathPattern>().is_ok());
    }

    proptest! {
        #[test]
        fn never_panics(pat in "\\PC{0,30}", path in "\\PC{0,30}") {
            if let Ok(p) = PathPattern::new(&pat) {
                let _ = p.matches(&path);
            }
        }

        #[test]
        fn fast_paths_agree_with_segment_matching(pat in "(/([a-c]{0,2}|\\*|\\{x\\}))+|\\*",
                                                  path in "(/[a-c*{}]{0,2}){0,4}|[a-c]{0,3}") {
            if let Ok(p) = PathPattern::new(&pat) {
                prop_assert_eq!(p.matches(&path), p.matches_segments(&path), "{} vs {}", pat, path);
            }
        }

        #[test]
        fn literal_patterns_match_themselves(segs in proptest::collection::vec("[a-z0-9_.-]{0,8}", 1..5)) {
            let path = format!("/{}", segs.join("/"));
            let p = PathPattern::new(&path).unwrap();
            prop_assert!(p.matches(&path));
            let rest = format!("{path}/*");
            let more = format!("{path}/more");
            prop_assert!(PathPattern::new(&rest).unwrap().matches(&more));
        }
    }
}
