//! Producer id allocation for idempotent produce. Ids are handed out from
//! blocks whose end is persisted before any id in the
//! block is used, so an id is never reused, also across crashes. The file
//! is `DATA/__producer_ids` (see `data_dir.rs`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::storage::fs::FileSystem;

use crate::config::PRODUCER_ID_BLOCK as BLOCK;

#[derive(Debug)]
pub struct ProducerIds {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    next: i64,
    /// Ids below this are reserved on disk.
    reserved_end: i64,
}

impl ProducerIds {
    pub fn open(fs: Arc<dyn FileSystem>, path: PathBuf) -> std::io::Result<ProducerIds> {
        let start = if fs.exists(&path) {
            let text = String::from_utf8_lossy(&fs.read_file(&path)?).trim().to_string();
            text.parse::<i64>().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not a number: {text:?}", path.display()),
                )
            })?
        } else {
            1
        };
        Ok(ProducerIds { fs, path, next: start, reserved_end: start })
    }

    /// Whether `id` may have been handed out: every id of a block reserved
    /// before this start counts, since which of them were used is not kept.
    pub fn issued(&self, id: i64) -> bool {
        (1..self.next).contains(&id)
    }

    pub fn allocate(&mut self) -> std::io::Result<i64> {
        if self.next >= self.reserved_end {
            let end = self.next + BLOCK;
            self.fs.write_atomic(&self.path, end.to_string().as_bytes())?;
            self.reserved_end = end;
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}
