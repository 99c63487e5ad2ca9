//! Zero-configuration LAN discovery: UDP beacons every 2 s on every up, broadcast-capable IPv4
//! interface (to its broadcast address) and on the IPv6 link-local all-nodes group, and the
//! table of peers heard from in the last 10 s.
//!
//! Several daemons on one host share the port (SO_REUSEADDR/SO_REUSEPORT); broadcasts reach
//! each of them. A newly seen peer is answered at once (rate-limited), so discovery takes well
//! under one interval. Everything a packet says is bounded and checked; a malformed packet is
//! dropped at trace level, and the table never holds more than [`MAX_PEERS`] entries.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p2p_proto::wire::v1::Beacon;
use prost::Message;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::net::device_id::DeviceId;
use crate::net::wire::PROTOCOL_VERSION;

/// Default UDP port of the beacons.
pub const DEFAULT_PORT: u16 = 14566;
/// How often a beacon is sent.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// A peer not heard from for this long is dropped.
pub const EXPIRY: Duration = Duration::from_secs(10);
/// Most peers tracked at once; beacons of further new devices are ignored.
pub const MAX_PEERS: usize = 256;
/// Largest beacon accepted.
pub const MAX_PACKET: usize = 512;
/// First bytes of every beacon.
pub const MAGIC: &[u8; 4] = b"P2PB";
/// The IPv6 link-local all-nodes group.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Immediate answers to new peers are sent at most this often.
const ANSWER_EVERY: Duration = Duration::from_millis(250);

/// A peer heard on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its device id, as its beacon says (a session must prove it).
    pub id: DeviceId,
    /// Its name.
    pub name: String,
    /// Its peer listen address (beacon source address + announced port).
    pub addr: SocketAddr,
    /// Its wire protocol version.
    pub protocol_version: u32,
    /// Last beacon, ms since the epoch.
    pub last_seen_ms: u64,
    /// Whether it is a static peer (`--peer-addr`) rather than one heard by discovery.
    pub is_static: bool,
}

impl Peer {
    /// Whether it speaks our protocol version.
    pub fn compatible(&self) -> bool {
        self.protocol_version == PROTOCOL_VERSION
    }
}

/// A change of the peer table.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A new peer.
    Appeared(Peer),
    /// Its name, address or version changed.
    Changed(Peer),
    /// Not heard from for [`EXPIRY`] (or gone by shutdown).
    Lost(Peer),
}

/// Settings of discovery.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// UDP port (0 picks one, useful only in tests).
    pub port: u16,
    /// Our device id.
    pub device_id: DeviceId,
    /// Our peer listen port.
    pub listen_port: u16,
}

struct Entry {
    peer: Peer,
    seen: Instant,
}

/// The running discovery service.
pub struct Discovery {
    config: DiscoveryConfig,
    instance: u64,
    // Read by the control API, written by the receivers and the sweeper; never held across an
    // await.
    table: Mutex<HashMap<DeviceId, Entry>>,
    events: broadcast::Sender<PeerEvent>,
    name: Mutex<String>,
    // Wakes the sender to answer a newly seen peer before the next interval.
    answer: Notify,
    last_answer_ms: AtomicU64,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("port", &self.config.port)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Errors of starting discovery.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the discovery socket on UDP port {port}")]
pub struct DiscoveryError {
    port: u16,
    #[source]
    source: std::io::Error,
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv4() {
        s.set_broadcast(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_multicast_loop_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

impl Discovery {
    /// Opens the sockets and starts sending, receiving and expiring. The IPv6 socket is
    /// optional: without IPv6 on the host, discovery runs on IPv4 alone.
    ///
    /// # Errors
    /// [`DiscoveryError`] if the IPv4 socket cannot be opened.
    pub fn start(
        config: DiscoveryConfig,
        name: String,
        events: broadcast::Sender<PeerEvent>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Arc<Self>, DiscoveryError> {
        let port = config.port;
        let v4 = udp_socket(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|source| DiscoveryError { port, source })?;
        let bound = v4.local_addr().map(|a| a.port()).unwrap_or(port);
        let v6 = match udp_socket(SocketAddr::from((Ipv6Addr::UNSPECIFIED, bound))) {
            Ok(s) => {
                // Every IPv6 interface is in the all-nodes group already; joining on the socket
                // makes the delivery explicit on every kernel.
                for t in targets(bound).1 {
                    if let SocketAddr::V6(a) = t {
                        if let Err(e) = s.join_multicast_v6(&ALL_NODES, a.scope_id()) {
                            tracing::debug!(interface = a.scope_id(), cause = %e, "cannot join ff02::1");
                        }
                    }
                }
                Some(Arc::new(s))
            }
            Err(e) => {
                tracing::debug!(cause = %e, "no IPv6 discovery socket");
                None
            }
        };
        let d = Arc::new(Discovery {
            config: DiscoveryConfig {
                port: bound,
                ..config
            },
            instance: rand_u64(),
            table: Mutex::new(HashMap::new()),
            events,
            name: Mutex::new(name),
            answer: Notify::new(),
            last_answer_ms: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let v4 = Arc::new(v4);
        let span = tracing::info_span!("discovery", port = bound);
        tasks.spawn(
            d.clone()
                .send_loop(v4.clone(), v6.clone(), shutdown.clone())
                .instrument(span.clone()),
        );
        tasks.spawn(
            d.clone()
                .receive_loop(v4, shutdown.clone())
                .instrument(span.clone()),
        );
        if let Some(v6) = v6 {
            tasks.spawn(
                d.clone()
                    .receive_loop(v6, shutdown.clone())
                    .instrument(span.clone()),
            );
        }
        tasks.spawn(d.clone().sweep_loop(shutdown.clone()).instrument(span));
        tracing::info!(port = bound, "LAN discovery started");
        Ok(d)
    }

    /// The UDP port in use.
    pub fn port(&self) -> u16 {
        self.config.port
    }

    /// Changes the name announced (config reload).
    pub fn set_name(&self, name: &str) {
        *lock(&self.name) = name.to_owned();
    }

    /// Peers heard from recently, by name.
    pub fn peers(&self) -> Vec<Peer> {
        let mut v: Vec<Peer> = lock(&self.table).values().map(|e| e.peer.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        v
    }

    /// Subscribes to peer table changes.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    fn beacon(&self) -> Vec<u8> {
        let b = Beacon {
            protocol_version: PROTOCOL_VERSION,
            device_id: self.config.device_id.to_string(),
            name: lock(&self.name).clone(),
            listen_port: u32::from(self.config.listen_port),
            instance: self.instance,
        };
        let mut out = MAGIC.to_vec();
        b.encode(&mut out).ok();
        out
    }

    async fn send_loop(
        self: Arc<Self>,
        v4: Arc<UdpSocket>,
        v6: Option<Arc<UdpSocket>>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.answer.notified() => {}
            }
            let packet = self.beacon();
            let (v4_targets, v6_targets) = targets(self.config.port);
            for t in v4_targets {
                if let Err(e) = v4.send_to(&packet, t).await {
                    tracing::trace!(target_addr = %t, cause = %e, "beacon not sent");
                }
            }
            if let Some(v6) = &v6 {
                for t in v6_targets {
                    if let Err(e) = v6.send_to(&packet, t).await {
                        tracing::trace!(target_addr = %t, cause = %e, "beacon not sent");
                    }
                }
            }
        }
    }

    async fn receive_loop(self: Arc<Self>, sock: Arc<UdpSocket>, shutdown: CancellationToken) {
        let mut buf = [0u8; MAX_PACKET + 1];
        loop {
            let (n, from) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = sock.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(cause = %e, "discovery receive failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(why) = self.handle(&buf[..n], from) {
                tracing::trace!(%from, why, "dropped a discovery packet");
            }
        }
    }

    /// Parses and records one packet. Returns why it was dropped.
    fn handle(&self, packet: &[u8], from: SocketAddr) -> Result<(), &'static str> {
        if packet.len() > MAX_PACKET {
            return Err("oversized");
        }
        let body = packet.strip_prefix(MAGIC.as_slice()).ok_or("no magic")?;
        let b = Beacon::decode(body).map_err(|_| "malformed")?;
        if b.instance == self.instance {
            return Err("own beacon");
        }
        let id: DeviceId = b.device_id.parse().map_err(|_| "bad device id")?;
        if id == self.config.device_id {
            return Err("own device id");
        }
        let port = u16::try_from(b.listen_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or("bad port")?;
        if b.name.len() > 255 || b.name.chars().any(char::is_control) {
            return Err("bad name");
        }
        let ip = match from.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        let addr = match (ip, from) {
            (IpAddr::V6(v6), SocketAddr::V6(f)) => {
                SocketAddr::V6(SocketAddrV6::new(v6, port, 0, f.scope_id()))
            }
            (ip, _) => SocketAddr::new(ip, port),
        };
        let peer = Peer {
            id,
            name: b.name,
            addr,
            protocol_version: b.protocol_version,
            last_seen_ms: now_ms(),
            is_static: false,
        };
        let event = {
            let mut table = lock(&self.table);
            let full = table.len() >= MAX_PEERS;
            match table.get_mut(&id) {
                Some(e) => {
                    // Prefer an IPv4 address when a peer is heard on both families.
                    let keep_addr = e.peer.addr.is_ipv4() && addr.is_ipv6();
                    let mut updated = peer.clone();
                    if keep_addr {
                        updated.addr = e.peer.addr;
                    }
                    let changed = updated.name != e.peer.name
                        || updated.addr != e.peer.addr
                        || updated.protocol_version != e.peer.protocol_version;
                    e.peer = updated.clone();
                    e.seen = Instant::now();
                    changed.then_some(PeerEvent::Changed(updated))
                }
                None if full => {
                    if self.dropped.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                        tracing::warn!(
                            max = MAX_PEERS,
                            "peer table full; ignoring beacons of new devices"
                        );
                    }
                    return Err("table full");
                }
                None => {
                    table.insert(
                        id,
                        Entry {
                            peer: peer.clone(),
                            seen: Instant::now(),
                        },
                    );
                    Some(PeerEvent::Appeared(peer.clone()))
                }
            }
        };
        if let Some(ev) = event {
            if matches!(ev, PeerEvent::Appeared(_)) {
                tracing::info!(peer = %peer.id, name = %peer.name, addr = %peer.addr, compatible = peer.compatible(), "peer discovered");
                // Answer at once so that the new peer learns of us well before our next beacon.
                let now = now_ms();
                let last = self.last_answer_ms.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= ANSWER_EVERY.as_millis() as u64
                    && self
                        .last_answer_ms
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    self.answer.notify_one();
                }
            }
            let _ = self.events.send(ev);
        }
        Ok(())
    }

    async fn sweep_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let lost: Vec<Peer> = {
                let mut table = lock(&self.table);
                let expired: Vec<DeviceId> = table
                    .iter()
                    .filter(|(_, e)| e.seen.elapsed() > EXPIRY)
                    .map(|(id, _)| *id)
                    .collect();
                expired
                    .iter()
                    .filter_map(|id| table.remove(id))
                    .map(|e| e.peer)
                    .collect()
            };
            for p in lost {
                tracing::info!(peer = %p.id, name = %p.name, "peer lost");
                let _ = self.events.send(PeerEvent::Lost(p));
            }
        }
    }
}

/// Where to send beacons: each up IPv4 interface's broadcast address, and ff02::1 on each up
/// interface with an IPv6 address.
fn targets(port: u16) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return (Vec::new(), Vec::new());
    };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for i in ifaces {
        if !i.is_oper_up() && !i.is_loopback() {
            continue;
        }
        match i.addr {
            if_addrs::IfAddr::V4(a) => {
                if let Some(b) = a.broadcast {
                    let t = SocketAddr::from((b, port));
                    if !v4.contains(&t) {
                        v4.push(t);
                    }
                }
            }
            if_addrs::IfAddr::V6(_) if !i.is_loopback() => {
                if let Some(idx) = i.index {
                    let t = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, port, 0, idx));
                    if !v6.contains(&t) {
                        v6.push(t);
                    }
                }
            }
            _ => {}
        }
    }
    (v4, v6)
}

fn rand_u64() -> u64 {
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disco() -> Arc<Discovery> {
        let (events, _) = broadcast::channel(16);
        Arc::new(Discovery {
            config: DiscoveryConfig {
                port: 0,
                device_id: DeviceId::from_spki(b"me"),
                listen_port: 1,
            },
            instance: 7,
            table: Mutex::new(HashMap::new()),
            events,
            name: Mutex::new("me".into()),
            answer: Notify::new(),
            last_answer_ms: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn packet(id: &DeviceId, name: &str, instance: u64, version: u32) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        Beacon {
            protocol_version: version,
            device_id: id.to_string(),
            name: name.into(),
            listen_port: 14567,
            instance,
        }
        .encode(&mut out)
        .unwrap();
        out
    }

    #[test]
    fn beacons_fill_the_table_and_bad_ones_are_dropped() {
        let d = disco();
        let from: SocketAddr = "10.0.0.5:14566".parse().unwrap();
        let peer = DeviceId::from_spki(b"peer");
        d.handle(&packet(&peer, "kitchen", 1, PROTOCOL_VERSION), from)
            .unwrap();
        let p = &d.peers()[0];
        assert_eq!(
            (p.name.as_str(), p.addr),
            ("kitchen", "10.0.0.5:14567".parse().unwrap())
        );
        assert!(p.compatible());
        assert_eq!(
            d.handle(&packet(&peer, "x", 7, PROTOCOL_VERSION), from),
            Err("own beacon")
        );
        assert_eq!(
            d.handle(
                &packet(&DeviceId::from_spki(b"me"), "x", 2, PROTOCOL_VERSION),
                from
            ),
            Err("own device id")
        );
        assert_eq!(d.handle(b"garbage", from), Err("no magic"));
        assert_eq!(d.handle(b"P2PB\xff\xff\xff", from), Err("malformed"));
        assert_eq!(d.handle(&vec![0u8; 600], from), Err("oversized"));
        let old = DeviceId::from_spki(b"old");
        d.handle(&packet(&old, "old", 3, 1), from).unwrap();
        assert!(
            !d.peers().iter().find(|p| p.id == old).unwrap().compatible(),
            "listed but incompatible"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let d = disco();
        let from: SocketAddr = "10.0.0.5:14566".parse().unwrap();
        for i in 0..(MAX_PEERS as u32 + 100) {
            let id = DeviceId::from_spki(&i.to_le_bytes());
            let _ = d.handle(
                &packet(&id, "fake", 100 + u64::from(i), PROTOCOL_VERSION),
                from,
            );
        }
        assert_eq!(d.peers().len(), MAX_PEERS);
    }
}
