//! The transfers as the control API sees them: listing, one transfer, the event stream,
//! cancelling (either direction), per-transfer speed limits, and the history of ended ones.
//! Pausing and resuming belong to the sending side (`outgoing`).

use super::{Node, NodeError};
use crate::store::history::{HistoryEntry, HistoryFilter};
use crate::transfer::{Direction, TransferSnapshot, TransferState};

impl Node {
    /// Snapshots of every transfer since the node started.
    pub fn transfers(&self) -> Vec<TransferSnapshot> {
        self.inner.transfers.list()
    }

    /// One transfer.
    ///
    /// # Errors
    /// [`NodeError::NoTransfer`].
    pub fn transfer(&self, id: &str) -> Result<TransferSnapshot, NodeError> {
        self.inner
            .transfers
            .get(id)
            .map(|e| e.snapshot())
            .ok_or_else(|| NodeError::NoTransfer(id.to_owned()))
    }

    /// Subscribes to transfer events (subscribe before listing to miss nothing).
    pub fn subscribe_transfers(&self) -> tokio::sync::broadcast::Receiver<TransferSnapshot> {
        self.inner.transfers.subscribe()
    }

    /// Cancels a transfer in either direction.
    ///
    /// # Errors
    /// [`NodeError::NoTransfer`], or [`NodeError::TransferEnded`] if it already ended.
    pub fn cancel(&self, id: &str) -> Result<(), NodeError> {
        self.cancel_because(id, "cancelled by user")
    }

    /// Cancels a transfer, telling its peer `reason`.
    pub(super) fn cancel_because(&self, id: &str, reason: &str) -> Result<(), NodeError> {
        let entry = self
            .inner
            .transfers
            .get(id)
            .ok_or_else(|| NodeError::NoTransfer(id.to_owned()))?;
        let was = entry.state();
        if !entry.set_state(TransferState::Cancelled, reason) {
            return Err(NodeError::TransferEnded {
                id: id.to_owned(),
                state: entry.state(),
            });
        }
        self.inner.offers.withdraw(id);
        let running_here = self.inner.receiving.holds(id);
        if entry.direction == Direction::Receive
            && was == TransferState::Interrupted
            && !running_here
        {
            self.discard_incoming(id);
        }
        Ok(())
    }

    /// Changes the speed limit of an outgoing transfer (bytes per second, 0 = none), effective
    /// at once. Returns the transfer with its new limit.
    ///
    /// # Errors
    /// [`NodeError::NoTransfer`]; [`NodeError::Rate`] for a limit below the minimum;
    /// [`NodeError::TransferEnded`] or [`NodeError::Incoming`] (limits apply on the sending
    /// daemon); [`NodeError::Store`] if the limit cannot be recorded.
    pub fn set_transfer_limit(
        &self,
        id: &str,
        max_speed: u64,
    ) -> Result<TransferSnapshot, NodeError> {
        let entry =
            self.outgoing_entry(id, "speed limits apply on the sending daemon, set it there")?;
        let state = entry.state();
        if state.is_final() {
            return Err(NodeError::TransferEnded {
                id: id.to_owned(),
                state,
            });
        }
        crate::transfer::ratelimit::check_rate(max_speed)?;
        // Kept with the transfer's record, so the limit holds after a restart too.
        self.inner.store.set_outgoing_max_speed(id, max_speed)?;
        Ok(entry.set_max_speed(max_speed))
    }

    /// Ended transfers matching `filter`, newest first.
    ///
    /// # Errors
    /// [`NodeError::HistoryFilter`] for a bad filter value; [`NodeError::Store`] if the state
    /// store fails.
    pub fn history(&self, filter: &HistoryFilter) -> Result<Vec<HistoryEntry>, NodeError> {
        filter.validate()?;
        Ok(self.inner.store.list_history(filter)?)
    }

    /// Deletes the whole history. Returns how many records it held.
    ///
    /// # Errors
    /// [`NodeError::Store`] if the state store fails.
    pub fn clear_history(&self) -> Result<u64, NodeError> {
        let removed = self.inner.store.clear_history()?;
        tracing::info!(removed, "history cleared");
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::node;
    use crate::transfer::{SendOptions, TransferState};

    #[tokio::test]
    async fn two_nodes_transfer_a_file_in_process() {
        let a_dir = tempfile::tempdir().unwrap();
        let b_dir = tempfile::tempdir().unwrap();
        let a = node(a_dir.path());
        let b = node(b_dir.path());
        let src = a_dir.path().join("hello.txt");
        std::fs::write(&src, b"hello, peer").unwrap();
        // Untrusted offers always wait: the two trust each other first.
        a.trust(&b.identity().device_id.to_string(), None, None, None)
            .unwrap();
        b.trust(&a.identity().device_id.to_string(), None, None, None)
            .unwrap();
        let mut events = a.subscribe_transfers();
        let id = a
            .send(
                vec![src],
                &b.listen_addr().to_string(),
                SendOptions::default(),
            )
            .await
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let e = events.recv().await.unwrap();
                if e.id == id && e.state.is_final() {
                    return e;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(end.state, TransferState::Completed, "{}", end.error);
        assert_eq!(
            std::fs::read(b_dir.path().join("dl/hello.txt")).unwrap(),
            b"hello, peer"
        );
        assert_eq!(a.sessions().len(), 1);
        a.shutdown(Duration::from_secs(2)).await;
        b.shutdown(Duration::from_secs(2)).await;
    }
}
