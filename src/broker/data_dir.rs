//! The data directory's own entries, beside the topic directories.
//!
//! A topic lives in `DATA/<topic>/`. Everything else the broker keeps at the
//! top starts with `__`, a prefix topic names may not use (`names.rs`), so
//! no valid topic name collides with an internal file: a topic may be called
//! `producer_ids` or `.deleted-audit-1`.
//!
//! - `__broker.lock`: held (flock) by the running broker, with its pid.
//! - `__producer_ids`: the next block of idempotent producer ids.
//! - `__consumer_offsets/`: committed offsets (an internal log).
//! - `__deleted-<ms>-<topic>/`: a topic being deleted (renamed first, so a
//!   crash never leaves half a topic that would be opened again).
//!
//! Data directories written before this layout (`producer_ids` and
//! `.deleted-<topic>-<ms>` at the top) are upgraded on open.

use std::path::{Path, PathBuf};

use super::topic::{TopicMetadata, METADATA_FILE};
use crate::storage::fs::{DirLock, FileSystem};

pub const LOCK_FILE: &str = "__broker.lock";
pub const PRODUCER_IDS_FILE: &str = "__producer_ids";
pub const DELETED_PREFIX: &str = "__deleted-";
/// The old (pre-`__`) names, read only to upgrade.
const OLD_PRODUCER_IDS_FILE: &str = "producer_ids";
const OLD_DELETED_PREFIX: &str = ".deleted-";

/// Whether a top-level entry is the broker's own, not a topic.
pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

/// Where a topic being deleted is moved first.
pub fn deleted_path(data_dir: &Path, topic: &str, stamp_ms: i64) -> PathBuf {
    data_dir.join(format!("{DELETED_PREFIX}{stamp_ms}-{topic}"))
}

/// Takes the data directory's lock, so a second broker on the same
/// directory stops at once instead of writing under the first one.
pub fn lock(fs: &dyn FileSystem, data_dir: &Path) -> Result<DirLock, String> {
    let path = data_dir.join(LOCK_FILE);
    fs.lock_exclusive(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => {
            let holder = fs.read_file(&path).ok().map(|b| String::from_utf8_lossy(&b).trim().to_string());
            match holder.filter(|h| !h.is_empty()) {
                Some(pid) => format!(
                    "data directory {} is in use by another broker (pid {pid}); stop it first or use another --data-dir",
                    data_dir.display()
                ),
                None => format!("data directory {} is in use by another broker", data_dir.display()),
            }
        }
        _ => format!("cannot lock the data directory {}: {e}", path.display()),
    })
}

/// Finishes deletes interrupted by a crash and moves files of the old
/// layout to their `__` names. Returns the topic directories to open.
pub fn prepare(fs: &dyn FileSystem, data_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let old_ids = data_dir.join(OLD_PRODUCER_IDS_FILE);
    let new_ids = data_dir.join(PRODUCER_IDS_FILE);
    if fs.exists(&old_ids) && !fs.is_dir(&old_ids) && !fs.exists(&new_ids) {
        fs.rename(&old_ids, &new_ids)?;
        // Guards against a power loss bringing back the old name beside a
        // new file written later (the old block would be handed out again).
        fs.sync_dir(data_dir)?;
        tracing::info!(from = %old_ids.display(), to = %new_ids.display(), "upgraded the data directory layout");
    }
    let mut topics = Vec::new();
    for name in fs.list_dir(data_dir)? {
        let path = data_dir.join(&name);
        if name.starts_with(DELETED_PREFIX) {
            tracing::info!(dir = %path.display(), "finishing an interrupted topic delete");
            fs.remove_dir_all(&path)?;
            continue;
        }
        if is_internal(&name) || !fs.is_dir(&path) {
            continue;
        }
        let meta = path.join(METADATA_FILE);
        let named = fs.read_file(&meta).ok().and_then(|b| TopicMetadata::parse(&b).ok()).map(|m| m.name);
        match named {
            Some(topic) if topic == name => topics.push(path),
            // A renamed topic directory of the old layout: a delete that
            // was interrupted.
            _ if name.starts_with(OLD_DELETED_PREFIX) && is_old_deleted(&name) => {
                tracing::info!(dir = %path.display(), "finishing an interrupted topic delete (old layout)");
                fs.remove_dir_all(&path)?;
            }
            Some(topic) => {
                tracing::warn!(dir = %path.display(), topic, "skipping a directory whose topic.json names another topic")
            }
            // An unfinished create (its metadata is written last), or not ours.
            None => {}
        }
    }
    Ok(topics)
}

/// `.deleted-<topic>-<ms>`: the old delete marker's shape.
fn is_old_deleted(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(_, ms)| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
}
