//! A power-loss filesystem for tests (the model `LazyFS` uses for Jepsen): a FUSE filesystem over
//! a backing directory that keeps every byte written since a file's last `fsync`/`fdatasync`, and
//! every create, rename and unlink since its directory's last `fsync`, in a volatile layer in
//! memory. The live processes see ordinary POSIX behaviour; [`PowerFs::cut`] drops the volatile
//! layer (optionally tearing the last write or persisting a random subset of dirty pages, as real
//! disks do) and unmounts, after which the backing directory holds exactly what was durable.
//!
//! The model, precisely:
//! - The backing directory *is* the durable image. Every inode has a durable location: its name
//!   in the backing tree, or `BACKING/.powerfs-limbo/INO` for an inode whose name is not durable
//!   (created and not yet covered by an `fsync` of its directory, or unlinked/renamed away
//!   durably while still open or linked elsewhere). The limbo is deleted by a cut: its inodes are
//!   unreachable after a reboot.
//! - File data: writes land in 4 KiB pages in memory; `fsync`/`fdatasync` of the file writes its
//!   dirty pages and its size to its durable location (both calls make data and size durable;
//!   attributes such as mode and times are not modelled as durable). A write with `O_DSYNC` or
//!   `O_SYNC` (open flags, or `pwritev2` with `RWF_DSYNC`) is durable when it returns: the pages
//!   it touched and the size they reach, not the file's other dirty pages. `sync_file_range` never
//!   reaches the filesystem (no writeback cache), so it makes nothing durable, as on a real disk
//!   after a power cut. `fallocate` (modes 0, `KEEP_SIZE`, `PUNCH_HOLE`, `ZERO_RANGE`) and
//!   `ftruncate` change the live size; the size becomes durable with the next file sync.
//! - Directory entries: `create`, `mkdir`, `rename`, `unlink`, `rmdir` change only the live
//!   namespace; `fsync` of a directory makes that directory's entries durable (each entry points
//!   at the inode it names live; an inode moved into it durably leaves its old directory, as a
//!   journaled rename does). A file `fsync` does not make its name durable (POSIX; ext4 is
//!   stronger). Sockets and FIFOs live only in memory. Hard links and symlinks are refused.
//! - After a cut every operation on the old mount fails with `EIO`: nothing more becomes durable,
//!   so an acknowledgement written after a successful `fsync` is always covered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Size of the pages the volatile layer keeps and a [`CutMode::RandomPages`] cut persists.
pub const PAGE: u64 = 4096;
/// The folder inside the backing directory holding inodes without a durable name.
pub const LIMBO: &str = ".powerfs-limbo";
const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;
/// How many recent unsynced writes are remembered for [`CutMode::TearLastWrite`].
const RECENT_WRITES: usize = 256;

/// What went wrong mounting or cutting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/fuse` is missing.
    #[error("powerfs needs /dev/fuse, which this machine does not have: run the power-loss tests on a machine (or container) with the FUSE device (e.g. `--device /dev/fuse`)")]
    NoFuseDevice,
    /// `fusermount3` is not on `PATH`.
    #[error("powerfs mounts through fusermount3, which is not on PATH: install the Debian package fuse3 (`apt-get install -y fuse3`; scripts/test.sh does)")]
    NoFusermount,
    /// The backing directory could not be read or written.
    #[error("powerfs backing directory {path}: {source}")]
    Backing {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The FUSE mount failed.
    #[error("powerfs could not mount on {mountpoint}: {source}")]
    Mount {
        /// Where.
        mountpoint: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The filesystem already lost power.
    #[error("powerfs on {0} already lost power (cut or unmounted): mount it again")]
    AlreadyCut(PathBuf),
}

/// What a power cut does with the volatile layer. Every mode drops all namespace changes not
/// covered by a directory `fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Every unsynced byte is lost.
    DropAll,
    /// The last unsynced write (of any file) reaches the disk up to a random byte (possibly none
    /// or all of it); every other unsynced byte is lost.
    TearLastWrite {
        /// Seed of the tear point.
        seed: u64,
    },
    /// Each dirty page reaches the disk with probability `per_mille`/1000, independently (the file
    /// grows to cover a persisted page beyond its durable size, capped at its live size).
    RandomPages {
        /// Seed of the choice.
        seed: u64,
        /// Probability of each page, in thousandths.
        per_mille: u32,
    },
}

/// What a cut dropped and kept, for the test output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Dirty pages lost.
    pub pages_dropped: u64,
    /// Dirty pages persisted by [`CutMode::RandomPages`].
    pub pages_persisted: u64,
    /// Bytes of the torn write persisted by [`CutMode::TearLastWrite`], and its length.
    pub torn: Option<(u64, u64)>,
    /// Inodes in limbo (names never made durable, or durably removed) discarded.
    pub limbo_inodes: u64,
}

/// Options of a mount.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Filesystem name shown in `/proc/mounts`.
    pub fs_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Loc {
    /// The backing directory itself.
    Root,
    /// A durable name in a durable (or limbo) directory.
    In(u64, OsString),
    /// `LIMBO/INO`.
    Limbo,
    /// No durable representation (sockets, FIFOs).
    Nowhere,
}

#[derive(Debug)]
struct Node {
    kind: FileType,
    loc: Loc,
    /// Live entries (directories).
    children: BTreeMap<OsString, u64>,
    /// Entries as they are in the backing directory (directories).
    durable_children: BTreeMap<OsString, u64>,
    live_parent: u64,
    nlink: u32,
    open: u32,
    /// Live size.
    size: u64,
    /// Size of the durable file.
    durable_size: u64,
    /// Bytes of the durable file below this are still live content (an unsynced truncate lowers it).
    base_valid: u64,
    dirty: BTreeMap<u64, Box<[u8]>>,
    fd: Option<Arc<File>>,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    atime: SystemTime,
    ctime: SystemTime,
    rdev: u32,
}

impl Node {
    fn new(kind: FileType, loc: Loc, parent: u64, perm: u16, uid: u32, gid: u32) -> Node {
        let now = SystemTime::now();
        Node {
            kind,
            loc,
            children: BTreeMap::new(),
            durable_children: BTreeMap::new(),
            live_parent: parent,
            nlink: 1,
            open: 0,
            size: 0,
            durable_size: 0,
            base_valid: 0,
            dirty: BTreeMap::new(),
            fd: None,
            perm,
            uid,
            gid,
            mtime: now,
            atime: now,
            ctime: now,
            rdev: 0,
        }
    }

    fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }

    fn durable_kind(&self) -> bool {
        matches!(self.kind, FileType::Directory | FileType::RegularFile)
    }
}

#[derive(Debug)]
struct Handle {
    ino: u64,
    append: bool,
}

#[derive(Debug)]
struct Inner {
    backing: PathBuf,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Recent unsynced writes: (inode, offset, length).
    writes: VecDeque<(u64, u64, u64)>,
}

type Shared = Arc<Mutex<Option<Inner>>>;

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Inner {
    fn load(backing: &Path) -> std::io::Result<Inner> {
        let limbo = backing.join(LIMBO);
        if limbo.exists() {
            std::fs::remove_dir_all(&limbo)?;
        }
        std::fs::create_dir_all(&limbo)?;
        let meta = std::fs::metadata(backing)?;
        let mut inner = Inner {
            backing: backing.to_owned(),
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            writes: VecDeque::new(),
        };
        let mut root = Node::new(
            FileType::Directory,
            Loc::Root,
            ROOT,
            (meta.mode() & 0o7777) as u16,
            meta.uid(),
            meta.gid(),
        );
        root.nlink = 2;
        inner.nodes.insert(ROOT, root);
        inner.scan(ROOT, backing)?;
        Ok(inner)
    }

    fn scan(&mut self, dir: u64, path: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            if dir == ROOT && name == LIMBO {
                continue;
            }
            let meta = entry.metadata()?;
            let kind = if meta.is_dir() {
                FileType::Directory
            } else if meta.is_file() {
                FileType::RegularFile
            } else {
                continue; // sockets and the like never were durable
            };
            let ino = self.next_ino;
            self.next_ino += 1;
            let mut node = Node::new(
                kind,
                Loc::In(dir, name.clone()),
                dir,
                (meta.mode() & 0o7777) as u16,
                meta.uid(),
                meta.gid(),
            );
            node.size = meta.len();
            node.durable_size = meta.len();
            node.base_valid = meta.len();
            node.mtime = meta.modified().unwrap_or(node.mtime);
            if kind == FileType::Directory {
                node.size = 0;
                node.durable_size = 0;
                node.base_valid = 0;
            }
            self.nodes.insert(ino, node);
            let d = self.nodes.get_mut(&dir).expect("scanned dir");
            d.children.insert(name.clone(), ino);
            d.durable_children.insert(name.clone(), ino);
            if kind == FileType::Directory {
                self.scan(ino, &path.join(&name))?;
            }
        }
        Ok(())
    }

    fn path(&self, ino: u64) -> Option<PathBuf> {
        let node = self.nodes.get(&ino)?;
        match &node.loc {
            Loc::Root => Some(self.backing.clone()),
            Loc::In(parent, name) => Some(self.path(*parent)?.join(name)),
            Loc::Limbo => Some(self.backing.join(LIMBO).join(ino.to_string())),
            Loc::Nowhere => None,
        }
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let n = self.node(ino)?;
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.ctime,
            kind: n.kind,
            perm: n.perm,
            nlink: if n.is_dir() { 2 } else { n.nlink },
            uid: n.uid,
            gid: n.gid,
            rdev: n.rdev,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    /// The backing file of a regular file, opened once (renames in the backing tree keep it valid).
    fn fd(&mut self, ino: u64) -> Result<Arc<File>, Errno> {
        if let Some(fd) = &self.node(ino)?.fd {
            return Ok(fd.clone());
        }
        let path = self.path(ino).ok_or(Errno::EIO)?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_errno(&e))?;
        let f = Arc::new(f);
        self.node_mut(ino)?.fd = Some(f.clone());
        Ok(f)
    }

    /// The live content of one page (from the dirty layer or the durable file).
    fn page(&mut self, ino: u64, page: u64) -> Result<Box<[u8]>, Errno> {
        if let Some(p) = self.node(ino)?.dirty.get(&page) {
            return Ok(p.clone());
        }
        let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
        let n = self.node(ino)?;
        let valid = n.base_valid.min(n.durable_size);
        let start = page * PAGE;
        if start < valid {
            let len = (valid - start).min(PAGE) as usize;
            let fd = self.fd(ino)?;
            fd.read_exact_at(&mut buf[..len], start)
                .map_err(|e| io_errno(&e))?;
        }
        Ok(buf)
    }

    fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let n = self.node(ino)?;
        if n.is_dir() {
            return Err(Errno::EISDIR);
        }
        let end = (offset + u64::from(size)).min(n.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let page = pos / PAGE;
            let within = (pos % PAGE) as usize;
            let take = ((PAGE - pos % PAGE).min(end - pos)) as usize;
            let buf = self.page(ino, page)?;
            out.extend_from_slice(&buf[within..within + take]);
            pos += take as u64;
        }
        Ok(out)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let page = pos / PAGE;
            let within = (pos % PAGE) as usize;
            let take = rest.len().min(PAGE as usize - within);
            let mut buf = self.page(ino, page)?;
            buf[within..within + take].copy_from_slice(&rest[..take]);
            self.node_mut(ino)?.dirty.insert(page, buf);
            rest = &rest[take..];
            pos += take as u64;
        }
        let n = self.node_mut(ino)?;
        n.size = n.size.max(offset + data.len() as u64);
        n.mtime = SystemTime::now();
        if !data.is_empty() {
            self.writes.push_back((ino, offset, data.len() as u64));
            if self.writes.len() > RECENT_WRITES {
                self.writes.pop_front();
            }
        }
        Ok(())
    }

    fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let old = self.node(ino)?.size;
        if size < old {
            if !size.is_multiple_of(PAGE) {
                let page = size / PAGE;
                let mut buf = self.page(ino, page)?;
                buf[(size % PAGE) as usize..].fill(0);
                self.node_mut(ino)?.dirty.insert(page, buf);
            }
            let n = self.node_mut(ino)?;
            let first_gone = size.div_ceil(PAGE);
            n.dirty.retain(|p, _| *p < first_gone);
            n.base_valid = n.base_valid.min(size);
        }
        let n = self.node_mut(ino)?;
        n.size = size;
        n.mtime = SystemTime::now();
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its dirty pages and size become durable.
    fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        let n = self.node(ino)?;
        if n.kind != FileType::RegularFile {
            return Ok(());
        }
        if n.dirty.is_empty() && n.base_valid == n.durable_size && n.size == n.durable_size {
            self.writes.retain(|w| w.0 != ino);
            return Ok(());
        }
        let fd = self.fd(ino)?;
        let n = self.node_mut(ino)?;
        if n.base_valid < n.durable_size {
            fd.set_len(n.base_valid).map_err(|e| io_errno(&e))?;
        }
        for (page, buf) in &n.dirty {
            let start = page * PAGE;
            if start >= n.size {
                continue;
            }
            let len = (n.size - start).min(PAGE) as usize;
            fd.write_all_at(&buf[..len], start)
                .map_err(|e| io_errno(&e))?;
        }
        fd.set_len(n.size).map_err(|e| io_errno(&e))?;
        n.dirty.clear();
        n.durable_size = n.size;
        n.base_valid = n.size;
        self.writes.retain(|w| w.0 != ino);
        Ok(())
    }

    /// A write made with `O_DSYNC` or `O_SYNC` (the file's open flags, or `pwritev2` with
    /// `RWF_DSYNC`/`RWF_SYNC`, which the kernel passes on as those flags): durable when it
    /// returns. The pages it touched are written to the durable image and, if it grew the file,
    /// the size as far as those pages reach; the file's other dirty pages stay volatile, as a
    /// real disk's range sync (`vfs_fsync_range`) leaves them. Under a pending truncate the whole
    /// file is synced (a journaling filesystem commits the truncate with the write).
    fn sync_range(&mut self, ino: u64, offset: u64, len: u64) -> Result<(), Errno> {
        let n = self.node(ino)?;
        if len == 0 || n.kind != FileType::RegularFile {
            return Ok(());
        }
        if n.base_valid < n.durable_size {
            return self.sync_file(ino);
        }
        let fd = self.fd(ino)?;
        let n = self.node_mut(ino)?;
        let (first, last) = (offset / PAGE, (offset + len - 1) / PAGE);
        let durable = n.durable_size.max(n.size.min((last + 1) * PAGE));
        if durable > n.durable_size {
            fd.set_len(durable).map_err(|e| io_errno(&e))?;
        }
        for page in first..=last {
            let start = page * PAGE;
            if start >= durable {
                break;
            }
            if let Some(buf) = n.dirty.remove(&page) {
                let len = (durable - start).min(PAGE) as usize;
                fd.write_all_at(&buf[..len], start)
                    .map_err(|e| io_errno(&e))?;
            }
        }
        n.durable_size = durable;
        n.base_valid = durable;
        let (from, to) = (first * PAGE, (last + 1) * PAGE);
        self.writes
            .retain(|w| !(w.0 == ino && w.1 >= from && w.1 + w.2 <= to));
        Ok(())
    }

    fn limbo_path(&self, ino: u64) -> PathBuf {
        self.backing.join(LIMBO).join(ino.to_string())
    }

    /// Moves a durable inode out of its directory into limbo (a file nothing refers to any more
    /// is deleted; a directory always goes to limbo, since entries below it may still be the
    /// durable home of inodes that live elsewhere now).
    fn evict(&mut self, dir: u64, name: &OsStr, owner: u64) -> Result<(), Errno> {
        let from = self.path(owner).ok_or(Errno::EIO)?;
        let n = self.node(owner)?;
        let dead_file = n.nlink == 0 && n.open == 0 && !n.is_dir();
        if dead_file {
            std::fs::remove_file(&from).map_err(|e| io_errno(&e))?;
        } else {
            std::fs::rename(&from, self.limbo_path(owner)).map_err(|e| io_errno(&e))?;
        }
        self.node_mut(dir)?.durable_children.remove(name);
        let n = self.node_mut(owner)?;
        n.loc = if dead_file { Loc::Nowhere } else { Loc::Limbo };
        if dead_file {
            n.fd = None;
            n.dirty.clear();
        }
        Ok(())
    }

    /// `fsync` of a directory: its live entries become its durable entries.
    fn sync_dir(&mut self, dir: u64) -> Result<(), Errno> {
        let d = self.node(dir)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let desired: BTreeMap<OsString, u64> = d
            .children
            .iter()
            .filter(|(_, ino)| self.nodes.get(ino).is_some_and(Node::durable_kind))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let durable = d.durable_children.clone();
        for (name, owner) in &durable {
            if desired.get(name) != Some(owner) {
                self.evict(dir, name, *owner)?;
            }
        }
        let dir_path = self.path(dir).ok_or(Errno::EIO)?;
        for (name, ino) in desired {
            if self.node(dir)?.durable_children.get(&name) == Some(&ino) {
                continue;
            }
            let from = self.path(ino).ok_or(Errno::EIO)?;
            std::fs::rename(&from, dir_path.join(&name)).map_err(|e| io_errno(&e))?;
            if let Loc::In(old_dir, old_name) = self.node(ino)?.loc.clone() {
                self.node_mut(old_dir)?.durable_children.remove(&old_name);
            }
            self.node_mut(ino)?.loc = Loc::In(dir, name.clone());
            self.node_mut(dir)?.durable_children.insert(name, ino);
        }
        Ok(())
    }

    fn new_node(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: FileType,
        perm: u16,
        req: &Request,
    ) -> Result<u64, Errno> {
        let p = self.node(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if p.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let loc = match kind {
            FileType::RegularFile => {
                let path = self.limbo_path(ino);
                let f = File::create(&path).map_err(|e| io_errno(&e))?;
                let _ = f.set_permissions(std::fs::Permissions::from_mode(u32::from(perm)));
                Loc::Limbo
            }
            FileType::Directory => {
                std::fs::create_dir(self.limbo_path(ino)).map_err(|e| io_errno(&e))?;
                Loc::Limbo
            }
            _ => Loc::Nowhere,
        };
        let node = Node::new(kind, loc, parent, perm, req.uid(), req.gid());
        self.nodes.insert(ino, node);
        let p = self.node_mut(parent)?;
        p.children.insert(name.to_owned(), ino);
        p.mtime = SystemTime::now();
        Ok(ino)
    }

    fn open_handle(&mut self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let n = self.node_mut(ino)?;
        n.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle {
                ino,
                append: flags & libc::O_APPEND != 0,
            },
        );
        Ok(fh)
    }

    fn release(&mut self, fh: u64) {
        if let Some(h) = self.handles.remove(&fh) {
            if let Some(n) = self.nodes.get_mut(&h.ino) {
                n.open = n.open.saturating_sub(1);
            }
        }
    }

    fn unlink_entry(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = *self.node(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        let n = self.node(ino)?;
        if dir && !n.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !dir && n.is_dir() {
            return Err(Errno::EISDIR);
        }
        if dir && !n.children.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.node_mut(parent)?.children.remove(name);
        let n = self.node_mut(ino)?;
        n.nlink = n.nlink.saturating_sub(1);
        n.ctime = SystemTime::now();
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let ino = *self.node(parent)?.children.get(name).ok_or(Errno::ENOENT)?;
        if !self.node(new_parent)?.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        // A directory cannot move below itself.
        let mut up = new_parent;
        while up != ROOT {
            if up == ino {
                return Err(Errno::EINVAL);
            }
            up = self.node(up)?.live_parent;
        }
        if let Some(&target) = self.node(new_parent)?.children.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            let is_dir = self.node(ino)?.is_dir();
            let t = self.node(target)?;
            match (is_dir, t.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !t.children.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            let t = self.node_mut(target)?;
            t.nlink = t.nlink.saturating_sub(1);
        }
        self.node_mut(parent)?.children.remove(name);
        self.node_mut(new_parent)?
            .children
            .insert(new_name.to_owned(), ino);
        let n = self.node_mut(ino)?;
        n.live_parent = new_parent;
        n.ctime = SystemTime::now();
        Ok(())
    }

    fn fallocate(&mut self, ino: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        let size = self.node(ino)?.size;
        let end = offset + length;
        match mode {
            0 => {
                if end > size {
                    self.node_mut(ino)?.size = end;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => {
                let end = end.min(size);
                if end > offset {
                    self.zero_range(ino, offset, end)?;
                }
                Ok(())
            }
            m if m & !libc::FALLOC_FL_KEEP_SIZE == libc::FALLOC_FL_ZERO_RANGE => {
                let zero_end = end.min(size);
                if zero_end > offset {
                    self.zero_range(ino, offset, zero_end)?;
                }
                if m & libc::FALLOC_FL_KEEP_SIZE == 0 && end > size {
                    self.node_mut(ino)?.size = end;
                }
                Ok(())
            }
            _ => Err(Errno::from_i32(libc::EOPNOTSUPP)),
        }
    }

    fn zero_range(&mut self, ino: u64, start: u64, end: u64) -> Result<(), Errno> {
        let mut pos = start;
        while pos < end {
            let page = pos / PAGE;
            let within = (pos % PAGE) as usize;
            let take = ((PAGE - pos % PAGE).min(end - pos)) as usize;
            let mut buf = self.page(ino, page)?;
            buf[within..within + take].fill(0);
            self.node_mut(ino)?.dirty.insert(page, buf);
            pos += take as u64;
        }
        Ok(())
    }

    /// The power cut: applies `mode` to the volatile layer, then throws the rest away.
    fn cut(mut self, mode: CutMode) -> std::io::Result<CutReport> {
        let mut report = CutReport::default();
        let mut rng = SplitMix(match mode {
            CutMode::DropAll => 0,
            CutMode::TearLastWrite { seed } | CutMode::RandomPages { seed, .. } => seed,
        });
        let total: u64 = self.nodes.values().map(|n| n.dirty.len() as u64).sum();
        match mode {
            CutMode::DropAll => {}
            CutMode::TearLastWrite { .. } => {
                if let Some((ino, offset, len)) = self.writes.back().copied() {
                    let keep = rng.below(len + 1);
                    let bytes = self.read(ino, offset, keep as u32).unwrap_or_default();
                    // A file whose durable home is gone (deleted) has nowhere to tear into.
                    if let (false, Ok(fd)) = (bytes.is_empty(), self.fd(ino)) {
                        fd.write_all_at(&bytes, offset)?;
                    }
                    report.torn = Some((bytes.len() as u64, len));
                }
            }
            CutMode::RandomPages { per_mille, .. } => {
                let mut inos: Vec<u64> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| !n.dirty.is_empty())
                    .map(|(i, _)| *i)
                    .collect();
                inos.sort_unstable();
                for ino in inos {
                    let n = &self.nodes[&ino];
                    let size = n.size;
                    let pages: Vec<(u64, Box<[u8]>)> =
                        n.dirty.iter().map(|(p, b)| (*p, b.clone())).collect();
                    for (page, buf) in pages {
                        let start = page * PAGE;
                        if rng.below(1000) >= u64::from(per_mille) || start >= size {
                            continue;
                        }
                        let len = (size - start).min(PAGE) as usize;
                        let Ok(fd) = self.fd(ino) else { continue };
                        fd.write_all_at(&buf[..len], start)?;
                        report.pages_persisted += 1;
                    }
                }
            }
        }
        report.pages_dropped = total - report.pages_persisted;
        let limbo = self.backing.join(LIMBO);
        report.limbo_inodes = std::fs::read_dir(&limbo).map_or(0, Iterator::count) as u64;
        std::fs::remove_dir_all(&limbo)?;
        Ok(report)
    }

    /// A clean shutdown: every file and directory synced, top-down, then the limbo removed.
    fn sync_all(&mut self) -> Result<(), Errno> {
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in &inos {
            let n = &self.nodes[ino];
            if n.kind == FileType::RegularFile && (n.nlink > 0 || n.open > 0) {
                self.sync_file(*ino)?;
            }
        }
        let mut stack = vec![ROOT];
        while let Some(d) = stack.pop() {
            self.sync_dir(d)?;
            for c in self.node(d)?.children.values() {
                if self.node(*c)?.is_dir() {
                    stack.push(*c);
                }
            }
        }
        let _ = std::fs::remove_dir_all(self.backing.join(LIMBO));
        Ok(())
    }
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(i32::from(e))
}

/// A small deterministic generator (splitmix64) for the seeded cut modes.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The FUSE side: every call locks the shared state; after a cut the state is gone and every
/// call fails with `EIO`.
struct Fs {
    shared: Shared,
}

impl Fs {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut guard = lock(&self.shared);
        match guard.as_mut() {
            Some(inner) => f(inner),
            None => Err(Errno::EIO),
        }
    }
}

/// How long an `O_DSYNC` write is in flight between landing and being durable: about a device's
/// write latency (the fsync of a small write on this machine class takes 100-150 µs), so that
/// cuts at random instants fall inside such writes about as often as they would on a real disk.
const DSYNC_IN_FLIGHT: Duration = Duration::from_micros(100);

fn lock(shared: &Shared) -> MutexGuard<'_, Option<Inner>> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.with(|s| {
            let ino = *s.node(parent.0)?.children.get(name).ok_or(Errno::ENOENT)?;
            s.attr(ino)
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|s| s.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.with(|s| {
            if let Some(size) = size {
                if s.node(ino.0)?.is_dir() {
                    return Err(Errno::EISDIR);
                }
                s.truncate(ino.0, size)?;
            }
            let n = s.node_mut(ino.0)?;
            if let Some(m) = mode {
                n.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = uid {
                n.uid = u;
            }
            if let Some(g) = gid {
                n.gid = g;
            }
            if let Some(t) = atime {
                n.atime = time_of(t);
            }
            if let Some(t) = mtime {
                n.mtime = time_of(t);
            }
            n.ctime = SystemTime::now();
            s.attr(ino.0)
        }) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => FileType::RegularFile,
            libc::S_IFSOCK => FileType::Socket,
            libc::S_IFIFO => FileType::NamedPipe,
            _ => return reply.error(Errno::EPERM),
        };
        match self.with(|s| {
            let ino = s.new_node(parent.0, name, kind, (mode & !umask & 0o7777) as u16, req)?;
            s.node_mut(ino)?.rdev = rdev;
            s.attr(ino)
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.with(|s| {
            let ino = s.new_node(
                parent.0,
                name,
                FileType::Directory,
                (mode & !umask & 0o7777) as u16,
                req,
            )?;
            s.attr(ino)
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|s| s.unlink_entry(parent.0, name, false)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|s| s.unlink_entry(parent.0, name, true)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.with(|s| s.rename(parent.0, name, newparent.0, newname, flags)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| {
            if s.node(ino.0)?.is_dir() {
                return Err(Errno::EISDIR);
            }
            if flags.0 & libc::O_TRUNC != 0 {
                s.truncate(ino.0, 0)?;
            }
            s.open_handle(ino.0, flags.0)
        }) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|s| s.read(ino.0, offset, size)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // O_SYNC is O_DSYNC plus a bit on Linux: either makes the write durable at its return.
        let dsync = flags.0 & libc::O_DSYNC != 0;
        // The write lands, then (under the lock again, after the time a device takes to write
        // it) it is synced: a cut can fall between the two, as a power cut can fall during a real
        // O_DSYNC write, and the tearing modes then tear it as any unsynced write; the writer gets
        // EIO, never an acknowledgement.
        let written = self.with(|s| {
            let append = s.handles.get(&fh.0).is_some_and(|h| h.append);
            let offset = if append { s.node(ino.0)?.size } else { offset };
            s.write(ino.0, offset, data)?;
            Ok(offset)
        });
        let synced = match written {
            Ok(offset) if dsync => {
                std::thread::sleep(DSYNC_IN_FLIGHT);
                self.with(|s| s.sync_range(ino.0, offset, data.len() as u64))
            }
            other => other.map(|_| ()),
        };
        match synced {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.with(|_| Ok(())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _ = self.with(|s| {
            s.release(fh.0);
            Ok(())
        });
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.with(|s| s.sync_file(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| {
            if s.node(ino.0)?.is_dir() {
                Ok(())
            } else {
                Err(Errno::ENOTDIR)
            }
        }) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = self.with(|s| {
            let d = s.node(ino.0)?;
            let mut v = vec![
                (ino.0, FileType::Directory, OsString::from(".")),
                (d.live_parent, FileType::Directory, OsString::from("..")),
            ];
            for (name, c) in &d.children {
                v.push((*c, s.node(*c)?.kind, name.clone()));
            }
            Ok(v)
        });
        match entries {
            Ok(v) => {
                for (i, (ino, kind, name)) in v.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.with(|s| s.sync_dir(ino.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            1 << 28,
            1 << 27,
            1 << 27,
            1 << 20,
            1 << 19,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.with(|s| s.node(ino.0).map(|_| ())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.with(|s| {
            let existing = s.node(parent.0)?.children.get(name).copied();
            let ino = match existing {
                Some(_) if flags & libc::O_EXCL != 0 => return Err(Errno::EEXIST),
                Some(ino) => {
                    if s.node(ino)?.is_dir() {
                        return Err(Errno::EISDIR);
                    }
                    if flags & libc::O_TRUNC != 0 {
                        s.truncate(ino, 0)?;
                    }
                    ino
                }
                None => s.new_node(
                    parent.0,
                    name,
                    FileType::RegularFile,
                    (mode & !umask & 0o7777) as u16,
                    req,
                )?,
            };
            let fh = s.open_handle(ino, flags)?;
            Ok((s.attr(ino)?, fh))
        }) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.with(|s| s.fallocate(ino.0, offset, length, mode)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted power-loss filesystem. Dropping it unmounts without syncing anything (like
/// [`PowerFs::cut`] with [`CutMode::DropAll`]).
pub struct PowerFs {
    shared: Shared,
    /// Unmounts this mount (and only it: taken before the lazy unmount, so that it can never
    /// unmount a later mount on the same mountpoint).
    session: Option<fuser::SessionUnmounter>,
    /// The kernel's number for this FUSE connection (`/sys/fs/fuse/connections/N`).
    connection: Option<u64>,
    mountpoint: PathBuf,
    backing: PathBuf,
}

impl std::fmt::Debug for PowerFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerFs")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// Fails with a clear message when this machine cannot mount a FUSE filesystem.
pub fn check_prerequisites() -> Result<(), Error> {
    prerequisites_in(Path::new("/dev/fuse"), std::env::var_os("PATH"))
}

fn prerequisites_in(device: &Path, path_var: Option<OsString>) -> Result<(), Error> {
    if !device.exists() {
        return Err(Error::NoFuseDevice);
    }
    let on_path = path_var
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()));
    if !on_path {
        return Err(Error::NoFusermount);
    }
    Ok(())
}

impl PowerFs {
    /// Mounts `backing` (whose content is the durable state) on `mountpoint`, served by a
    /// background thread of this process (a writer process killed with SIGKILL does not take it
    /// down).
    pub fn mount(backing: &Path, mountpoint: &Path, opts: &Options) -> Result<PowerFs, Error> {
        check_prerequisites()?;
        let mountpoint = &mountpoint.canonicalize().map_err(|source| Error::Mount {
            mountpoint: mountpoint.to_owned(),
            source,
        })?;
        let inner = Inner::load(backing).map_err(|source| Error::Backing {
            path: backing.to_owned(),
            source,
        })?;
        let shared: Shared = Arc::new(Mutex::new(Some(inner)));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName(
                opts.fs_name
                    .clone()
                    .unwrap_or_else(|| "waymark-powerfs".into()),
            ),
            fuser::MountOption::Subtype("powerfs".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        let mut session = fuser::Session::new(
            Fs {
                shared: shared.clone(),
            },
            mountpoint,
            &config,
        )
        .map_err(|source| Error::Mount {
            mountpoint: mountpoint.to_owned(),
            source,
        })?;
        let unmounter = session.unmount_callable();
        // The serving thread ends when the kernel ends the connection (unmounted and the last
        // open file closed); nobody joins it.
        std::thread::Builder::new()
            .name("powerfs".into())
            .spawn(move || session.run())
            .map_err(|source| Error::Mount {
                mountpoint: mountpoint.to_owned(),
                source,
            })?;
        Ok(PowerFs {
            shared,
            session: Some(unmounter),
            connection: connection_of(mountpoint),
            mountpoint: mountpoint.to_owned(),
            backing: backing.to_owned(),
        })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The kernel's number for this FUSE connection (`/sys/fs/fuse/connections/N`), if known.
    pub fn connection(&self) -> Option<u64> {
        self.connection
    }

    /// The backing directory (the durable image).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Cuts the power: from this instant nothing more becomes durable and every call on the
    /// mount fails with `EIO`; the volatile layer is dropped as `mode` says, and the filesystem
    /// is unmounted (lazily: processes still holding files keep getting `EIO` until they exit).
    pub fn cut(mut self, mode: CutMode) -> Result<CutReport, Error> {
        let inner = lock(&self.shared).take();
        let report = match inner {
            Some(inner) => inner.cut(mode).map_err(|source| Error::Backing {
                path: self.backing.clone(),
                source,
            }),
            None => Err(Error::AlreadyCut(self.mountpoint.clone())),
        };
        self.detach();
        report
    }

    /// A clean unmount: every file and directory is synced first (as `umount` does).
    pub fn unmount(mut self) -> Result<(), Error> {
        let mut inner = lock(&self.shared).take();
        let synced = match inner.as_mut() {
            Some(inner) => inner.sync_all().map_err(|e| Error::Backing {
                path: self.backing.clone(),
                source: errno_io(e),
            }),
            None => Err(Error::AlreadyCut(self.mountpoint.clone())),
        };
        drop(inner);
        self.detach();
        synced
    }

    fn detach(&mut self) {
        if let Some(mut unmounter) = self.session.take() {
            // A plain unmount first (fails while a process still holds a file of the mount) ...
            if unmounter.unmount().is_err() {
                // ... else a lazy one: processes still holding files keep them (and get `EIO`).
                let _ = std::process::Command::new("fusermount3")
                    .args(["-u", "-z", "-q", "--"])
                    .arg(&self.mountpoint)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            // Wait until the mount is gone from this namespace so that a remount can follow.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while is_mounted(&self.mountpoint) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            // After a lazy unmount the connection lives on while a file of it is open, served
            // by a thread of this process. A thread of this process blocked in a request when
            // the process exits would then wait forever (the serving thread is gone, and the
            // device stays open because the blocked thread keeps the process's files): a test
            // binary that never exits. Abort the connection: every request still pending or
            // still to come fails at once, as nothing can reach a disk without power anyway.
            if let Some(connection) = self.connection {
                abort_connection(connection);
            }
        }
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = lock(&self.shared).take();
            self.detach();
            let _ = std::fs::remove_dir_all(self.backing.join(LIMBO));
        }
    }
}

/// The FUSE connection number of the mount at `path` (the minor number of its device, as
/// `/proc/self/mountinfo` lists it).
fn connection_of(path: &Path) -> Option<u64> {
    let target = path.to_string_lossy().replace(' ', "\\040");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(target.as_str()))
        .and_then(|l| l.split(' ').nth(2))
        .and_then(|dev| dev.split(':').nth(1))
        .and_then(|minor| minor.parse().ok())
}

/// Aborts FUSE connection `n` through the fusectl filesystem (mounting it when it is not).
fn abort_connection(n: u64) {
    let connections = Path::new("/sys/fs/fuse/connections");
    if !connections.join(n.to_string()).exists() && !is_mounted(connections) {
        let _ = std::process::Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(connections)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let abort = connections.join(n.to_string()).join("abort");
    if abort.exists() {
        let _ = std::fs::write(abort, "1");
    }
}

/// Whether the canonical path `path` is a mount point listed in `/proc/self/mountinfo` (the
/// path is not touched: a cut mount answers `EIO`).
pub fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_prerequisites_are_named_with_the_fix() {
        let no_device = prerequisites_in(Path::new("/nonexistent/fuse"), None).unwrap_err();
        assert!(matches!(no_device, Error::NoFuseDevice));
        assert!(no_device.to_string().contains("/dev/fuse"), "{no_device}");
        let dir = std::env::temp_dir();
        let no_tool = prerequisites_in(&dir, Some(OsString::from("/nonexistent/bin"))).unwrap_err();
        assert!(matches!(no_tool, Error::NoFusermount));
        assert!(
            no_tool.to_string().contains("apt-get install -y fuse3"),
            "{no_tool}"
        );
    }
}
