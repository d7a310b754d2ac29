//! Where downloads land: the rules that keep a final name for verified bytes only. Every function
//! here blocks; the event loop and the client run them on `spawn_blocking` tasks.
//!
//! Invariants (see ARCHITECTURE.md, "Files on disk"):
//! - A download writes only `.bitswarm-<id>.part`, named by the content id, in the directory the
//!   file will land in. It holds an exclusive lock on that file for its whole life; a second
//!   download of the same id into the same directory finds it locked and stops with
//!   [`PlaceError::Locked`]. No network name can collide with it: names from the network never
//!   start with a dot.
//! - Every name below the user's output directory is opened relative to an open directory, and
//!   never through a symbolic link (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`): a link planted at a
//!   temporary name or a created directory makes the download fail, and its target is untouched.
//! - The final name is given by a rename that does not replace (`RENAME_NOREPLACE`), after an
//!   fsync, and only when the `.part` path still names the locked file every piece was verified
//!   into. An existing file is never replaced: one with the same content means "already
//!   present", one with other content is [`PlaceError::Exists`].
//! - Before the `.part` file is created (or grown), its size is checked against the free space
//!   of the file system.

use std::{
    fs::{File, TryLockError},
    io,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use bitswarm_protocols::{is_unprintable, FileId, FileName, Lengths, Manifest, PieceIndex};

use crate::store;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Prefix of every name the downloader creates on its own (never a name from the network).
const TEMP_PREFIX: &str = ".bitswarm-";

/// Why a download could not be placed, with the paths the user needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The final name exists with other content (or is not a regular file): never replaced.
    #[error(
        "{} exists and is not this file; it was not replaced (pick another name with --name, \
         or another directory with -o)",
        shown(path)
    )]
    Exists {
        /// The final path.
        path: PathBuf,
    },
    /// Another download holds the temporary file.
    #[error(
        "another download of this file into {} is in progress ({} is locked); wait for it to \
         finish",
        shown(dir),
        shown(part)
    )]
    Locked {
        /// The output directory.
        dir: PathBuf,
        /// The locked temporary file.
        part: PathBuf,
    },
    /// Something that is not a regular file or directory (a symbolic link, a fifo) sits where
    /// the downloader creates its own files.
    #[error(
        "{} is a symbolic link or not a regular file/directory; refusing to write through it",
        shown(path)
    )]
    NotOurs {
        /// The path.
        path: PathBuf,
    },
    /// The file does not fit in the free space of the output directory's file system.
    #[error(
        "not enough space: {} needs {needed} more bytes, the file system holding {} has \
         {available} free",
        shown(path),
        shown(dir)
    )]
    NoSpace {
        /// The file that would be written.
        path: PathBuf,
        /// The directory whose file system is too small.
        dir: PathBuf,
        /// Bytes still to be allocated.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// The file system filled up while writing.
    #[error(
        "disk full: the file system holding {} has no space left; {} is kept: free some space \
         and run get again to resume",
        shown(dir),
        shown(part)
    )]
    DiskFull {
        /// The output directory.
        dir: PathBuf,
        /// The kept temporary file.
        part: PathBuf,
    },
    /// A name the downloader keeps for its own temporary files.
    #[error(
        "the name {name} is reserved for bitswarm's temporary files; pick another with --name"
    )]
    Reserved {
        /// The name (escaped).
        name: String,
    },
    /// Any other file-system failure.
    #[error("cannot write {}: {source}", shown(path))]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A path made safe to print (see [`bitswarm_protocols::escape`]).
pub fn shown(path: &Path) -> String {
    bitswarm_protocols::escape(&path.display().to_string()).into_owned()
}

/// A directory opened once. Names below it are resolved relative to the open directory, so
/// renaming or replacing its path later changes nothing, and never through a symbolic link.
#[derive(Debug, Clone)]
pub(crate) struct Dir {
    fd: Arc<File>,
    path: PathBuf,
}

/// The result of looking at a name in a [`Dir`] without following a link.
enum Entry {
    Missing,
    File { size: u64, allocated: u64 },
    Dir,
    Other,
}

impl Dir {
    /// Opens the user's output directory (a symbolic link the user gave is followed: the user
    /// chose it).
    pub(crate) fn open(path: &Path) -> Result<Dir, PlaceError> {
        let fd = File::open(path).map_err(|source| PlaceError::Io {
            path: path.to_owned(),
            source,
        })?;
        let is_dir = fd.metadata().map(|m| m.is_dir()).unwrap_or(false);
        if !is_dir {
            return Err(PlaceError::Io {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(Dir {
            fd: Arc::new(fd),
            path: path.to_owned(),
        })
    }

    /// Its path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `name` below it, for messages.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn io_err(&self, name: &str) -> impl Fn(io::Error) -> PlaceError + '_ {
        let path = self.join(name);
        move |source| PlaceError::Io {
            path: path.clone(),
            source,
        }
    }

    fn entry(&self, name: &str) -> Result<Entry, PlaceError> {
        match rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Entry::File {
                    size: u64::try_from(st.st_size).unwrap_or(0),
                    allocated: u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512),
                },
                FileType::Directory => Entry::Dir,
                _ => Entry::Other,
            }),
            Err(rustix::io::Errno::NOENT) => Ok(Entry::Missing),
            Err(e) => Err(self.io_err(name)(e.into())),
        }
    }

    fn open_at(&self, name: &str, flags: OFlags) -> Result<File, PlaceError> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        match rustix::fs::openat(&*self.fd, name, flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => Ok(File::from(fd)),
            Err(rustix::io::Errno::LOOP) => Err(PlaceError::NotOurs {
                path: self.join(name),
            }),
            Err(e) => Err(self.io_err(name)(e.into())),
        }
    }

    /// Opens the subdirectory `name`, creating it when `create`; `None` when it is missing and
    /// not created. A symbolic link or anything but a directory there is [`PlaceError::NotOurs`].
    pub(crate) fn subdir(&self, name: &str, create: bool) -> Result<Option<Dir>, PlaceError> {
        if create {
            match rustix::fs::mkdirat(&*self.fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(self.io_err(name)(e.into())),
            }
        }
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(&*self.fd, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir {
                fd: Arc::new(File::from(fd)),
                path: self.join(name),
            })),
            Err(rustix::io::Errno::NOENT) if !create => Ok(None),
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => Err(PlaceError::NotOurs {
                path: self.join(name),
            }),
            Err(e) => Err(self.io_err(name)(e.into())),
        }
    }

    /// Takes an exclusive lock on the directory itself, held as long as any clone of it lives.
    pub(crate) fn try_lock(&self) -> Result<(), PlaceError> {
        match self.fd.try_lock() {
            Ok(()) => Ok(()),
            Err(TryLockError::WouldBlock) => Err(PlaceError::Locked {
                dir: self.path.parent().unwrap_or(&self.path).to_owned(),
                part: self.path.clone(),
            }),
            Err(TryLockError::Error(e)) => Err(self.io_err(".")(e)),
        }
    }

    /// Bytes available to this user on the directory's file system.
    pub(crate) fn free_space(&self) -> Result<u64, PlaceError> {
        let st = rustix::fs::fstatvfs(&*self.fd).map_err(|e| self.io_err(".")(e.into()))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// `renameat2(RENAME_NOREPLACE)` of `from` to `to` in this directory: `AlreadyExists`
    /// rather than replacing `to`; `None` where the file system or platform lacks it.
    fn try_rename_noreplace(&self, from: &str, to: &str) -> Option<io::Result<()>> {
        #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
        match rustix::fs::renameat_with(
            &*self.fd,
            from,
            &*self.fd,
            to,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {}
            other => return Some(other.map_err(Into::into)),
        }
        None
    }

    /// Renames the file `from` to `to` without replacing `to`. File systems without
    /// `RENAME_NOREPLACE` get a hard link and an unlink, which refuses an existing target just
    /// the same.
    fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        if let Some(done) = self.try_rename_noreplace(from, to) {
            return done;
        }
        rustix::fs::linkat(&*self.fd, from, &*self.fd, to, AtFlags::empty())?;
        rustix::fs::unlinkat(&*self.fd, from, AtFlags::empty())?;
        Ok(())
    }

    /// Renames the directory `from` to `to` without replacing `to`. Directories cannot be
    /// hard-linked, so a file system without `RENAME_NOREPLACE` gets a clear error rather than
    /// a rename that could replace.
    fn rename_dir_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        self.try_rename_noreplace(from, to).unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this file system cannot rename a directory without replacing; the files are \
                 in the .bitswarm-*.dir directory beside it",
            ))
        })
    }

    /// Whether `name` is, right now, the file or directory `meta` describes (same device and
    /// inode; a link there is not).
    fn is_entry(&self, name: &str, meta: &std::fs::Metadata) -> Result<bool, PlaceError> {
        match rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(st.st_dev == meta.dev() && st.st_ino == meta.ino()),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(self.io_err(name)(e.into())),
        }
    }

    /// Makes the directory's entries (a rename) durable.
    fn sync(&self) -> Result<(), PlaceError> {
        self.fd.sync_all().map_err(self.io_err("."))
    }
}

/// The temporary name of a download of `id`, in the directory it lands in:
/// `.bitswarm-<id>.part`.
pub fn part_name(id: &FileId) -> String {
    format!("{TEMP_PREFIX}{id}.part")
}

/// The temporary directory a collection is gathered in before it takes its name.
pub(crate) fn collection_temp_name(id: &FileId) -> String {
    format!("{TEMP_PREFIX}{id}.dir")
}

/// Refuses a final name that could be one of the downloader's own temporary files.
pub(crate) fn check_final_name(name: &FileName) -> Result<(), PlaceError> {
    if name.as_str().starts_with(TEMP_PREFIX) {
        return Err(PlaceError::Reserved {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A name from the network made safe to create: every control or invisible formatting
/// character becomes `_`, and so does a leading dot (no hidden file, and nothing that could
/// collide with the downloader's own `.bitswarm-*` files). A name with nothing left falls back
/// to one made of the id.
pub(crate) fn safe_name(name: &FileName, id: &FileId) -> FileName {
    let mut safe: String = name
        .as_str()
        .chars()
        .map(|c| if is_unprintable(c) { '_' } else { c })
        .collect();
    if safe.starts_with('.') {
        safe.replace_range(..1, "_");
    }
    FileName::new(safe)
        .or_else(|_| FileName::new(format!("{}.bin", id.short())))
        .unwrap_or_else(|_| name.clone())
}

/// Whether `dir/name` is a regular file holding exactly `id` (read and hashed, not trusted by
/// name). `Ok(None)` when nothing is there; `Ok(Some(_))` when it is that file, with its
/// manifest (so the node can serve it) and the file opened for reading.
///
/// # Errors
/// [`PlaceError::Exists`] when something else is there.
pub(crate) fn present(
    dir: &Dir,
    name: &str,
    id: &FileId,
    size: u64,
) -> Result<Option<(Manifest, File)>, PlaceError> {
    let exists = || PlaceError::Exists {
        path: dir.join(name),
    };
    match dir.entry(name)? {
        Entry::Missing => return Ok(None),
        Entry::File { size: s, .. } if s == size => {}
        _ => return Err(exists()),
    }
    let file = dir.open_at(name, OFlags::RDONLY)?;
    let same_size = file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() == size);
    let (Ok(file_name), Ok(lengths), true) =
        (FileName::new(name), Lengths::for_size(size), same_size)
    else {
        return Err(exists());
    };
    let manifest = store::manifest_of(&file, file_name, lengths).map_err(dir.io_err(name))?;
    if manifest.id() != *id {
        return Err(exists());
    }
    Ok(Some((manifest, file)))
}

/// An opened download.
pub(crate) enum Opened {
    /// The final name already holds this file.
    Present {
        dir: Dir,
        manifest: Manifest,
        file: File,
    },
    /// The locked `.part` file, with the pieces in it from an earlier run, verified.
    Part {
        dir: Dir,
        file: File,
        resumed: Vec<PieceIndex>,
    },
}

/// Opens (or creates) the `.part` file of a download of `manifest` that will be named `name`
/// in `dir`, after checking the final name and the free space; resumes what an earlier run
/// left there, trusting only pieces whose hash matches.
pub(crate) fn open_download(
    dir: Dir,
    name: &FileName,
    manifest: &Manifest,
) -> Result<Opened, PlaceError> {
    check_final_name(name)?;
    let size = manifest.lengths().size();
    if let Some((manifest, file)) = present(&dir, name.as_str(), &manifest.id(), size)? {
        return Ok(Opened::Present {
            dir,
            manifest,
            file,
        });
    }
    let part = part_name(&manifest.id());
    let allocated = match dir.entry(&part)? {
        Entry::Missing => 0,
        Entry::File { allocated, .. } => allocated,
        Entry::Dir | Entry::Other => {
            return Err(PlaceError::NotOurs {
                path: dir.join(&part),
            })
        }
    };
    let available = dir.free_space()?;
    let needed = size.saturating_sub(allocated);
    if needed > available {
        return Err(PlaceError::NoSpace {
            path: dir.join(name.as_str()),
            dir: dir.path().to_owned(),
            needed,
            available,
        });
    }
    let file = dir.open_at(&part, OFlags::RDWR | OFlags::CREATE)?;
    let part_path = dir.join(&part);
    let io_err = |source| PlaceError::Io {
        path: part_path.clone(),
        source,
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(PlaceError::Locked {
                dir: dir.path().to_owned(),
                part: dir.join(&part),
            })
        }
        Err(TryLockError::Error(e)) => return Err(io_err(e)),
    }
    // Locked: from here on no other download writes it. It must still be the file at that
    // name (another download may have renamed or removed it before we locked), a regular file
    // of ours with no other name (a hard link planted there would be written through).
    let meta = file.metadata().map_err(&io_err)?;
    let ours = meta.is_file()
        && meta.nlink() == 1
        && meta.uid() == rustix::process::geteuid().as_raw()
        && dir.is_entry(&part, &meta)?;
    if !ours {
        return Err(PlaceError::NotOurs {
            path: dir.join(&part),
        });
    }
    let existed = meta.len() > 0;
    if meta.len() != size {
        file.set_len(size).map_err(&io_err)?;
    }
    let mut resumed = Vec::new();
    if existed {
        let lengths = manifest.lengths();
        let mut buf = vec![0u8; lengths.piece_size() as usize];
        for piece in lengths.pieces() {
            let chunk = &mut buf[..lengths.piece_len(piece) as usize];
            file.read_exact_at(chunk, lengths.offset(piece))
                .map_err(&io_err)?;
            if manifest.verify_piece(piece, chunk).is_ok() {
                resumed.push(piece);
            }
        }
    }
    Ok(Opened::Part { dir, file, resumed })
}

/// How a finished download ended up under its name.
pub(crate) enum Finished {
    /// Renamed from the `.part` file.
    Renamed,
    /// Someone put the same content under the name first; the `.part` file was removed.
    AlreadyThere,
}

/// Gives a complete, verified download its final name: fsync, check that the `.part` path still
/// names the file every piece was verified into, rename without replacing, fsync the directory.
/// Nothing is replaced: an existing file of other content is [`PlaceError::Exists`], and the
/// `.part` file stays (a later run with `--name` finishes at once).
pub(crate) fn finish(
    dir: &Dir,
    file: &File,
    id: &FileId,
    name: &FileName,
) -> Result<Finished, PlaceError> {
    let part = part_name(id);
    let io_err = dir.io_err(&part);
    file.sync_all().map_err(&io_err)?;
    let meta = file.metadata().map_err(&io_err)?;
    if !dir.is_entry(&part, &meta)? {
        return Err(PlaceError::NotOurs {
            path: dir.join(&part),
        });
    }
    // A name that exists at the rename but is gone when looked at is tried again, a few times.
    for _ in 0..3 {
        match dir.rename_noreplace(&part, name.as_str()) {
            Ok(()) => {
                dir.sync()?;
                return Ok(Finished::Renamed);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if present(dir, name.as_str(), id, meta.len())?.is_some() {
                    let _ = rustix::fs::unlinkat(&*dir.fd, part.as_str(), AtFlags::empty());
                    return Ok(Finished::AlreadyThere);
                }
            }
            Err(e) => return Err(dir.io_err(name.as_str())(e)),
        }
    }
    Err(PlaceError::Exists {
        path: dir.join(name.as_str()),
    })
}

/// Gives a gathered collection directory its final name, without replacing anything.
pub(crate) fn finish_collection(
    out: &Dir,
    temp: &Dir,
    id: &FileId,
    name: &FileName,
) -> Result<(), PlaceError> {
    let from = collection_temp_name(id);
    temp.sync()?;
    let meta = temp.fd.metadata().map_err(temp.io_err("."))?;
    if !out.is_entry(&from, &meta)? {
        return Err(PlaceError::NotOurs {
            path: out.join(&from),
        });
    }
    match out.rename_dir_noreplace(&from, name.as_str()) {
        Ok(()) => out.sync(),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(PlaceError::Exists {
            path: out.join(name.as_str()),
        }),
        Err(e) => Err(out.io_err(name.as_str())(e)),
    }
}

/// Maps a write failure of a download to the error the user sees: a full disk names the file
/// system and says the `.part` file is kept.
pub(crate) fn write_error(dir: &Dir, id: &FileId, source: io::Error) -> PlaceError {
    if source.kind() == io::ErrorKind::StorageFull || source.kind() == io::ErrorKind::QuotaExceeded
    {
        PlaceError::DiskFull {
            dir: dir.path().to_owned(),
            part: dir.join(&part_name(id)),
        }
    } else {
        PlaceError::Io {
            path: dir.join(&part_name(id)),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> FileId {
        FileId::of(b"x")
    }

    #[test]
    fn network_names_become_safe_local_names() {
        let safe = |n: &str| {
            safe_name(&FileName::new(n).unwrap(), &id())
                .as_str()
                .to_owned()
        };
        assert_eq!(safe(".bash_login"), "_bash_login");
        assert_eq!(safe("..x"), "_.x");
        assert_eq!(safe("evil\u{1b}[31mred\r"), "evil_[31mred_");
        assert_eq!(safe("gpj.\u{202e}exe"), "gpj._exe");
        assert_eq!(safe("report 2026.pdf"), "report 2026.pdf");
        assert!(!safe(".bitswarm-x.part").starts_with('.'));
        let tmp = tempfile::tempdir().unwrap();
        let manifest = manifest_of(b"abc");
        let reserved = FileName::new(part_name(&manifest.id())).unwrap();
        let err = open_download(Dir::open(tmp.path()).unwrap(), &reserved, &manifest);
        assert!(matches!(err, Err(PlaceError::Reserved { .. })));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_link_at_the_temporary_name_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let canary = tmp.path().join("canary");
        std::fs::write(&canary, b"keep me").unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let data = vec![7u8; 100_000];
        let manifest = manifest_of(&data);
        std::os::unix::fs::symlink(&canary, out.join(part_name(&manifest.id()))).unwrap();
        let dir = Dir::open(&out).unwrap();
        let name = FileName::new("data").unwrap();
        let err = open_download(dir, &name, &manifest).err().unwrap();
        assert!(matches!(err, PlaceError::NotOurs { .. }), "{err}");
        assert_eq!(std::fs::read(&canary).unwrap(), b"keep me");
    }

    #[test]
    fn a_hard_link_planted_at_the_temporary_name_is_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let manifest = manifest_of(&[9u8; 50_000]);
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::fs::hard_link(&victim, tmp.path().join(part_name(&manifest.id()))).unwrap();
        let name = FileName::new("data").unwrap();
        let err = open_download(Dir::open(tmp.path()).unwrap(), &name, &manifest)
            .err()
            .unwrap();
        assert!(matches!(err, PlaceError::NotOurs { .. }), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_link_planted_where_a_directory_is_created_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("sub")).unwrap();
        let dir = Dir::open(&out).unwrap();
        let err = dir.subdir("sub", true).err().unwrap();
        assert!(matches!(err, PlaceError::NotOurs { .. }), "{err}");
        assert!(matches!(
            dir.subdir("sub", false),
            Err(PlaceError::NotOurs { .. })
        ));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert!(dir.subdir("real", true).unwrap().is_some());
        assert!(out.join("real").is_dir());
    }

    #[test]
    fn a_second_open_of_the_same_download_is_refused_while_the_first_holds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let manifest = manifest_of(&[1u8; 5000]);
        let name = FileName::new("data").unwrap();
        let first = open_download(Dir::open(tmp.path()).unwrap(), &name, &manifest).unwrap();
        let second = open_download(Dir::open(tmp.path()).unwrap(), &name, &manifest);
        assert!(matches!(second, Err(PlaceError::Locked { .. })));
        drop(first);
        assert!(open_download(Dir::open(tmp.path()).unwrap(), &name, &manifest).is_ok());
    }

    #[test]
    fn finishing_never_replaces_another_file() {
        let tmp = tempfile::tempdir().unwrap();
        let data = vec![3u8; 40_000];
        let manifest = manifest_of(&data);
        let name = FileName::new("data").unwrap();
        let Opened::Part { dir, file, .. } =
            open_download(Dir::open(tmp.path()).unwrap(), &name, &manifest).unwrap()
        else {
            panic!("nothing was there")
        };
        file.write_all_at(&data, 0).unwrap();
        std::fs::write(tmp.path().join("data"), b"someone else's").unwrap();
        let err = finish(&dir, &file, &manifest.id(), &name).err().unwrap();
        assert!(matches!(err, PlaceError::Exists { .. }), "{err}");
        assert_eq!(
            std::fs::read(tmp.path().join("data")).unwrap(),
            b"someone else's"
        );
        assert!(tmp.path().join(part_name(&manifest.id())).exists(), "kept");
        std::fs::remove_file(tmp.path().join("data")).unwrap();
        assert!(matches!(
            finish(&dir, &file, &manifest.id(), &name),
            Ok(Finished::Renamed)
        ));
        assert_eq!(std::fs::read(tmp.path().join("data")).unwrap(), data);
        // Now it is present: opening again finds it without a `.part` file.
        assert!(matches!(
            open_download(Dir::open(tmp.path()).unwrap(), &name, &manifest),
            Ok(Opened::Present { .. })
        ));
        assert!(!tmp.path().join(part_name(&manifest.id())).exists());
    }

    fn manifest_of(data: &[u8]) -> Manifest {
        let lengths = bitswarm_protocols::Lengths::for_size(data.len() as u64).unwrap();
        let mut hasher = bitswarm_protocols::PieceHasher::new(lengths);
        while let Some(piece) = hasher.next_piece() {
            let start = lengths.offset(piece) as usize;
            let end = start + lengths.piece_len(piece) as usize;
            hasher.update(piece, &data[start..end]);
        }
        let (_, values) = hasher.finish();
        Manifest::new(FileName::new("data").unwrap(), lengths, values).unwrap()
    }
}
