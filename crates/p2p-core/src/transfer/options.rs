//! What a transfer may be: chunk and window limits, small files, the zstd level, and the
//! options of one outgoing transfer with their checks. Both sides use these bounds: the sender
//! to validate what the user asked for, the receiver to refuse a peer's manifest outside them.

use crate::transfer::ratelimit;

/// Smallest chunk size accepted.
pub const MIN_CHUNK: u32 = 4 << 10;
/// Largest chunk size accepted.
pub const MAX_CHUNK: u32 = 16 << 20;
/// Default chunk size.
pub const DEFAULT_CHUNK: u32 = 1 << 20;
/// Largest window accepted.
pub const MAX_WINDOW: u32 = 1024;
/// Default window: enough chunks in flight to fill a 1 Gbit/s link with 50 ms RTT.
pub const DEFAULT_WINDOW: u32 = 64;
/// Files of one chunk and at most this size are small: a small file does not take window
/// permits but one of `SMALL_FILE_WINDOW`, from its first frame until the receiver reports it
/// in place. Placing waits for the file to be durable, which the receiver does for many files at
/// once; a window of chunks would let only a few dozen small files wait at a time.
pub const SMALL_FILE: u64 = 64 << 10;
/// Small files a sender may have sent and not yet seen reported (at most 16 MiB of data).
pub const SMALL_FILE_WINDOW: u32 = 256;

/// Whether a file of `size` bytes is small (see `SMALL_FILE`) at this chunk size.
pub fn is_small(size: u64, chunk_size: u32) -> bool {
    size <= SMALL_FILE.min(u64::from(chunk_size))
}
/// Most payload bytes a transfer may have in flight (`chunk_size × window`). It bounds what a
/// receiver may have to hold for one transfer while a re-sent chunk is missing.
pub const MAX_IN_FLIGHT_BYTES: u64 = 128 << 20;
/// Default zstd level.
pub const DEFAULT_LEVEL: i32 = 3;

/// Options of one outgoing transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    /// Compress chunks (adaptive).
    pub compress: bool,
    /// zstd level.
    pub level: i32,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Chunks in flight.
    pub window: u32,
    /// This transfer's speed limit in bytes per second on the wire; 0 = unlimited. The
    /// daemon's global limit applies as well.
    pub max_speed: u64,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            compress: true,
            level: DEFAULT_LEVEL,
            chunk_size: DEFAULT_CHUNK,
            window: DEFAULT_WINDOW,
            max_speed: 0,
        }
    }
}

impl SendOptions {
    /// Checks the ranges.
    ///
    /// # Errors
    /// An [`OptionsError`] naming the bad option.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size) {
            return Err(OptionsError::ChunkSize(self.chunk_size));
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(OptionsError::Window(self.window));
        }
        if u64::from(self.chunk_size) * u64::from(self.window) > MAX_IN_FLIGHT_BYTES {
            return Err(OptionsError::InFlight {
                chunk_size: self.chunk_size,
                window: self.window,
            });
        }
        if !(-7..=22).contains(&self.level) || self.level == 0 {
            return Err(OptionsError::Level(self.level));
        }
        ratelimit::check_rate(self.max_speed)?;
        // A chunk must reach the receiver well within its idle limit.
        if self.max_speed > 0
            && u64::from(self.chunk_size) > self.max_speed.saturating_mul(MAX_SECONDS_PER_CHUNK)
        {
            return Err(OptionsError::TooSlowForChunk {
                max_speed: self.max_speed,
                chunk_size: self.chunk_size,
            });
        }
        Ok(())
    }
}

/// An option of an outgoing transfer that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The chunk size is outside [`MIN_CHUNK`]`..=`[`MAX_CHUNK`].
    #[error("chunk size {0} is outside {MIN_CHUNK}..={MAX_CHUNK} bytes")]
    ChunkSize(u32),
    /// The window is outside `1..=`[`MAX_WINDOW`].
    #[error("window {0} is outside 1..={MAX_WINDOW}")]
    Window(u32),
    /// Chunk size × window exceeds [`MAX_IN_FLIGHT_BYTES`].
    #[error(
        "chunk size {chunk_size} × window {window} exceeds {} MiB in flight; use a smaller window or chunk size",
        MAX_IN_FLIGHT_BYTES >> 20
    )]
    InFlight {
        /// The chunk size asked for.
        chunk_size: u32,
        /// The window asked for.
        window: u32,
    },
    /// The zstd level is not one zstd knows.
    #[error("compression level {0} is outside 1..=22 and -7..=-1")]
    Level(i32),
    /// The speed limit is below the minimum.
    #[error(transparent)]
    Rate(#[from] ratelimit::RateTooLow),
    /// At this speed limit one chunk would take longer than [`MAX_SECONDS_PER_CHUNK`].
    #[error(
        "speed limit {max_speed} bytes/s is too low for chunks of {chunk_size} bytes (one chunk would take over {MAX_SECONDS_PER_CHUNK} s); use a smaller chunk size"
    )]
    TooSlowForChunk {
        /// The speed limit, bytes per second.
        max_speed: u64,
        /// The chunk size.
        chunk_size: u32,
    },
}

/// Longest a single chunk may take at a transfer's own speed limit (the receiver gives up
/// on a transfer after `receive::TRANSFER_IDLE` without data).
pub const MAX_SECONDS_PER_CHUNK: u64 = 60;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_option_is_named() {
        let ok = SendOptions::default();
        assert_eq!(ok.validate(), Ok(()));
        let with = |f: fn(&mut SendOptions)| {
            let mut o = ok;
            f(&mut o);
            o.validate().unwrap_err()
        };
        assert_eq!(with(|o| o.chunk_size = 1), OptionsError::ChunkSize(1));
        assert_eq!(with(|o| o.window = 0), OptionsError::Window(0));
        assert!(matches!(
            with(|o| {
                o.chunk_size = MAX_CHUNK;
                o.window = MAX_WINDOW;
            }),
            OptionsError::InFlight { .. }
        ));
        assert_eq!(with(|o| o.level = 0), OptionsError::Level(0));
        assert!(matches!(with(|o| o.max_speed = 5), OptionsError::Rate(_)));
        assert!(matches!(
            with(|o| o.max_speed = 1024),
            OptionsError::TooSlowForChunk { .. }
        ));
        assert_eq!(
            OptionsError::Window(0).to_string(),
            format!("window 0 is outside 1..={MAX_WINDOW}")
        );
    }
}
