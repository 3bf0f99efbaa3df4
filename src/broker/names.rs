//! Topic and group names, and the glob patterns that select topics.

use super::error::BrokerError;

use crate::config::NAME_BYTES_MAX;

/// The name kinds errors say.
fn kind_of(kind: &str) -> &'static str {
    if kind == "group" {
        "group"
    } else {
        "topic"
    }
}

/// Checks a topic or group name: 1..=249 of `[A-Za-z0-9._-]`, not `.` or `..`.
/// Names starting with `__` are reserved unless `internal` is set.
pub fn validate(kind: &str, name: &str, internal: bool) -> Result<(), BrokerError> {
    let bad =
        |why: &str| Err(BrokerError::InvalidName { kind: kind_of(kind), name: name.to_string(), why: why.to_string() });
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return bad("it must be 1 to 249 characters");
    }
    if name == "." || name == ".." {
        return bad("it must not be . or ..");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return bad(&format!("character {c:?} is not one of A-Z a-z 0-9 . _ -"));
    }
    if name.starts_with("__") && !internal {
        return bad("names starting with __ are reserved for internal topics");
    }
    Ok(())
}

/// Glob match: `*` is any run of characters (dots included), `?` is one
/// character. Linear time (no backtracking blow-up on hostile patterns).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert!(glob_match("payments.*", "payments.sent"));
        assert!(glob_match("payments.*", "payments.sent.eu"));
        assert!(!glob_match("payments.*", "payments"));
        assert!(glob_match("*.error", "ach.error"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("policy.updated", "policy.updated"));
    }

    #[test]
    fn names() {
        assert!(validate("topic", "afrh.capacity.low", false).is_ok());
        assert!(validate("topic", "..", false).is_err());
        assert!(validate("topic", "a b", false).is_err());
        assert!(validate("topic", "__internal", false).is_err());
        assert!(validate("topic", "__internal", true).is_ok());
        assert!(validate("topic", &"x".repeat(250), false).is_err());
    }
}
