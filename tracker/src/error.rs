//! Errors of the tracker library: setting up the transport, listening, loading the key.
//!
//! Failures of single requests are not errors here: they are answered with a wire
//! [`bitswarm_protocols::ErrorCode`] and reported as [`crate::Event`]s.

use std::{io, time::Duration};

use bitswarm_protocols::keyfile::KeyError;
use libp2p::Multiaddr;

/// Why the tracker could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Noise security upgrade could not be set up with the keypair.
    #[error("cannot set up noise encryption")]
    Noise(#[from] libp2p::noise::Error),
    /// The system DNS configuration could not be read.
    #[error("cannot set up the DNS resolver")]
    Dns(#[source] io::Error),
    /// No transport of the tracker can listen on this address (TCP only, for now).
    #[error("cannot listen on {0}: not a TCP address")]
    UnsupportedAddr(Multiaddr),
    /// Listening on an address failed, when starting or before it produced an address.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: Multiaddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A listener did not report its address in time.
    #[error("no listen address after {0:?}")]
    BindTimeout(Duration),
    /// The key file could not be loaded or created.
    #[error("cannot load the tracker key")]
    Key(#[from] KeyError),
}

/// A result with [`Error`] by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;
