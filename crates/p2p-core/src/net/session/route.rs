//! Routing inside a session: where each transfer's frames go, which attempt's chunks a
//! receiving route takes, and how many bytes of large chunks it may hold — the bound that keeps a
//! peer which ignores the window from filling memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use p2p_proto::wire::v1::frame::Body;
use p2p_proto::wire::v1::{self as wire};
use tokio::sync::mpsc;

use crate::transfer::{MAX_CHUNK, MAX_IN_FLIGHT_BYTES, MAX_WINDOW, SMALL_FILE, SMALL_FILE_WINDOW};

/// Where a transfer's frames go, and (receiving side) which attempt's chunks it takes.
#[derive(Debug, Clone)]
pub(super) struct Route {
    /// The attempt whose chunks this route takes (0 on the sending side).
    pub(super) attempt: u32,
    /// The owner of the transfer.
    pub(super) tx: mpsc::Sender<Body>,
    // Payload bytes of this transfer's large chunks alive on the receiver (see `LARGE_HELD_MAX`).
    large_held: Arc<AtomicUsize>,
}

impl Route {
    pub(super) fn new(attempt: u32, tx: mpsc::Sender<Body>) -> Self {
        Route {
            attempt,
            tx,
            large_held: Arc::default(),
        }
    }

    /// Counts a large chunk's payload against the route for as long as it lives (queued for
    /// the receiving thread, held out of order, being written); false if that would exceed
    /// what an honest sender can have in flight.
    pub(super) fn hold(&self, c: &mut wire::Chunk) -> bool {
        let len = c.data.len();
        if len as u64 <= SMALL_FILE {
            return true;
        }
        if self.large_held.fetch_add(len, Ordering::Relaxed) + len > LARGE_HELD_MAX {
            self.large_held.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        c.data = Bytes::from_owner(Held {
            data: std::mem::take(&mut c.data),
            held: self.large_held.clone(),
        });
        true
    }
}

/// The most payload of large chunks (more than `SMALL_FILE` bytes) a transfer may have alive
/// on the receiver: an honest sender keeps `window × chunk_size` within `MAX_IN_FLIGHT_BYTES`;
/// one chunk more is in the receiving thread's hands, and the chunks it acknowledged but the
/// hashing thread has yet to hash (`filehash::HASH_QUEUE` queued, one being hashed) live on
/// beyond the window. The route's frame count alone would not bound it: its slots for small
/// files could otherwise be filled with chunks of 16 MiB.
const LARGE_HELD_MAX: usize = MAX_IN_FLIGHT_BYTES as usize
    + (2 + crate::transfer::place::filehash::HASH_QUEUE) * MAX_CHUNK as usize;

/// A chunk's payload, counted in its route's `large_held` until dropped.
struct Held {
    data: Bytes,
    held: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.data.len(), Ordering::Relaxed);
    }
}

/// Frames a transfer may have queued for its owner beyond its window (FileDone, Complete,
/// Cancel and the like).
pub(crate) const ROUTE_SLACK: usize = 16;

/// Capacity of a transfer's frame channel: a peer that keeps to the window never fills it.
/// Small files have a window of their own, and each may have two frames on the way (its chunk
/// and `FileDone`; its chunk's acknowledgement and `FileResult`).
pub(crate) fn route_capacity(window: u32) -> usize {
    (window.clamp(1, MAX_WINDOW) as usize) + 2 * SMALL_FILE_WINDOW as usize + ROUTE_SLACK
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large chunks count against their route for as long as they live, up to what an honest
    /// sender can have in flight; small ones do not count.
    #[test]
    fn a_route_holds_large_chunks_up_to_a_bound_in_bytes() {
        let (tx, _rx) = mpsc::channel(4);
        let route = Route::new(1, tx);
        let chunk = |len: usize| wire::Chunk {
            data: Bytes::from(vec![7u8; len]),
            ..Default::default()
        };
        let big = MAX_CHUNK as usize;
        let mut held = Vec::new();
        while held.len() * big + big <= LARGE_HELD_MAX {
            let mut c = chunk(big);
            assert!(route.hold(&mut c), "within the bound: {} held", held.len());
            assert_eq!(c.data.len(), big, "the payload is untouched");
            held.push(c);
        }
        assert!(!route.hold(&mut chunk(big)), "beyond the bound");
        let mut small = chunk(SMALL_FILE as usize);
        assert!(route.hold(&mut small), "small chunks do not count");
        // A chunk the receiver is done with frees its bytes (clones of its payload included).
        let copy = held[0].data.clone();
        drop(held.remove(0));
        assert!(
            !route.hold(&mut chunk(big)),
            "a copy of the payload still lives"
        );
        drop(copy);
        assert!(route.hold(&mut chunk(big)));
        assert_eq!(
            route.large_held.load(Ordering::Relaxed),
            held.len() * big,
            "the chunk just held was dropped again"
        );
    }
}
