//! Bytes of answers sent and not yet read, per host and in all.
//!
//! An answer's bytes are held from the moment it is handed to the stream until the stream
//! reports it sent (or failed): a peer that asks and never reads keeps them. Like a node's
//! serving limits, this counts them, so that one host's unread answers cannot grow the
//! tracker's memory: past its share, its requests are refused with a few bytes until it reads.

use std::collections::HashMap;

use bitswarm_protocols::tracker::{Reply, Response};
use std::hash::Hash;

use crate::index::hosts::Prefix;

/// Default most unread answer bytes of one host.
pub const DEFAULT_MAX_HOST_BYTES: usize = 4 << 20;
/// Default most unread answer bytes in all.
pub const DEFAULT_MAX_TOTAL_BYTES: usize = 256 << 20;

/// Unread answers by request `K`, counted.
#[derive(Debug)]
pub(crate) struct Replies<K> {
    max_host: usize,
    max_total: usize,
    total: usize,
    per_host: HashMap<Prefix, usize>,
    pending: HashMap<K, (Option<Prefix>, usize)>,
}

impl<K: Hash + Eq> Replies<K> {
    pub(crate) fn new(max_host: usize, max_total: usize) -> Self {
        Replies {
            max_host,
            max_total,
            total: 0,
            per_host: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Whether `host` (`None`: not counted per host) may be sent another answer now.
    pub(crate) fn has_room(&self, host: Option<Prefix>) -> bool {
        let on_host = host.map_or(0, |h| self.per_host.get(&h).copied().unwrap_or(0));
        self.total < self.max_total && on_host < self.max_host
    }

    /// Counts the answer to `request` for `host`.
    pub(crate) fn sent(&mut self, request: K, host: Option<Prefix>, bytes: usize) {
        self.total += bytes;
        if let Some(h) = host {
            *self.per_host.entry(h).or_default() += bytes;
        }
        self.pending.insert(request, (host, bytes));
    }

    /// The answer to `request` was read (or its stream failed).
    pub(crate) fn done(&mut self, request: K) {
        let Some((host, bytes)) = self.pending.remove(&request) else {
            return;
        };
        self.total = self.total.saturating_sub(bytes);
        if let Some(h) = host {
            if let Some(n) = self.per_host.get_mut(&h) {
                *n = n.saturating_sub(bytes);
                if *n == 0 {
                    self.per_host.remove(&h);
                }
            }
        }
    }

    /// Unread bytes in all.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.total
    }
}

/// About the encoded size of `response` (never less), without encoding it.
pub(crate) fn encoded_len(response: &Response) -> usize {
    const ITEM: usize = 96;
    match response {
        Ok(Reply::Providers(records)) => {
            records
                .iter()
                .map(|r| {
                    ITEM + r.name.as_str().len()
                        + r.providers
                            .iter()
                            .map(|p| ITEM + p.addrs.iter().map(|a| a.len() + 4).sum::<usize>())
                            .sum::<usize>()
                })
                .sum::<usize>()
                + ITEM
        }
        Ok(Reply::Found(hits)) => {
            hits.iter()
                .map(|h| ITEM + h.name.as_str().len())
                .sum::<usize>()
                + ITEM
        }
        _ => ITEM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_past_its_unread_bytes_has_no_room_until_it_reads() {
        let mut r = Replies::<u64>::new(100, 1000);
        let host = Some(Prefix::V4(0xc633_6407, 32));
        let ids = [0u64, 1, 2];
        assert!(r.has_room(host));
        r.sent(ids[0], host, 60);
        assert!(r.has_room(host));
        r.sent(ids[1], host, 60);
        assert!(!r.has_room(host), "120 of 100 unread");
        assert!(
            r.has_room(Some(Prefix::V4(1, 32))),
            "another host is not held back"
        );
        r.done(ids[0]);
        assert!(r.has_room(host));
        r.sent(ids[2], None, 1000);
        assert!(!r.has_room(None), "the total bounds uncounted hosts too");
        r.done(ids[2]);
        r.done(ids[1]);
        assert_eq!(r.total(), 0);
    }
}
