//! Errors of the node library.

use std::{io, path::PathBuf};

use bitswarm_protocols::{ErrorCode, FileId, TypeError};

/// Result of node operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed node operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event loop has stopped (shut down, or every handle dropped).
    #[error("node stopped")]
    NodeStopped,
    /// The node was started without a tracker address.
    #[error("no tracker configured")]
    NoTracker,
    /// The tracker could not be reached.
    #[error("tracker unreachable: {0}")]
    TrackerUnreachable(String),
    /// The tracker refused the request.
    #[error("tracker refused the request: {0}")]
    Tracker(ErrorCode),
    /// The tracker answered with a reply that does not fit the request.
    #[error("tracker sent an unexpected reply")]
    UnexpectedReply,
    /// A local file could not be shared.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// Building the transport or listening failed.
    #[error("cannot start the node: {0}")]
    Transport(String),
    /// [`crate::Client::with_extension`] named another type than the node's extension.
    #[error("the node's extension is {actual}, not {expected}")]
    WrongExtension {
        /// The type the closure asked for.
        expected: &'static str,
        /// The node's extension type.
        actual: &'static str,
    },
    /// A [`crate::Client::with_extension`] closure panicked; the extension may be left half
    /// updated.
    #[error("the extension closure panicked")]
    ExtensionPanicked,
    /// A [`crate::Client::with_extension`] closure queued more dials than one call may.
    #[error("too many dials queued in one extension call (at most {max})")]
    TooManyDials {
        /// [`crate::MAX_EXTENSION_DIALS`].
        max: usize,
    },
    /// [`crate::Client::unshare`]: this node shares no file or directory with this id.
    #[error("{0} is not shared by this node")]
    NotShared(FileId),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: libp2p::Multiaddr,
        /// The cause.
        #[source]
        source: libp2p::TransportError<io::Error>,
    },
}

/// Why a file could not be shared.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// Reading the file failed.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The path is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// Its name has control characters, which trackers do not index.
    #[error(
        "cannot share {0:?}: its name has control characters, which trackers refuse; rename it"
    )]
    ControlCharacters(PathBuf),
    /// Its name or size does not fit the content model.
    #[error("cannot share {path}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: TypeError,
    },
    /// A directory does not fit a collection.
    #[error("cannot share directory {path}")]
    Collection {
        /// The directory or file at fault.
        path: PathBuf,
        /// The cause.
        #[source]
        source: bitswarm_protocols::CollectionError,
    },
    /// The hashing task failed.
    #[error("hashing task failed")]
    Task,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The tracker knows no file by that name or id.
    #[error("unknown file {0:?}: the tracker knows no such name or id")]
    UnknownFile(String),
    /// The name matches several different files.
    #[error("name {name:?} matches {} different files; get one by id: {}", ids.len(), ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// The name.
        name: String,
        /// The ids it matches.
        ids: Vec<FileId>,
    },
    /// No provider sent data for the configured wait: every peer holding the file is gone,
    /// failed, or none could be reached. The `.part` file and resume record are kept.
    #[error("no provider for {file}: none sent data for {}s{} (the .part file is kept; run get again to resume)", waited.as_secs(), last_problem.as_ref().map(|p| format!("; last problem: {p}")).unwrap_or_default())]
    NoProviders {
        /// The file.
        file: FileId,
        /// How long it waited.
        waited: std::time::Duration,
        /// Why the last provider was dropped, if one was.
        last_problem: Option<String>,
    },
    /// The collection's bytes match its id but are not a valid collection (an unsafe path, a
    /// duplicate, ...): whoever made it is hostile, and nothing was written.
    #[error("collection {id} is invalid")]
    InvalidCollection {
        /// The collection id.
        id: FileId,
        /// What is wrong with it.
        #[source]
        source: bitswarm_protocols::CollectionError,
    },
    /// An entry of a collection is itself a collection: not supported.
    #[error("{0} is a collection inside a collection")]
    NestedCollection(FileId),
    /// `--file` names no entry of the collection.
    #[error("collection {id} has no file {path}")]
    NoSuchEntry {
        /// The collection id.
        id: FileId,
        /// The path asked for.
        path: String,
    },
    /// This node is downloading the file already.
    #[error("this node is downloading {0} already")]
    Busy(FileId),
    /// The file is larger than the get allows (`--max-size`).
    #[error("{id} is {size} bytes, more than the limit of {max} bytes (raise it with --max-size)")]
    TooLarge {
        /// The file or collection.
        id: FileId,
        /// Its size (as the tracker or its manifest says).
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A disk task of the download failed unexpectedly (a bug); the `.part` file is kept.
    #[error("internal error: a disk task of the download failed (the .part file is kept)")]
    TaskFailed,
    /// Where the file lands: it exists, is locked, no space, a planted link, a full disk.
    #[error(transparent)]
    Place(#[from] crate::place::PlaceError),
    /// The target file exists already with other content, or the output directory is unusable.
    #[error("cannot write {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The download was cancelled ([`crate::Client::cancel`], [`crate::Download::cancel`]).
    /// Its `.part` file is kept: a later get of the same file into the same directory resumes
    /// from the pieces verified so far. Nothing was written under the final name.
    #[error("download cancelled (the .part file is kept; run get again to resume)")]
    Cancelled,
    /// A tracker or node error.
    #[error(transparent)]
    Node(#[from] Error),
}
