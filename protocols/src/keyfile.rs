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
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(io_err)?;
            }
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).map_err(io_err)?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            Ok(key)
        }
        Err(e) => Err(io_err(e)),
    }
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
        fs::write(&path, b"junk").unwrap();
        assert!(matches!(load_or_create(&path), Err(KeyError::Decode(_))));
        fs::remove_dir_all(dir).unwrap();
    }
}
