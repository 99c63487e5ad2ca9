//! Every task p2pd spawns: registered with a tracker that shutdown joins, and run inside a
//! tracing span that names it (which RPC, which socket), so that its log lines say whose they
//! are. There is no bare `tokio::spawn` in p2pd.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A set of tracked tasks. Clones share the set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tasks {
    /// Counts the running tasks and lets shutdown wait for them (closed when joining).
    tracker: TaskTracker,
}

impl Tasks {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` inside `span`, registered with this set.
    pub(crate) fn spawn<F>(&self, span: tracing::Span, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task.instrument(span))
    }

    /// Closes the set and waits until every task in it has ended (a task spawned meanwhile is
    /// waited for too).
    pub(crate) async fn join(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}
