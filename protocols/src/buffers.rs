//! A small pool of piece buffers.
//!
//! Pieces are ~1 MiB buffers made and dropped once per request on both ends. Above its mmap
//! threshold glibc serves each one with a fresh mapping (page faults, zeroing, mmap-lock
//! contention): measured on a 1 GiB loopback transfer, that churn cost ~3 CPU-s/GiB of ~10. The
//! codec takes piece buffers from here and the engines give them back once written, so a steady
//! transfer reuses a handful of buffers. At most [`MAX_POOLED`] are kept, which bounds the memory
//! the pool itself holds.

use std::sync::Mutex;

use crate::{MAX_PIECE_SIZE, MIN_PIECE_SIZE};

/// Most idle buffers kept.
pub const MAX_POOLED: usize = 32;

/// Idle piece buffers, shared by a node's transfer codec (which fills them from the network
/// and with piece reads) and its engines (which give them back once written or sent).
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    fn reuse(&self, len: usize) -> Option<Vec<u8>> {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        free.iter()
            .position(|b| b.capacity() >= len)
            .map(|i| free.swap_remove(i))
    }

    /// An empty buffer with room for at least `len` bytes, reused when one is free.
    pub fn take(&self, len: usize) -> Vec<u8> {
        match self.reuse(len) {
            Some(mut buf) => {
                buf.clear();
                buf
            }
            None => Vec::with_capacity(len),
        }
    }

    /// A buffer of exactly `len` bytes for the caller to overwrite completely (with
    /// `read_exact`): a reused buffer keeps its old bytes instead of being zeroed again, which
    /// saves a memset of every piece on both ends. Only a fresh allocation is zero-filled.
    pub fn take_filled(&self, len: usize) -> Vec<u8> {
        let mut buf = self.reuse(len).unwrap_or_default();
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        buf
    }

    /// Returns a piece buffer for reuse; buffers of other sizes, or past [`MAX_POOLED`], are
    /// freed.
    pub fn give(&self, buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap < MIN_PIECE_SIZE as usize || cap > MAX_PIECE_SIZE as usize {
            return;
        }
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if free.len() < MAX_POOLED {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_returned_buffer_then_it_is_reused_empty() {
        let pool = BufferPool::default();
        let mut a = pool.take(1 << 20);
        a.extend_from_slice(&[7; 100]);
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(1 << 20);
        assert!(b.is_empty());
        assert!(b.capacity() >= 1 << 20);
        assert_eq!(b.as_ptr(), ptr, "the same buffer, reused");
        pool.give(b);
        let f = pool.take_filled(1000);
        assert_eq!(f.len(), 1000);
        pool.give(f);
        pool.give(vec![0; 10]); // too small: dropped, never pooled
        assert!(pool
            .free
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.capacity() >= MIN_PIECE_SIZE as usize));
        for _ in 0..MAX_POOLED + 5 {
            pool.give(Vec::with_capacity(1 << 20));
        }
        assert_eq!(pool.free.lock().unwrap().len(), MAX_POOLED, "bounded");
    }
}
