//! The file seam: every file operation the storage engine performs goes
//! through [`FileSystem`] and [`StorageFile`], so tests can inject failed or
//! partial writes, failed fsyncs and a full disk ([`FaultyFs`]).
//!
//! Invariant: nothing else under `storage/` touches `std::fs` directly.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// An open file, shared between the single writer and any number of readers.
/// All I/O is positional (`pread`/`pwrite`), so no cursor is shared.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `position`; returns how many were read.
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `position`.
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// Writes the buffers end to end from `position`. The real file system
    /// does it with `pwritev` (one system call for a whole group commit);
    /// this default writes them one by one, so a simulated file system's
    /// faults apply per buffer.
    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut position: u64) -> io::Result<()> {
        for buf in bufs {
            self.write_all_at(buf, position)?;
            position += buf.len() as u64;
        }
        Ok(())
    }
    /// `fdatasync`: the data written so far survives power loss once this returns Ok.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// The underlying OS file, for memory mapping the indexes; `None` when
    /// there is none (an in-memory file system).
    fn std_file(&self) -> Option<&File>;

    /// `len` bytes at `position` (fewer at the end of the file) as shared
    /// bytes. Callers use it only for bytes that are never cut while the
    /// file is open (see the `mapped` module); the real file system maps them instead
    /// of copying them.
    fn read_shared(&self, position: u64, len: usize) -> io::Result<bytes::Bytes> {
        self.read_up_to(position, len).map(bytes::Bytes::from)
    }

    /// Reads up to `len` bytes at `position` (fewer at the end of the file).
    fn read_up_to(&self, position: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self.read_at(&mut buf[filled..], position + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    /// Reads exactly `buf.len()` bytes at `position` or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut position: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, position) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    position += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Directory-level operations plus opening files.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Opens a file for reading and writing, creating it when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// File names (not paths) in a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// Takes an exclusive lock on `path` (created if missing) for as long as
    /// the returned guard lives, and writes this process's id into it;
    /// `WouldBlock` when another process holds it.
    fn lock_exclusive(&self, path: &Path) -> io::Result<DirLock>;
    /// fsync of a directory, which makes creations, renames and deletions in it durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// The running kernel's boot id, different after every boot; `None`
    /// when unknown. Within one boot, bytes a completed write put in a file
    /// are readable even if the writing process was killed before an fsync
    /// (they are in the page cache or on disk); across a boot, only fsynced
    /// bytes are.
    fn boot_id(&self) -> Option<u128> {
        system_boot_id()
    }

    /// Creates `path` and any missing parents, and fsyncs the parent of
    /// each directory it created, so a power loss cannot forget the chain
    /// (and with it everything later fsynced inside). Nothing is synced for
    /// directories that already existed.
    fn create_dir_all_durable(&self, path: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut at = Some(path);
        while let Some(p) = at.filter(|p| !p.as_os_str().is_empty() && !self.exists(p)) {
            missing.push(p);
            at = p.parent();
        }
        self.create_dir_all(path)?;
        for created in missing.into_iter().rev() {
            let parent = created.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            // Guards against a power loss dropping the new directory's name.
            self.sync_dir(parent)?;
        }
        Ok(())
    }

    /// Reads a whole (small) file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open(path, false)?;
        let mut buf = vec![0; file.len()? as usize];
        file.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// Replaces `path` atomically with `contents`: temp file, fsync, rename,
    /// fsync of the directory. A crash at any point leaves either the old or
    /// the new contents, never a mix.
    fn write_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let file = self.open(&tmp, true)?;
        file.set_len(0)?;
        file.write_all_at(contents, 0)?;
        // Guards against a power loss after the rename exposing an empty file.
        file.sync_data()?;
        drop(file);
        self.rename(&tmp, path)?;
        // Guards against a power loss forgetting the rename itself.
        self.sync_dir(path.parent().unwrap_or(Path::new(".")))
    }
}

/// Replaces a file that is only a hint (its loss costs time, never data):
/// temp file and rename, with no fsync. A crash leaves the old file, the new
/// one, or (after a power loss) possibly a torn one, which its reader must
/// detect (the recovery checkpoint has a CRC) and ignore.
pub fn write_hint(fs: &dyn FileSystem, path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let file = fs.open(&tmp, true)?;
    file.set_len(0)?;
    file.write_all_at(contents, 0)?;
    drop(file);
    fs.rename(&tmp, path)
}

/// `/proc/sys/kernel/random/boot_id` as a number, read once.
pub fn system_boot_id() -> Option<u128> {
    static BOOT_ID: std::sync::OnceLock<Option<u128>> = std::sync::OnceLock::new();
    *BOOT_ID.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
        (hex.len() == 32).then(|| u128::from_str_radix(&hex, 16).ok()).flatten()
    })
}

/// An exclusive lock held until dropped (see [`FileSystem::lock_exclusive`]).
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] Box<dyn fmt::Debug + Send + Sync>);

impl DirLock {
    /// A lock whose release is dropping `guard`.
    pub fn new(guard: impl fmt::Debug + Send + Sync + 'static) -> DirLock {
        DirLock(Box::new(guard))
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl StorageFile for StdFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.0.read_at(buf, position)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.0.write_all_at(buf, position)
    }
    fn write_all_vectored_at(&self, bufs: &[&[u8]], position: u64) -> io::Result<()> {
        vectored::write_all_at(&self.0, bufs, position)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn std_file(&self) -> Option<&File> {
        Some(&self.0)
    }
    fn read_shared(&self, position: u64, len: usize) -> io::Result<bytes::Bytes> {
        mapped::read(&self.0, position, len)
    }
}

/// `pwritev`, which std offers only on nightly (`FileExt::write_vectored_at`).
mod vectored {
    #![allow(unsafe_code)]

    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    /// The most buffers one `pwritev` takes (`IOV_MAX` on Linux).
    const IOV_MAX: usize = 1024;

    /// Writes every buffer end to end from `position`, resuming after
    /// short writes and EINTR.
    pub fn write_all_at(file: &File, bufs: &[&[u8]], mut position: u64) -> io::Result<()> {
        let mut iov: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() })
            .collect();
        let mut first = 0;
        while first < iov.len() {
            let batch = &iov[first..iov.len().min(first + IOV_MAX)];
            let offset = libc::off_t::try_from(position).map_err(|_| io::Error::other("file position out of range"))?;
            // SAFETY: every iovec points into a live borrowed slice of at
            // least iov_len bytes (the unwritten rest of one of `bufs`), and
            // the fd is open for the call.
            let n = unsafe { libc::pwritev(file.as_raw_fd(), batch.as_ptr(), batch.len() as libc::c_int, offset) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
            }
            let mut left = n as usize;
            position += left as u64;
            while left > 0 {
                let v = &mut iov[first];
                if left >= v.iov_len {
                    left -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: advancing within the same slice by fewer
                    // bytes than its remaining length.
                    v.iov_base = unsafe { (v.iov_base as *mut u8).add(left) } as *mut libc::c_void;
                    v.iov_len -= left;
                    left = 0;
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn writes_many_buffers_end_to_end_past_iov_max() {
            let dir = tempfile::tempdir().unwrap();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("f"))
                .unwrap();
            let parts: Vec<Vec<u8>> = (0..2500u32).map(|i| vec![(i % 251) as u8; (i % 7) as usize]).collect();
            let bufs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
            write_all_at(&file, &bufs, 3).unwrap();
            let mut expected = vec![0u8; 3];
            expected.extend(parts.concat());
            assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), expected);
        }
    }
}

/// Reads by memory mapping: a large read costs one copy (into the gRPC
/// encode buffer) instead of two (page cache -> buffer by `pread`, then
/// buffer -> encode buffer), and no zeroing of a fresh buffer. The mapping
/// lives as long as the returned bytes, which is until the response is
/// encoded, so it does not add the file's pages to the broker's RSS for long.
///
/// Safety argument: a mapping of a file that shrinks under it raises SIGBUS
/// on access (and so would a page that fails to read from disk; that case
/// is checked by populating the mapping with MADV_POPULATE_READ first). The storage engine only maps readable bytes of a segment, and
/// it never cuts readable bytes while the broker runs: a failed write or
/// fsync cuts only bytes no reader could see, recovery cuts before any
/// reader exists, and retention unlinks whole files (a mapping outlives the
/// unlink). Editing segment files under a running broker is unsupported.
mod mapped {
    #![allow(unsafe_code)]

    use std::fs::File;
    use std::io;

    use bytes::Bytes;

    /// Reads below this size are copied with `pread`: the mapping's setup
    /// and teardown (mmap, page table entries, munmap) would cost more.
    use crate::config::MAPPED_READ_BYTES_MIN as MAP_MIN;

    pub fn read(file: &File, position: u64, len: usize) -> io::Result<Bytes> {
        let file_len = file.metadata()?.len();
        let len = (file_len.saturating_sub(position)).min(len as u64) as usize;
        if len >= MAP_MIN {
            if let Some(bytes) = map(file, position, len) {
                return Ok(bytes);
            }
        }
        let mut buf = vec![0u8; len];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, position)?;
        Ok(Bytes::from(buf))
    }

    /// The range as a populated mapping, or None to read it with pread.
    fn map(file: &File, position: u64, len: usize) -> Option<Bytes> {
        let page = 4096u64;
        let start = position - position % page;
        let skip = (position - start) as usize;
        // SAFETY: the range is inside the file (checked by the caller) and,
        // by the argument in the module docs, is never cut while mapped.
        let map = unsafe { memmap2::MmapOptions::new().offset(start).len(skip + len).map(file) }.ok()?;
        // Reads every page in now, so the encode's copy takes no page fault
        // per 64 KiB, and, unlike MAP_POPULATE, reports a failed read (a
        // media error) as an error instead of a SIGBUS on first touch: we
        // then fall back to pread, which returns it as an I/O error.
        map.advise(memmap2::Advice::PopulateRead).ok()?;
        Some(Bytes::from_owner(map).slice(skip..))
    }
}

impl FileSystem for StdFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn lock_exclusive(&self, path: &Path) -> io::Result<DirLock> {
        use std::io::Write;
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        // flock: released by the kernel when the process ends, however it ends.
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
            std::fs::TryLockError::Error(e) => e,
        })?;
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(DirLock::new(file))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// Which fault [`FaultyFs`] injects into the next matching operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every `sync_data` fails with EIO.
    SyncFails,
    /// Every write fails with EIO before writing anything.
    WriteFails,
    /// Every write stores only its first half, then fails with EIO.
    PartialWrite,
    /// Every write fails with ENOSPC (the disk is full).
    DiskFull,
}

/// Shared switchboard for injected faults; clone it to control a [`FaultyFs`].
#[derive(Debug, Default, Clone)]
pub struct FaultSwitch {
    /// 0 = none, else `Fault as u64 + 1`.
    active: Arc<AtomicU64>,
    /// Set once any fault has fired, so tests can check the path was exercised.
    fired: Arc<AtomicBool>,
    /// Data writes still let through before a write fault applies, to fail
    /// the second write of an append that takes two.
    writes_to_pass: Arc<AtomicU64>,
    /// Milliseconds every `.log` fsync takes at least (a slow disk), so a
    /// test can act while one runs.
    sync_delay_ms: Arc<AtomicU64>,
}

impl FaultSwitch {
    pub fn set(&self, fault: Option<Fault>) {
        let code = match fault {
            None => 0,
            Some(Fault::SyncFails) => 1,
            Some(Fault::WriteFails) => 2,
            Some(Fault::PartialWrite) => 3,
            Some(Fault::DiskFull) => 4,
        };
        self.active.store(code, Ordering::SeqCst);
    }
    /// Like [`FaultSwitch::set`], for a write fault that lets the next
    /// `writes` data writes succeed first.
    pub fn set_after_writes(&self, fault: Fault, writes: u64) {
        self.writes_to_pass.store(writes, Ordering::SeqCst);
        self.set(Some(fault));
    }
    /// Makes every later `.log` fsync take at least `delay`.
    pub fn delay_syncs(&self, delay: std::time::Duration) {
        self.sync_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }
    /// Whether this data write goes through despite a write fault.
    fn passes_write(&self) -> bool {
        self.writes_to_pass.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
    pub fn get(&self) -> Option<Fault> {
        match self.active.load(Ordering::SeqCst) {
            1 => Some(Fault::SyncFails),
            2 => Some(Fault::WriteFails),
            3 => Some(Fault::PartialWrite),
            4 => Some(Fault::DiskFull),
            _ => None,
        }
    }
    /// Whether a fault has been injected since the switch was made.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
    fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
    }
}

/// A [`FileSystem`] over the real one that injects the fault set on its
/// [`FaultSwitch`] into `.log` file writes and syncs (the data path), and
/// records the order of operations (writes and reads of `.log` files, syncs
/// of every file, creations, directory syncs) for crash-ordering tests.
#[derive(Debug, Default, Clone)]
pub struct FaultyFs {
    pub switch: FaultSwitch,
    /// `create <file>`, `write <file>`, `read <file>@<position>`, `sync <file>`,
    /// `sync_dir <dir>`, in order.
    pub ops: Arc<std::sync::Mutex<Vec<String>>>,
    /// Simulated reboots since creation: each changes [`FileSystem::boot_id`].
    reboots: Arc<AtomicU64>,
}

impl FaultyFs {
    /// Makes later opens see a new boot, as after a power loss: recovery
    /// then trusts only what was fsynced. (Tests that model the loss of
    /// unsynced bytes cut or corrupt the files themselves.)
    pub fn reboot(&self) {
        self.reboots.fetch_add(1, Ordering::SeqCst);
    }

    fn record(&self, op: &str, path: &Path) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{op} {}", path.display()));
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn StorageFile>,
    fs: FaultyFs,
    path: PathBuf,
}

impl FaultyFile {
    fn is_data(&self) -> bool {
        self.path.extension().is_some_and(|e| e == "log")
    }
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        if self.is_data() {
            self.fs.record("read", &self.path.with_extension(format!("log@{position}+{}", buf.len())));
        }
        self.inner.read_at(buf, position)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        if self.is_data() {
            self.fs.record("write", &self.path);
        }
        self.faulty_write(buf, position)
    }
    /// Recorded as one `writev` op; a write fault applies per buffer, as
    /// to that many writes.
    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut position: u64) -> io::Result<()> {
        if self.is_data() {
            self.fs.record("writev", &self.path);
        }
        for buf in bufs {
            self.faulty_write(buf, position)?;
            position += buf.len() as u64;
        }
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.record("sync", &self.path);
        if self.is_data() && self.fs.switch.get() == Some(Fault::SyncFails) {
            self.fs.switch.fire();
            return Err(io::Error::from_raw_os_error(5));
        }
        let delay = self.fs.switch.sync_delay_ms.load(Ordering::SeqCst);
        if self.is_data() && delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn std_file(&self) -> Option<&File> {
        self.inner.std_file()
    }
    fn read_shared(&self, position: u64, len: usize) -> io::Result<bytes::Bytes> {
        if self.is_data() {
            self.fs.record("read", &self.path.with_extension(format!("log@{position}+{len}")));
        }
        self.inner.read_shared(position, len)
    }
}

impl FaultyFile {
    /// A data write with the switch's write fault applied.
    fn faulty_write(&self, buf: &[u8], position: u64) -> io::Result<()> {
        if self.is_data() {
            let fault = self.fs.switch.get().filter(|_| !self.fs.switch.passes_write());
            match fault {
                Some(Fault::WriteFails) => {
                    self.fs.switch.fire();
                    return Err(io::Error::from_raw_os_error(5));
                }
                Some(Fault::DiskFull) => {
                    self.fs.switch.fire();
                    return Err(io::Error::from_raw_os_error(28));
                }
                Some(Fault::PartialWrite) => {
                    self.fs.switch.fire();
                    self.inner.write_all_at(&buf[..buf.len() / 2], position)?;
                    return Err(io::Error::from_raw_os_error(5));
                }
                _ => {}
            }
        }
        self.inner.write_all_at(buf, position)
    }
}

impl FileSystem for FaultyFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        if create && !path.exists() {
            self.record("create", path);
        }
        let inner = StdFs.open(path, create)?;
        Ok(Arc::new(FaultyFile { inner, fs: self.clone(), path: path.to_path_buf() }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        StdFs.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }
    fn exists(&self, path: &Path) -> bool {
        StdFs.exists(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        StdFs.is_dir(path)
    }
    fn lock_exclusive(&self, path: &Path) -> io::Result<DirLock> {
        StdFs.lock_exclusive(path)
    }
    fn boot_id(&self) -> Option<u128> {
        system_boot_id().map(|b| b ^ self.reboots.load(Ordering::SeqCst) as u128)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.record("sync_dir", path);
        StdFs.sync_dir(path)
    }
}
