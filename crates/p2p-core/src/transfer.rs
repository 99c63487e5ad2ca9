//! Transfers: what one carries, how it is sent and received, and the registry that tracks every
//! transfer's state and progress.
//!
//! - [`options`]: chunk and window bounds, small files, per-transfer options and their checks.
//! - [`registry`]: the registry of transfers, their state, progress, events and speed limits.
//! - [`manifest`]: what a transfer carries; validation of a peer's manifest.
//! - `chunkmap`: bitmaps of the chunks of a file that are done.
//! - [`ratelimit`]: token buckets with a live-changeable rate (per-transfer and global limits).
//! - `send`: the sending side of a transfer (window, adaptive compression, hashing).
//! - `receive`: the receiving side of a pushed transfer — the receive loop, the window,
//!   acknowledgements, checkpoints and resume — feeding `place`.
//! - `place`: the pipeline every received byte ends in — destination naming, temporary files,
//!   hashing, verification, sync and atomic placement — with no knowledge of the push protocol.
//!
//! The invariants that keep the sender's window, the receiver's trackers and the resume records
//! consistent are written in `STATE.md` beside this module.

pub(crate) mod chunkmap;
pub mod manifest;
pub mod options;
pub(crate) mod place;
pub mod ratelimit;
pub(crate) mod receive;
pub mod registry;
pub(crate) mod send;

pub use options::{
    DEFAULT_CHUNK, DEFAULT_LEVEL, DEFAULT_WINDOW, MAX_CHUNK, MAX_IN_FLIGHT_BYTES,
    MAX_SECONDS_PER_CHUNK, MAX_WINDOW, MIN_CHUNK, SMALL_FILE, SMALL_FILE_WINDOW, SendOptions,
    is_small,
};
pub use registry::{
    Direction, FinalHook, NewTransfer, TransferEntry, TransferSnapshot, TransferState, Transfers,
};
