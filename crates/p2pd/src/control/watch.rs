//! The plumbing of every `Watch*` stream, written once: the items of an initial snapshot, then
//! the node's broadcast events mapped to proto messages by a [`Feed`], forwarded by one tracked
//! task into a bounded channel that the gRPC response streams from.
//!
//! The forwarder stops when its client goes away (the channel closes), when the server or the
//! node shuts down, when the node's event channel closes, or when its feed says it is
//! finished. It waits for a slow client rather than dropping messages: the channel holds
//! [`WATCH_BUFFER`] messages. Only when the node's broadcast buffer overruns (the watcher fell
//! too far behind) does the feed decide what replaces the missed events ([`Feed::lagged`]).

use p2p_core::Node;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::tasks::Tasks;

/// Messages buffered per watcher before the forwarder waits for the client.
const WATCH_BUFFER: usize = 64;

/// The response stream of a `Watch*` call.
pub(crate) type WatchStream<T> = ReceiverStream<Result<T, Status>>;

/// What one kind of `Watch*` stream says: how the node's events become messages, and what to
/// say after missing some.
pub(crate) trait Feed: Send + 'static {
    /// The event the node broadcasts.
    type Event: Clone + Send + 'static;
    /// The message the stream carries.
    type Item: Send + 'static;

    /// The message for one event, if the watcher wants it.
    fn event(&mut self, event: Self::Event) -> Option<Self::Item>;

    /// The messages that stand for the events the watcher missed by lagging.
    fn lagged(&mut self) -> Vec<Self::Item>;

    /// Whether the stream has said everything (checked before each event is awaited).
    fn finished(&self) -> bool {
        false
    }
}

/// Where `Watch*` calls run their forwarders, and what stops them.
#[derive(Debug, Clone)]
pub(crate) struct Watchers {
    /// The forwarders; `serve` joins them before it returns.
    tasks: Tasks,
    /// The server's shutdown.
    server_stop: CancellationToken,
    /// The node's shutdown.
    node_stop: CancellationToken,
}

impl Watchers {
    /// Forwarders of `node`'s events, registered with `tasks`, stopped by `server_stop` or the
    /// node's shutdown.
    pub(crate) fn new(tasks: Tasks, server_stop: CancellationToken, node: &Node) -> Self {
        Watchers {
            tasks,
            server_stop,
            node_stop: node.shutdown_token().clone(),
        }
    }

    /// Streams `initial`, then what `feed` makes of `events`, from a task running in `span`.
    /// Subscribe to `events` before taking the snapshot `initial` is made of, so that no
    /// change falls between the two.
    pub(crate) fn forward<F: Feed>(
        &self,
        span: tracing::Span,
        initial: Vec<F::Item>,
        events: broadcast::Receiver<F::Event>,
        feed: F,
    ) -> WatchStream<F::Item> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let out = Out {
            tx,
            server_stop: self.server_stop.clone(),
            node_stop: self.node_stop.clone(),
        };
        self.tasks.spawn(span, out.run(initial, events, feed));
        ReceiverStream::new(rx)
    }
}

/// The sending end of one watcher.
struct Out<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    server_stop: CancellationToken,
    node_stop: CancellationToken,
}

impl<T: Send + 'static> Out<T> {
    /// The forwarder's loop.
    async fn run<F: Feed<Item = T>>(
        self,
        initial: Vec<T>,
        mut events: broadcast::Receiver<F::Event>,
        mut feed: F,
    ) {
        for item in initial {
            if !self.send(item).await {
                return;
            }
        }
        loop {
            if feed.finished() {
                return;
            }
            let received = tokio::select! {
                _ = self.server_stop.cancelled() => return,
                _ = self.node_stop.cancelled() => return,
                _ = self.tx.closed() => return,
                e = events.recv() => e,
            };
            match received {
                Ok(event) => {
                    if let Some(item) = feed.event(event) {
                        if !self.send(item).await {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "watcher fell behind the node's events");
                    for item in feed.lagged() {
                        if !self.send(item).await {
                            return;
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Sends one message, waiting for room; false once the client is gone or shutdown began.
    async fn send(&self, item: T) -> bool {
        tokio::select! {
            _ = self.server_stop.cancelled() => false,
            _ = self.node_stop.cancelled() => false,
            sent = self.tx.send(Ok(item)) => sent.is_ok(),
        }
    }
}
