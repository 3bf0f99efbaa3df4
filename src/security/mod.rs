//! Security: who a caller is (bearer tokens, SASL PLAIN, client
//! certificates) and what it may do (ACLs), for every listener through one
//! [`Authorizer`]; and TLS for every listener (`tls.rs`).
//!
//! Off by default. On as soon as the config has a `[security]` section:
//! then deny by default, every request needs a principal (credentials, or
//! the configured `anonymous` one) and an ACL entry granting its operation
//! on its resource. The rules are swapped whole on a reload (SIGHUP or the
//! config file changing): the next request sees the new ones, and open
//! streams check again ([`Authorizer::watch`]).

pub mod acl;
pub mod reload;
pub mod tls;

use std::sync::{Arc, RwLock};

use tokio::sync::watch;

pub use acl::{Operation, Resource, Rules, SecurityFile};

use crate::broker::{BrokerError, Caller, Via};

/// The rules in force (`None`: security off), shared by every listener.
#[derive(Debug)]
pub struct Authorizer {
    rules: RwLock<Option<Arc<Rules>>>,
    /// Bumped on every reload, so streams can check again.
    version: watch::Sender<u64>,
}

impl Authorizer {
    pub fn new(rules: Option<Rules>) -> Authorizer {
        Authorizer { rules: RwLock::new(rules.map(Arc::new)), version: watch::Sender::new(0) }
    }

    /// Whether security is on.
    pub fn is_on(&self) -> bool {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    pub fn rules(&self) -> Option<Arc<Rules>> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the rules (a reload); open streams are told.
    pub fn replace(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(rules));
        self.version.send_modify(|v| *v += 1);
    }

    /// Changes on every reload.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The principal of a request: the user of its bearer token (a wrong
    /// token is refused even where anonymous callers are allowed), else
    /// its client certificate's CN, else the anonymous principal; `None`
    /// while security is off. No principal at all: UNAUTHENTICATED.
    pub fn authenticate(&self, token: Option<&[u8]>, cert_cn: Option<&str>) -> Result<Option<String>, BrokerError> {
        let Some(rules) = self.rules() else { return Ok(cert_cn.map(str::to_string)) };
        if let Some(token) = token {
            return rules.user_of_token(token).map(|u| Some(u.to_string())).ok_or_else(|| {
                BrokerError::Unauthenticated(
                    "the token is not any user's (check --token or STRATA_TOKEN against security.users)".into(),
                )
            });
        }
        if let Some(cn) = cert_cn {
            return Ok(Some(cn.to_string()));
        }
        rules.anonymous().map(|a| Some(a.to_string())).ok_or_else(|| {
            BrokerError::Unauthenticated(
                "this broker requires credentials: pass --token (or set STRATA_TOKEN), or a client certificate".into(),
            )
        })
    }

    /// Allows `caller` to do `op` on `resource`, or says who may not do
    /// what (logged at info with the principal).
    pub fn authorize(&self, caller: &Caller, op: Operation, resource: &Resource) -> Result<(), BrokerError> {
        if caller.via == Via::Internal {
            return Ok(());
        }
        let Some(rules) = self.rules() else { return Ok(()) };
        let Some(principal) = caller.principal.as_deref() else {
            return Err(BrokerError::Unauthenticated("no credentials".into()));
        };
        if rules.allows(principal, op, resource) {
            return Ok(());
        }
        tracing::info!(principal, operation = %op, %resource, via = %caller.via, peer = ?caller.peer, "denied");
        Err(BrokerError::PermissionDenied {
            principal: principal.to_string(),
            operation: op,
            resource: resource.clone(),
        })
    }

    /// Whether `caller` may do `op` on `resource` (for filtering lists).
    pub fn allows(&self, caller: &Caller, op: Operation, resource: &Resource) -> bool {
        if caller.via == Via::Internal {
            return true;
        }
        match (self.rules(), caller.principal.as_deref()) {
            (None, _) => true,
            (Some(rules), Some(p)) => rules.allows(p, op, resource),
            (Some(_), None) => false,
        }
    }

    /// Producer ids go to callers that may produce to some topic.
    pub fn authorize_some_topic(&self, caller: &Caller, op: Operation) -> Result<(), BrokerError> {
        let Some(rules) = self.rules() else { return Ok(()) };
        let principal = caller.principal.as_deref().unwrap_or("");
        if caller.via == Via::Internal || rules.allows_some_topic(principal, op) {
            return Ok(());
        }
        Err(BrokerError::PermissionDenied {
            principal: caller.who().to_string(),
            operation: op,
            resource: Resource::Cluster,
        })
    }
}

/// A new random bearer token (32 bytes, hex) and its sha256: what `strata
/// auth hash-token` prints.
pub fn new_token() -> std::io::Result<(String, String)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = acl::token_sha256(&token);
    Ok((token, hash))
}
