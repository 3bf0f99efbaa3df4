//! Users and ACLs as the `[security]` section gives them, compiled into the
//! matcher every listener asks ([`Rules::allows`]): pure, no I/O.
//!
//! - A principal is a user name (bearer token / SASL PLAIN), a client
//!   certificate's subject CN, or the `anonymous` principal when the config
//!   names one. ACL entries for `"*"` apply to every principal.
//! - Operations: `produce`, `consume` (topics), `group` (join, commit, read
//!   offsets of groups), `admin` (create, delete, alter topics; reset and
//!   delete groups; alert rules), `describe`, and `all`. As in Kafka, any
//!   operation granted on a resource lets the principal describe it.
//! - Deny by default: nothing is allowed that no entry grants.
//! - Compiled: per principal and operation one exact-name set plus one
//!   `RegexSet` of the globs, so a check is two hash lookups and one
//!   automaton run whatever the number of entries (1,000 rules: one check
//!   per request, never per record).

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use sha2::Digest;

/// What a request does to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Produce,
    Consume,
    Group,
    Admin,
    Describe,
}

impl Operation {
    pub const ALL: [Operation; 5] =
        [Operation::Produce, Operation::Consume, Operation::Group, Operation::Admin, Operation::Describe];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Consume => "consume",
            Operation::Group => "group",
            Operation::Admin => "admin",
            Operation::Describe => "describe",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a request acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Topic(String),
    Group(String),
    /// The broker as a whole (metrics, producer ids): granted by an entry
    /// over every topic (`topics = ["*"]`) for the operation.
    Cluster,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Topic(t) => write!(f, "topic {t:?}"),
            Resource::Group(g) => write!(f, "group {g:?}"),
            Resource::Cluster => f.write_str("the cluster"),
        }
    }
}

/// `[security]` as written in the TOML file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecurityFile {
    /// The principal of requests without credentials; `"none"` (the
    /// default) refuses them.
    #[serde(default)]
    pub anonymous: Option<String>,
    #[serde(default)]
    pub users: Vec<UserEntry>,
    #[serde(default)]
    pub acl: Vec<AclEntry>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    /// Hex sha256 of the user's bearer token.
    pub token_sha256: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    pub principal: String,
    pub operations: Vec<String>,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Names matched by exact names and globs, compiled.
#[derive(Debug, Clone, Default)]
struct Matcher {
    all: bool,
    exact: HashSet<String>,
    globs: Vec<String>,
    set: Option<regex::RegexSet>,
}

impl Matcher {
    fn add(&mut self, pattern: &str) {
        if pattern == "*" {
            self.all = true;
        } else if pattern.contains(['*', '?']) {
            self.globs.push(pattern.to_string());
        } else {
            self.exact.insert(pattern.to_string());
        }
    }

    fn compile(&mut self) -> Result<(), String> {
        if !self.globs.is_empty() {
            let regexes = self.globs.iter().map(|g| glob_regex(g));
            self.set = Some(regex::RegexSet::new(regexes).map_err(|e| format!("cannot compile the ACL globs: {e}"))?);
        }
        Ok(())
    }

    fn matches(&self, name: &str) -> bool {
        self.all || self.exact.contains(name) || self.set.as_ref().is_some_and(|s| s.is_match(name))
    }

    fn is_empty(&self) -> bool {
        !self.all && self.exact.is_empty() && self.globs.is_empty()
    }
}

/// The regex of a glob with `names::glob_match`'s meaning: `*` any run of
/// characters, `?` one.
fn glob_regex(glob: &str) -> String {
    let mut re = String::from("^");
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    re
}

/// One principal's grants: per operation, the topics and groups.
#[derive(Debug, Clone, Default)]
struct Grants {
    topics: [Matcher; 5],
    groups: [Matcher; 5],
}

impl Grants {
    fn compile(&mut self) -> Result<(), String> {
        self.topics.iter_mut().chain(self.groups.iter_mut()).try_for_each(Matcher::compile)
    }

    fn allows(&self, op: Operation, resource: &Resource) -> bool {
        let ops: &[Operation] = if op == Operation::Describe { &Operation::ALL } else { &[op] };
        ops.iter().any(|&o| match resource {
            Resource::Topic(t) => self.topics[o.index()].matches(t),
            Resource::Group(g) => self.groups[o.index()].matches(g),
            Resource::Cluster => self.topics[o.index()].all,
        })
    }
}

/// Users and ACLs, compiled. Built once per (re)load.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// sha256 of a token -> user name.
    users: HashMap<[u8; 32], String>,
    anonymous: Option<String>,
    by_principal: HashMap<String, Grants>,
    everyone: Grants,
    entries: usize,
}

impl Rules {
    /// Checks and compiles the `[security]` section; the error names the
    /// entry and field at fault.
    pub fn compile(file: &SecurityFile) -> Result<Rules, String> {
        let mut rules = Rules {
            anonymous: file.anonymous.clone().filter(|a| a != "none" && !a.is_empty()),
            entries: file.acl.len(),
            ..Rules::default()
        };
        for (i, u) in file.users.iter().enumerate() {
            if u.name.is_empty() || u.name == "*" {
                return Err(format!("security.users[{i}].name: a user needs a name (not empty, not \"*\")"));
            }
            let hash = parse_sha256(&u.token_sha256).ok_or_else(|| {
                format!(
                    "security.users[{i}] ({}).token_sha256: expected 64 hex digits (strata auth hash-token prints them)",
                    u.name
                )
            })?;
            if rules.users.insert(hash, u.name.clone()).is_some() {
                return Err(format!("security.users[{i}] ({}): the same token as another user", u.name));
            }
        }
        for (i, e) in file.acl.iter().enumerate() {
            if e.principal.is_empty() {
                return Err(format!("security.acl[{i}].principal: empty (a user name, a certificate CN, or \"*\")"));
            }
            if e.topics.is_empty() && e.groups.is_empty() {
                return Err(format!("security.acl[{i}]: names no topics and no groups"));
            }
            let mut ops = Vec::new();
            for o in &e.operations {
                match o.as_str() {
                    "all" => ops.extend(Operation::ALL),
                    other => ops.push(
                        Operation::ALL.into_iter().find(|op| op.name() == other).ok_or_else(|| {
                            format!(
                                "security.acl[{i}].operations: unknown operation {other:?} (produce, consume, group, admin, describe, all)"
                            )
                        })?,
                    ),
                }
            }
            if ops.is_empty() {
                return Err(format!("security.acl[{i}].operations: empty"));
            }
            let grants = if e.principal == "*" {
                &mut rules.everyone
            } else {
                rules.by_principal.entry(e.principal.clone()).or_default()
            };
            for op in ops {
                for t in &e.topics {
                    grants.topics[op.index()].add(t);
                }
                for g in &e.groups {
                    grants.groups[op.index()].add(g);
                }
            }
        }
        rules.everyone.compile()?;
        for g in rules.by_principal.values_mut() {
            g.compile()?;
        }
        Ok(rules)
    }

    /// The user a bearer token (or SASL PLAIN password) belongs to.
    pub fn user_of_token(&self, token: &[u8]) -> Option<&str> {
        let hash: [u8; 32] = sha2::Sha256::digest(token).into();
        self.users.get(&hash).map(String::as_str)
    }

    /// SASL PLAIN: the user, if `password` is its token.
    pub fn check_password(&self, user: &str, password: &[u8]) -> bool {
        self.user_of_token(password) == Some(user)
    }

    /// The principal of a request without credentials, if any is allowed.
    pub fn anonymous(&self) -> Option<&str> {
        self.anonymous.as_deref()
    }

    /// Whether `principal` may do `op` on `resource`.
    pub fn allows(&self, principal: &str, op: Operation, resource: &Resource) -> bool {
        self.everyone.allows(op, resource) || self.by_principal.get(principal).is_some_and(|g| g.allows(op, resource))
    }

    /// Whether `principal` has `op` on some topic (producer ids are handed
    /// to principals that may produce somewhere).
    pub fn allows_some_topic(&self, principal: &str, op: Operation) -> bool {
        let some = |g: &Grants| !g.topics[op.index()].is_empty();
        some(&self.everyone) || self.by_principal.get(principal).is_some_and(some)
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn entries(&self) -> usize {
        self.entries
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex sha256 of `token` (what `token_sha256` holds).
pub fn token_sha256(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(toml_text: &str) -> SecurityFile {
        toml::from_str(toml_text).unwrap()
    }

    fn topic(t: &str) -> Resource {
        Resource::Topic(t.into())
    }

    #[test]
    fn grants_follow_principal_operation_and_glob_and_deny_the_rest() {
        let rules = Rules::compile(&file(&format!(
            r#"
            [[users]]
            name = "payments-svc"
            token_sha256 = "{}"
            [[acl]]
            principal = "payments-svc"
            operations = ["produce"]
            topics = ["payments.*", "audit"]
            [[acl]]
            principal = "auditor"
            operations = ["consume", "group"]
            topics = ["audit"]
            groups = ["audit-*"]
            [[acl]]
            principal = "*"
            operations = ["describe"]
            topics = ["public.?"]
            [[acl]]
            principal = "ops"
            operations = ["all"]
            topics = ["*"]
            groups = ["*"]
            "#,
            token_sha256("s3cret")
        )))
        .unwrap();
        assert_eq!(rules.user_of_token(b"s3cret"), Some("payments-svc"));
        assert_eq!(rules.user_of_token(b"wrong"), None);
        assert!(rules.check_password("payments-svc", b"s3cret") && !rules.check_password("auditor", b"s3cret"));
        assert!(rules.allows("payments-svc", Operation::Produce, &topic("payments.eu")));
        assert!(rules.allows("payments-svc", Operation::Produce, &topic("audit")));
        assert!(!rules.allows("payments-svc", Operation::Produce, &topic("payments")));
        assert!(!rules.allows("payments-svc", Operation::Consume, &topic("payments.eu")));
        assert!(rules.allows("payments-svc", Operation::Describe, &topic("payments.eu")), "produce implies describe");
        assert!(!rules.allows("payments-svc", Operation::Admin, &topic("payments.eu")));
        assert!(rules.allows("auditor", Operation::Group, &Resource::Group("audit-1".into())));
        assert!(!rules.allows("auditor", Operation::Group, &Resource::Group("billing".into())));
        assert!(!rules.allows("auditor", Operation::Admin, &Resource::Group("audit-1".into())));
        assert!(rules.allows("anyone", Operation::Describe, &topic("public.a")));
        assert!(!rules.allows("anyone", Operation::Describe, &topic("public.ab")));
        assert!(rules.allows("ops", Operation::Admin, &Resource::Cluster));
        assert!(!rules.allows("payments-svc", Operation::Describe, &Resource::Cluster));
        assert!(rules.allows_some_topic("payments-svc", Operation::Produce));
        assert!(!rules.allows_some_topic("auditor", Operation::Produce));
        assert_eq!(rules.anonymous(), None);
    }

    #[test]
    fn bad_entries_are_refused_naming_the_field() {
        let cases = [
            ("[[acl]]\nprincipal = \"a\"\noperations = [\"write\"]\ntopics = [\"t\"]", "operations"),
            ("[[acl]]\nprincipal = \"a\"\noperations = [\"produce\"]", "no topics"),
            ("[[acl]]\nprincipal = \"\"\noperations = [\"produce\"]\ntopics = [\"t\"]", "principal"),
            ("[[users]]\nname = \"a\"\ntoken_sha256 = \"abc\"", "token_sha256"),
        ];
        for (text, field) in cases {
            let e = Rules::compile(&file(text)).unwrap_err();
            assert!(e.contains(field), "{text}: {e}");
        }
        assert!(toml::from_str::<SecurityFile>("bogus = 1").is_err());
    }

    #[test]
    fn a_thousand_rules_compile_into_one_matcher_per_principal() {
        let mut f = SecurityFile::default();
        for i in 0..1000 {
            f.acl.push(AclEntry {
                principal: format!("svc-{}", i % 10),
                operations: vec!["produce".into()],
                topics: vec![format!("team{i}.*"), format!("exact-{i}")],
                groups: Vec::new(),
            });
        }
        let rules = Rules::compile(&f).unwrap();
        assert_eq!(rules.entries(), 1000);
        assert!(rules.allows("svc-3", Operation::Produce, &topic("team993.x")));
        assert!(rules.allows("svc-3", Operation::Produce, &topic("exact-3")));
        assert!(!rules.allows("svc-4", Operation::Produce, &topic("team993.x")));
        assert_eq!(rules.anonymous(), None);
        let anon = Rules::compile(&SecurityFile { anonymous: Some("guest".into()), ..Default::default() }).unwrap();
        assert_eq!(anon.anonymous(), Some("guest"));
    }
}
