//! Peers: LAN discovery, static peers (addresses the user gave, probed every
//! [`STATIC_PROBE_EVERY`]), the peer events `WatchPeers` streams, and turning what the user typed
//! as a peer into an address to dial. The peer book is this file's state ([`PeerBook`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::broadcast;

use super::errors::PeerLookupError;
use super::{Node, NodeError, lock, now_ms};
use crate::error_chain;
use crate::net::discovery::{Discovery, DiscoveryConfig, Peer, PeerEvent};

/// How long a static peer waits between connection attempts.
const STATIC_PROBE_EVERY: Duration = Duration::from_secs(10);
/// Peer events buffered per subscriber before a slow one misses some.
const PEER_EVENTS: usize = 1024;

/// The peers the node knows of: those discovery heard, the static ones, and their events.
#[derive(Debug)]
pub(super) struct PeerBook {
    // LAN discovery, once started (it needs the runtime and may be disabled): set once, read
    // without a lock.
    discovery: OnceLock<Arc<Discovery>>,
    // Static peers by the address the user gave, with what their last session told us. Each
    // probe task updates its own slot; RPCs read the list. A short std lock.
    statics: Mutex<Vec<(String, Option<Peer>)>>,
    // Peer changes, discovered and static, for every `WatchPeers` subscriber (discovery holds
    // a clone of the sender).
    events: broadcast::Sender<PeerEvent>,
}

impl Default for PeerBook {
    fn default() -> Self {
        PeerBook {
            discovery: OnceLock::new(),
            statics: Mutex::new(Vec::new()),
            events: broadcast::channel(PEER_EVENTS).0,
        }
    }
}

impl PeerBook {
    /// Tells discovery (if it runs) the device's new name.
    pub(super) fn rename(&self, name: &str) {
        if let Some(d) = self.discovery.get() {
            d.set_name(name);
        }
    }

    /// Records what the last probe of static peer `addr` found (`None`: not reachable) and
    /// sends the change, if any. False if `addr` is no static peer.
    fn probed(&self, addr: &str, up: Option<Peer>) -> bool {
        let event = {
            let mut list = lock(&self.statics);
            let Some(slot) = list.iter_mut().find(|(a, _)| a == addr) else {
                return false;
            };
            let event = match (&slot.1, &up) {
                (None, Some(p)) => Some(PeerEvent::Appeared(p.clone())),
                (Some(old), None) => Some(PeerEvent::Lost(old.clone())),
                (Some(old), Some(p)) if old.id != p.id || old.name != p.name => {
                    Some(PeerEvent::Changed(p.clone()))
                }
                _ => None,
            };
            slot.1 = up;
            event
        };
        if let Some(ev) = event {
            let _ = self.events.send(ev);
        }
        true
    }

    /// Peers found by discovery and static peers that are up: (peer, whether static).
    fn list(&self) -> Vec<(Peer, bool)> {
        let mut v: Vec<(Peer, bool)> = self
            .discovery
            .get()
            .map(|d| d.peers().into_iter().map(|p| (p, false)).collect())
            .unwrap_or_default();
        for (_, p) in lock(&self.statics).iter() {
            if let Some(p) = p {
                if !v.iter().any(|(q, _)| q.id == p.id) {
                    v.push((p.clone(), true));
                }
            }
        }
        v
    }
}

/// Whether `text` is an address (`HOST:PORT`, `[V6]:PORT`, optionally `ID@…`) rather than a
/// peer name.
fn looks_like_address(text: &str) -> bool {
    if text.contains('@') || text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    matches!(text.rsplit_once(':'), Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok())
}

impl Node {
    /// Starts LAN discovery on UDP `port`.
    ///
    /// # Errors
    /// [`NodeError::Discovery`] if the socket cannot be opened.
    pub fn start_discovery(&self, port: u16) -> Result<u16, NodeError> {
        let d = Discovery::start(
            DiscoveryConfig {
                port,
                device_id: self.inner.identity.device_id,
                listen_port: self.inner.listen_addr.port(),
            },
            self.settings().name,
            self.inner.peers.events.clone(),
            &self.inner.tasks,
            &self.inner.shutdown,
        )?;
        let port = d.port();
        let _ = self.inner.peers.discovery.set(d);
        Ok(port)
    }

    /// Keeps sessions to these addresses (for networks broadcast does not reach) and lists
    /// them as peers while they are up. Each is retried every 10 s.
    pub fn add_static_peers(&self, addrs: Vec<String>) {
        for addr in addrs {
            lock(&self.inner.peers.statics).push((addr.clone(), None));
            let node = self.clone();
            let span = tracing::info_span!("static peer", %addr);
            self.spawn(span, async move { node.probe_static(addr).await });
        }
    }

    async fn probe_static(self, addr: String) {
        loop {
            let up = match self.connect(&addr).await {
                Ok(s) => Some(Peer {
                    id: s.peer.id,
                    name: s.peer.name.clone(),
                    addr: s.peer.listen_addr,
                    protocol_version: crate::net::wire::PROTOCOL_VERSION,
                    last_seen_ms: now_ms(),
                    is_static: true,
                }),
                Err(e) => {
                    tracing::debug!(peer = %addr, cause = %error_chain(&e), "static peer not reachable");
                    None
                }
            };
            if !self.inner.peers.probed(&addr, up) {
                return;
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(STATIC_PROBE_EVERY) => {}
            }
        }
    }

    /// Peers found by discovery and static peers that are up: (peer, whether static).
    pub fn peers(&self) -> Vec<(Peer, bool)> {
        self.inner.peers.list()
    }

    /// Subscribes to peer changes (discovered and static).
    pub fn subscribe_peers(&self) -> broadcast::Receiver<PeerEvent> {
        self.inner.peers.events.subscribe()
    }

    /// Turns what the user typed as a peer into `HOST:PORT` or `ID@HOST:PORT`: addresses pass
    /// through; anything else is a peer name (or id prefix) looked up among discovered peers.
    pub(super) fn resolve_target(&self, text: &str) -> Result<String, PeerLookupError> {
        let text = text.trim();
        if looks_like_address(text) {
            return Ok(text.to_owned());
        }
        let peers = self.peers();
        let want = crate::net::device_id::normalize(text);
        let matches: Vec<&Peer> = peers
            .iter()
            .map(|(p, _)| p)
            .filter(|p| {
                p.name.eq_ignore_ascii_case(text)
                    || (want.len() >= 4
                        && crate::net::device_id::normalize(&p.id.to_string()).starts_with(&want))
            })
            .collect();
        let describe = |p: &Peer| format!("{} ({}, {})", p.name, p.id.short(), p.addr);
        match matches.as_slice() {
            [one] if !one.compatible() => Err(PeerLookupError::Incompatible {
                peer: describe(one),
                version: one.protocol_version,
                ours: crate::net::wire::PROTOCOL_VERSION,
            }),
            // The beacon's id is required: a device answering at that address with another key
            // is an impostor.
            [one] => Ok(format!("{}@{}", one.id, one.addr)),
            [] if peers.is_empty() => Err(PeerLookupError::NoPeers(text.to_owned())),
            [] => Err(PeerLookupError::NoMatch {
                name: text.to_owned(),
                known: peers.iter().map(|(p, _)| describe(p)).collect(),
            }),
            many => Err(PeerLookupError::Ambiguous {
                name: text.to_owned(),
                matches: many.iter().map(|p| describe(p)).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::device_id::DeviceId;

    #[test]
    fn addresses_are_told_from_peer_names() {
        for addr in ["127.0.0.1:7", "[::1]:7", "host:7", "ID@host:7", "a@b"] {
            assert!(looks_like_address(addr), "{addr}");
        }
        for name in ["laptop", "my-pc", ":7", "host:port", "host:70000"] {
            assert!(!looks_like_address(name), "{name}");
        }
    }

    #[test]
    fn a_static_peer_reports_appeared_changed_and_lost() {
        let book = PeerBook::default();
        let mut events = book.events.subscribe();
        lock(&book.statics).push(("h:1".into(), None));
        let peer = |name: &str| Peer {
            id: DeviceId::from_spki(b"p"),
            name: name.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            protocol_version: crate::net::wire::PROTOCOL_VERSION,
            last_seen_ms: 0,
            is_static: true,
        };
        assert!(!book.probed("elsewhere:1", None), "not a static peer");
        assert!(book.probed("h:1", Some(peer("a"))));
        assert!(matches!(events.try_recv(), Ok(PeerEvent::Appeared(p)) if p.name == "a"));
        assert!(book.probed("h:1", Some(peer("a"))));
        assert!(events.try_recv().is_err(), "no change, no event");
        assert!(book.probed("h:1", Some(peer("b"))));
        assert!(matches!(events.try_recv(), Ok(PeerEvent::Changed(p)) if p.name == "b"));
        assert_eq!(book.list().len(), 1);
        assert!(book.probed("h:1", None));
        assert!(matches!(events.try_recv(), Ok(PeerEvent::Lost(p)) if p.name == "b"));
        assert!(book.list().is_empty());
    }
}
