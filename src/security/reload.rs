//! Reloading users and ACLs without a restart: on SIGHUP, and when the
//! config file's modification time changes (checked every 2 s). The new
//! `[security]` section applies to the next request; a file that does not
//! parse is refused with a log line and the old rules stay.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::broker::Broker;
use crate::config::ConfigFile;

/// How often the config file's modification time is looked at.
const POLL: Duration = Duration::from_secs(2);

/// Starts the reload task when the broker came from a config file with
/// security on (turning security on or off takes a restart).
pub fn spawn(broker: &Arc<Broker>) {
    let (Some(path), true) = (broker.config().config_file.clone(), broker.authorizer().is_on()) else { return };
    let broker = broker.clone();
    // Registered before the broker says it listens, so a SIGHUP from then
    // on reloads instead of ending the process (its default action).
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        let mut stopping = broker.watch_stopping();
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = modified(&path);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let why = tokio::select! {
                _ = hangup => "SIGHUP",
                _ = tokio::time::sleep(POLL) => {
                    let now = modified(&path);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "the config file changed"
                }
                _ = crate::broker::stopped(&mut stopping) => return,
            };
            match load(&path) {
                Ok(rules) => {
                    tracing::info!(file = %path.display(), why, users = rules.users(), acl_entries = rules.entries(), "reloaded users and ACLs");
                    broker.authorizer().replace(rules);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), why, error = %e, "config not reloaded; the old users and ACLs stay")
                }
            }
        }
    });
}

/// The `[security]` section of the file at `path`, compiled.
pub fn load(path: &std::path::Path) -> Result<super::Rules, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let file = ConfigFile::parse(&text)?;
    let section =
        file.security.ok_or("it has no [security] section any more (turning security off takes a restart)")?;
    super::Rules::compile(&section)
}
