//! An in-memory file system for crash simulation ([`SimFs`]): it keeps, for
//! every file, what was written and what an fsync made durable, and for
//! every directory, its entries and the entries a directory fsync made
//! durable. [`SimFs::power_loss`] returns the image a power cut would leave
//! (what was made durable, plus, with chaos, a random prefix of what was
//! not, the last write of it possibly torn), [`SimFs::process_crash`] the
//! image a SIGKILL would leave (everything written: the page cache
//! survives). [`SimFs::crash_after`] freezes the file system after the N-th
//! operation that changes something: every later operation fails with EIO
//! and changes nothing, as if the machine had stopped there.
//!
//! Modelled on redb's crash backend and TigerBeetle's simulator: the
//! storage engine runs against it unchanged, through the [`FileSystem`]
//! seam. Indexes get a heap view (there is no OS file to map).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::{DirLock, FileSystem, StorageFile};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A change to a file's bytes not yet made durable.
#[derive(Debug, Clone)]
enum FileOp {
    Write { position: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct FileState {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Applied to `current`, not yet to `durable`, in order.
    pending: Vec<FileOp>,
}

#[derive(Debug, Default)]
struct FileNode {
    state: Mutex<FileState>,
}

#[derive(Debug, Clone)]
enum Node {
    File(Arc<FileNode>),
    Dir(Arc<DirNode>),
}

/// A change to a directory's entries not yet made durable.
#[derive(Debug, Clone)]
struct DirOp {
    name: String,
    /// The entry after the change (`None`: removed).
    node: Option<Node>,
}

#[derive(Debug, Default)]
struct DirState {
    current: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
    pending: Vec<DirOp>,
}

#[derive(Debug, Default)]
struct DirNode {
    state: Mutex<DirState>,
}

/// Shared by every handle of one simulated machine.
#[derive(Debug)]
struct Machine {
    root: Arc<DirNode>,
    /// Operations that changed something, so far.
    ops: AtomicU64,
    /// Freeze after this many operations (u64::MAX: never).
    crash_at: AtomicU64,
    frozen: AtomicBool,
    boot: u128,
    locks: Mutex<Vec<PathBuf>>,
}

/// The simulated file system (see the module docs). Clones share it.
#[derive(Debug, Clone)]
pub struct SimFs {
    machine: Arc<Machine>,
}

impl Default for SimFs {
    fn default() -> Self {
        SimFs::with_root(Arc::new(DirNode::default()), 1)
    }
}

/// How much of what was not made durable a power loss keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Nothing: only fsynced data and fsynced directory entries survive.
    Strict,
    /// A random prefix of each file's and directory's pending changes
    /// survives, the last write of it possibly torn at a 512-byte sector
    /// (the seed picks). Pending changes to different files survive
    /// independently of each other, in any combination.
    Chaos(u64),
}

fn eio() -> io::Error {
    io::Error::other("simulated machine stopped (crash point reached)")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file or directory", path.display()))
}

fn names(path: &Path) -> Vec<String> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

/// The simulations' deterministic random numbers (xorshift64): the same
/// seed gives the same workload, crash image and chaos every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Any seed (0 included) gives a usable generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

impl SimFs {
    fn with_root(root: Arc<DirNode>, boot: u128) -> SimFs {
        SimFs {
            machine: Arc::new(Machine {
                root,
                ops: AtomicU64::new(0),
                crash_at: AtomicU64::new(u64::MAX),
                frozen: AtomicBool::new(false),
                boot,
                locks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Stops the machine after `ops` more operations that change something.
    pub fn crash_after(&self, ops: u64) {
        let now = self.machine.ops.load(Ordering::SeqCst);
        self.machine.crash_at.store(now.saturating_add(ops), Ordering::SeqCst);
    }

    /// Operations that changed something so far (to size crash points).
    pub fn ops(&self) -> u64 {
        self.machine.ops.load(Ordering::SeqCst)
    }

    /// Whether the crash point was reached.
    pub fn is_frozen(&self) -> bool {
        self.machine.frozen.load(Ordering::SeqCst)
    }

    /// Counts one changing operation; Err once the machine has stopped.
    fn tick(&self) -> io::Result<()> {
        if self.is_frozen() {
            return Err(eio());
        }
        let n = self.machine.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if n > self.machine.crash_at.load(Ordering::SeqCst) {
            self.machine.frozen.store(true, Ordering::SeqCst);
            return Err(eio());
        }
        Ok(())
    }

    fn check_running(&self) -> io::Result<()> {
        if self.is_frozen() {
            Err(eio())
        } else {
            Ok(())
        }
    }

    /// The directory at `path`.
    fn dir(&self, path: &Path) -> io::Result<Arc<DirNode>> {
        let mut dir = self.machine.root.clone();
        for name in names(path) {
            let next = match lock(&dir.state).current.get(&name) {
                Some(Node::Dir(d)) => d.clone(),
                _ => return Err(not_found(path)),
            };
            dir = next;
        }
        Ok(dir)
    }

    /// The parent directory of `path` and the last name.
    fn parent(&self, path: &Path) -> io::Result<(Arc<DirNode>, String)> {
        let mut all = names(path);
        let name = all.pop().ok_or_else(|| not_found(path))?;
        let parent: PathBuf = all.iter().collect();
        Ok((self.dir(&parent)?, name))
    }

    fn node(&self, path: &Path) -> Option<Node> {
        let (dir, name) = self.parent(path).ok()?;
        let node = lock(&dir.state).current.get(&name).cloned();
        node
    }

    fn set_entry(dir: &DirNode, name: &str, node: Option<Node>) {
        let mut d = lock(&dir.state);
        match &node {
            Some(n) => d.current.insert(name.to_string(), n.clone()),
            None => d.current.remove(name),
        };
        d.pending.push(DirOp { name: name.to_string(), node });
    }

    /// The image a power loss would leave now: a new machine (another boot)
    /// whose files hold what was made durable, plus what `loss` lets survive.
    pub fn power_loss(&self, loss: Loss) -> SimFs {
        let mut rng = Rng::new(match loss {
            Loss::Strict => 1,
            Loss::Chaos(seed) => seed,
        });
        let root = rebuild_durable(&self.machine.root, loss, &mut rng);
        SimFs::with_root(root, self.machine.boot + 1)
    }

    /// The image a process crash (SIGKILL) would leave: every completed
    /// write survives in the page cache; same boot.
    pub fn process_crash(&self) -> SimFs {
        SimFs::with_root(copy_current(&self.machine.root), self.machine.boot)
    }
}

/// A copy of a directory tree as it is now, everything made durable.
fn copy_current(dir: &DirNode) -> Arc<DirNode> {
    let state = lock(&dir.state);
    let mut entries = BTreeMap::new();
    for (name, node) in &state.current {
        let copy = match node {
            Node::Dir(d) => Node::Dir(copy_current(d)),
            Node::File(f) => {
                let bytes = lock(&f.state).current.clone();
                Node::File(Arc::new(FileNode {
                    state: Mutex::new(FileState { current: bytes.clone(), durable: bytes, pending: vec![] }),
                }))
            }
        };
        entries.insert(name.clone(), copy);
    }
    Arc::new(DirNode { state: Mutex::new(DirState { current: entries.clone(), durable: entries, pending: vec![] }) })
}

/// What of a directory tree survives a power loss.
fn rebuild_durable(dir: &DirNode, loss: Loss, rng: &mut Rng) -> Arc<DirNode> {
    let state = lock(&dir.state);
    let mut names = state.durable.clone();
    if let Loss::Chaos(_) = loss {
        let keep = rng.below(state.pending.len() as u64 + 1) as usize;
        for op in &state.pending[..keep] {
            match &op.node {
                Some(n) => names.insert(op.name.clone(), n.clone()),
                None => names.remove(&op.name),
            };
        }
    }
    let mut entries = BTreeMap::new();
    for (name, node) in names {
        let copy = match node {
            Node::Dir(d) => Node::Dir(rebuild_durable(&d, loss, rng)),
            Node::File(f) => Node::File(Arc::new(FileNode { state: Mutex::new(durable_file(&f, loss, rng)) })),
        };
        entries.insert(name, copy);
    }
    Arc::new(DirNode { state: Mutex::new(DirState { current: entries.clone(), durable: entries, pending: vec![] }) })
}

/// What of a file survives a power loss.
fn durable_file(file: &FileNode, loss: Loss, rng: &mut Rng) -> FileState {
    let state = lock(&file.state);
    let mut bytes = state.durable.clone();
    if let Loss::Chaos(_) = loss {
        let keep = rng.below(state.pending.len() as u64 + 1) as usize;
        for (i, op) in state.pending.iter().take(keep + 1).enumerate() {
            let torn = i == keep;
            match op {
                FileOp::SetLen(len) if !torn => bytes.resize(*len as usize, 0),
                FileOp::Write { position, bytes: data } => {
                    // The op at the cut survives torn: some whole sectors.
                    let n = if torn { (rng.below(data.len() as u64 / 512 + 1) * 512) as usize } else { data.len() };
                    write_into(&mut bytes, *position, &data[..n.min(data.len())]);
                }
                FileOp::SetLen(_) => {}
            }
        }
    }
    FileState { current: bytes.clone(), durable: bytes, pending: vec![] }
}

fn write_into(bytes: &mut Vec<u8>, position: u64, data: &[u8]) {
    let end = position as usize + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[position as usize..end].copy_from_slice(data);
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    node: Arc<FileNode>,
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.fs.check_running()?;
        let state = lock(&self.node.state);
        let start = (position as usize).min(state.current.len());
        let n = buf.len().min(state.current.len() - start);
        buf[..n].copy_from_slice(&state.current[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.fs.tick()?;
        let mut state = lock(&self.node.state);
        write_into(&mut state.current, position, buf);
        state.pending.push(FileOp::Write { position, bytes: buf.to_vec() });
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.tick()?;
        let mut state = lock(&self.node.state);
        state.durable = state.current.clone();
        state.pending.clear();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.tick()?;
        let mut state = lock(&self.node.state);
        state.current.resize(len as usize, 0);
        state.pending.push(FileOp::SetLen(len));
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.fs.check_running()?;
        Ok(lock(&self.node.state).current.len() as u64)
    }
    fn std_file(&self) -> Option<&File> {
        None
    }
}

impl FileSystem for SimFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        self.check_running()?;
        let (dir, name) = self.parent(path)?;
        let existing = lock(&dir.state).current.get(&name).cloned();
        let node = match existing {
            Some(Node::File(f)) => f,
            Some(Node::Dir(_)) => return Err(io::Error::other(format!("{}: is a directory", path.display()))),
            None if create => {
                self.tick()?;
                let f = Arc::new(FileNode::default());
                SimFs::set_entry(&dir, &name, Some(Node::File(f.clone())));
                f
            }
            None => return Err(not_found(path)),
        };
        Ok(Arc::new(SimFile { fs: self.clone(), node }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check_running()?;
        let mut dir = self.machine.root.clone();
        for name in names(path) {
            let existing = lock(&dir.state).current.get(&name).cloned();
            dir = match existing {
                Some(Node::Dir(d)) => d,
                Some(Node::File(_)) => return Err(io::Error::other(format!("{}: not a directory", path.display()))),
                None => {
                    self.tick()?;
                    let d = Arc::new(DirNode::default());
                    SimFs::set_entry(&dir, &name, Some(Node::Dir(d.clone())));
                    d
                }
            };
        }
        Ok(())
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.check_running()?;
        let dir = self.dir(path)?;
        let names = lock(&dir.state).current.keys().cloned().collect();
        Ok(names)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check_running()?;
        let (dir, name) = self.parent(path)?;
        if !matches!(lock(&dir.state).current.get(&name), Some(Node::File(_))) {
            return Err(not_found(path));
        }
        self.tick()?;
        SimFs::set_entry(&dir, &name, None);
        Ok(())
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check_running()?;
        let (dir, name) = self.parent(path)?;
        if !lock(&dir.state).current.contains_key(&name) {
            return Err(not_found(path));
        }
        self.tick()?;
        SimFs::set_entry(&dir, &name, None);
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_running()?;
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        let node = lock(&from_dir.state).current.get(&from_name).cloned().ok_or_else(|| not_found(from))?;
        self.tick()?;
        SimFs::set_entry(&from_dir, &from_name, None);
        SimFs::set_entry(&to_dir, &to_name, Some(node));
        Ok(())
    }
    fn exists(&self, path: &Path) -> bool {
        names(path).is_empty() || self.node(path).is_some()
    }
    fn is_dir(&self, path: &Path) -> bool {
        names(path).is_empty() || matches!(self.node(path), Some(Node::Dir(_)))
    }
    fn lock_exclusive(&self, path: &Path) -> io::Result<DirLock> {
        let mut locks = lock(&self.machine.locks);
        if locks.iter().any(|p| p == path) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        locks.push(path.to_path_buf());
        Ok(DirLock::new(SimLock { machine: self.machine.clone(), path: path.to_path_buf() }))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let dir = self.dir(path)?;
        self.tick()?;
        let mut state = lock(&dir.state);
        state.durable = state.current.clone();
        state.pending.clear();
        Ok(())
    }
    fn boot_id(&self) -> Option<u128> {
        Some(self.machine.boot)
    }
}

/// An in-process lock of [`SimFs`], released when dropped.
#[derive(Debug)]
struct SimLock {
    machine: Arc<Machine>,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        lock(&self.machine.locks).retain(|p| p != &self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(fs: &SimFs, path: &str) -> Option<Vec<u8>> {
        fs.read_file(Path::new(path)).ok()
    }

    #[test]
    fn only_what_was_made_durable_survives_a_strict_power_loss() {
        let fs = SimFs::default();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs.open(Path::new("/d/a"), true).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        // Data fsynced, but the name not: a power loss forgets the file.
        f.sync_data().unwrap();
        assert_eq!(read(&fs.power_loss(Loss::Strict), "/d/a"), None);
        fs.sync_dir(Path::new("/")).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(b" world", 5).unwrap();
        assert_eq!(read(&fs.power_loss(Loss::Strict), "/d/a").unwrap(), b"hello");
        assert_eq!(read(&fs.process_crash(), "/d/a").unwrap(), b"hello world", "the page cache survives a SIGKILL");
        // A rename that was not made durable is undone.
        fs.rename(Path::new("/d/a"), Path::new("/d/b")).unwrap();
        let lost = fs.power_loss(Loss::Strict);
        assert!(lost.exists(Path::new("/d/a")) && !lost.exists(Path::new("/d/b")));
        assert_ne!(lost.boot_id(), fs.boot_id(), "another boot");
    }

    #[test]
    fn chaos_keeps_prefixes_and_tears_writes_at_sectors() {
        let fs = SimFs::default();
        let f = fs.open(Path::new("/f"), true).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        f.sync_data().unwrap();
        for i in 0..4u8 {
            f.write_all_at(&[i + 1; 1024], i as u64 * 1024).unwrap();
        }
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let bytes = read(&fs.power_loss(Loss::Chaos(seed)), "/f").unwrap();
            assert_eq!(bytes.len() % 512, 0);
            // A prefix of the writes: no later byte without every earlier one.
            let expected: Vec<u8> = (0..bytes.len()).map(|i| (i / 1024) as u8 + 1).collect();
            assert_eq!(bytes, expected);
            seen.insert(bytes.len());
        }
        assert!(seen.len() > 4, "torn and whole outcomes: {seen:?}");
    }

    #[test]
    fn a_stopped_machine_changes_nothing() {
        let fs = SimFs::default();
        let f = fs.open(Path::new("/f"), true).unwrap();
        fs.crash_after(1);
        f.write_all_at(b"a", 0).unwrap();
        assert!(f.write_all_at(b"b", 1).is_err());
        assert!(f.sync_data().is_err());
        assert!(fs.is_frozen());
        assert_eq!(read(&fs.process_crash(), "/f").unwrap(), b"a");
    }
}
