//! Tracing set-up: an env-filter that a config reload can replace, writing to stderr (foreground,
//! systemd's journal) or to a log file (`--daemon`).

use std::fs::File;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// Replaces the active log filter.
#[derive(Clone)]
pub(crate) struct LogHandle(reload::Handle<EnvFilter, tracing_subscriber::Registry>);

impl LogHandle {
    /// Applies a new filter; the filter was validated with [`parse_filter`] beforehand.
    pub(crate) fn set(&self, filter: &str) -> Result<(), String> {
        let f = parse_filter(filter)?;
        self.0.reload(f).map_err(|e| e.to_string())
    }
}

/// Parses a log filter (`info`, `p2pd=debug,warn`, …) with a message naming the problem.
pub(crate) fn parse_filter(s: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(s)
        .map_err(|e| format!("{s:?} is not a log filter: {e}"))
}

/// Installs the global subscriber. With `file`, log lines go there instead of stderr.
pub(crate) fn init(filter: &str, file: Option<File>) -> Result<LogHandle, String> {
    let (layer, handle) = reload::Layer::new(parse_filter(filter)?);
    let registry = tracing_subscriber::registry().with(layer);
    let result = match file {
        Some(f) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(Mutex::new(f)),
            )
            .try_init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    Ok(LogHandle(handle))
}
