//! Key files for peers: the default key of the first node on a machine is `peer-0.key` in the
//! data directory, and a second node started while the first runs takes `peer-1.key`, so two
//! peers on one machine never share an identity. Each slot is held by an exclusive lock on a
//! `.lock` file for as long as the returned [`KeySlot`] lives.

use std::{
    fs::{self, File, TryLockError},
    io,
    path::{Path, PathBuf},
};

use bitswarm_protocols::keyfile::{self, KeyError};
use libp2p::identity::Keypair;

/// Most default key slots tried before giving up.
pub const MAX_KEY_SLOTS: usize = 64;

/// A keypair together with the lock that reserves its key file for this process.
#[derive(Debug)]
pub struct KeySlot {
    /// The keypair.
    pub keypair: Keypair,
    /// The key file.
    pub path: PathBuf,
    _lock: File,
}

/// The default directory for peer keys: `<data dir>/bitswarm`.
pub fn default_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("bitswarm"))
}

/// Loads or creates the first unused `peer-N.key` in `dir`.
///
/// # Errors
/// [`KeyError`] when the directory or a key file cannot be used, or every slot is taken.
pub fn claim_default(dir: &Path) -> Result<KeySlot, KeyError> {
    let io_err = |path: &Path, source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    for n in 0..MAX_KEY_SLOTS {
        let lock_path = dir.join(format!("peer-{n}.lock"));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {
                let path = dir.join(format!("peer-{n}.key"));
                let keypair = keyfile::load_or_create(&path)?;
                return Ok(KeySlot {
                    keypair,
                    path,
                    _lock: lock,
                });
            }
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path, e)),
        }
    }
    Err(io_err(
        dir,
        io::Error::other("every default key slot is in use"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_claims_get_two_identities_and_a_released_slot_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = claim_default(dir.path()).unwrap();
        let b = claim_default(dir.path()).unwrap();
        assert_ne!(
            a.keypair.public().to_peer_id(),
            b.keypair.public().to_peer_id()
        );
        let a_id = a.keypair.public().to_peer_id();
        drop(a);
        let c = claim_default(dir.path()).unwrap();
        assert_eq!(c.keypair.public().to_peer_id(), a_id);
    }
}
