//! The node's identity on disk: an Ed25519 key in a file created with 0600 permissions.
//!
//! The only I/O in this crate; it lives here because the tracker and the peer both need it and
//! neither depends on the other.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use libp2p::identity::Keypair;

/// A key file that cannot be read, created or decoded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("cannot access key file {path}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not hold a protobuf-encoded libp2p keypair.
    #[error("key file {0} is not a libp2p keypair")]
    Decode(PathBuf),
}

/// Loads the keypair at `path`, or creates a new Ed25519 keypair there (mode 0600, parent
/// directories created) when the file does not exist.
///
/// # Errors
/// [`KeyError`] when the file cannot be read, written or decoded.
pub fn load_or_create(path: &Path) -> Result<Keypair, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    match fs::read(path) {
        Ok(bytes) => {
            Keypair::from_protobuf_encoding(&bytes).map_err(|_| KeyError::Decode(path.to_owned()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|_| KeyError::Decode(path.to_owned()))?;
            match create_atomically(path, &bytes) {
                Ok(()) => Ok(key),
                // Another process created it first: use that one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load_or_create(path),
                Err(e) => Err(io_err(e)),
            }
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Writes `bytes` to `path` so that the file appears complete or not at all: a temporary file
/// (mode 0600) is written and fsynced, then hard-linked to `path`, which fails if `path` exists
/// (no key is ever replaced), and the directory is fsynced. A crash leaves at most a stray
/// temporary file, never an empty or torn key that breaks every later start.
fn create_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            dir.to_owned()
        }
        None => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    linked?;
    // Persist the new directory entry.
    fs::File::open(&dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_then_reloaded() {
        let dir = std::env::temp_dir().join(format!("bitswarm-key-{}", std::process::id()));
        let path = dir.join("sub/node.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let entries: Vec<_> = fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temporary file left beside the key");
        fs::write(&path, b"junk").unwrap();
        assert!(matches!(load_or_create(&path), Err(KeyError::Decode(_))));
        fs::remove_dir_all(dir).unwrap();
    }
}
