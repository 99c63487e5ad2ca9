//! LAN discovery end to end: real daemons, each in a network namespace this test creates, on
//! a bridge of their own. No packet of these tests reaches the host's networks.
//!
//! - three daemons on one bridge find each other within 3 s (names, IPv4 addresses,
//!   compatible);
//! - `p2pctl send --peer NAME` sends to a discovered peer; an unknown name fails listing the
//!   known peers, an ambiguous one fails listing the candidates;
//! - a stopped daemon (SIGTERM or SIGKILL) is dropped within 12 s and `WatchPeers` says LOST;
//! - several daemons on one host share the discovery port;
//! - a static peer (`--no-discovery --peer-addr`) is listed as "static", usable by name, and
//!   reported LOST (still as "static") once it goes away;
//! - garbage and a flood of fake devices leave the daemon responsive with a bounded table,
//!   and real peers are still found;
//! - a spoofed beacon (another device's id at a daemon's address) cannot divert a send: the
//!   device at that address proves its own id and the send fails "… but expected …";
//! - `--no-discovery` sends no beacons and lists nobody.
//!
//! Needs root and `ip` (iproute2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use p2p_core::DeviceId;
use p2p_core::net::wire::PROTOCOL_VERSION;
use p2p_proto::control::v1 as pb;
use p2p_proto::wire::v1::Beacon;
use p2p_tests::files::{Rng, paths_under, sha256_file, temp_random_file};
use p2p_tests::netns::{Lan, LanDaemon};
use p2p_tests::{api, block_on, ctl};
use prost::Message;
use tokio_stream::StreamExt;

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(100);
/// Discovery must find peers on one link within this.
const FOUND_WITHIN: Duration = Duration::from_secs(3);
/// A peer not heard from for 10 s is dropped (the sweep runs every 0.5 s): allow 12 s.
const LOST_WITHIN: Duration = Duration::from_secs(12);
/// Largest peer table.
const MAX_PEERS: usize = 256;
/// Magic before a beacon.
const MAGIC: &[u8] = b"P2PB";

// ---------------------------------------------------------------------------------------
// The control API

/// `p2pctl peers --json` of `d`, as the proto messages.
fn list_peers(d: &LanDaemon) -> Vec<pb::Peer> {
    let out = d.ctl(&["peers", "--json"]);
    assert!(
        out.status.success(),
        "peers --json of {}: {}",
        d.name,
        ctl::describe(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("peers --json is not JSON ({e}): {}", ctl::describe(&out)));
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("peers --json: not an array: {v}"));
    list.iter()
        .map(|p| {
            let s = |k: &str| {
                p[k].as_str()
                    .unwrap_or_else(|| panic!("peers --json: no string {k:?} in {p}"))
                    .to_owned()
            };
            let n = |k: &str| {
                p[k].as_u64()
                    .unwrap_or_else(|| panic!("peers --json: no number {k:?} in {p}"))
            };
            let b = |k: &str| {
                p[k].as_bool()
                    .unwrap_or_else(|| panic!("peers --json: no bool {k:?} in {p}"))
            };
            pb::Peer {
                device_id: s("device_id"),
                name: s("name"),
                address: s("address"),
                protocol_version: n("protocol_version") as u32,
                compatible: b("compatible"),
                last_seen_ms: n("last_seen_ms"),
                source: s("source"),
                trusted: b("trusted"),
            }
        })
        .collect()
}

/// Polls `ListPeers` of `d` until `pred` holds; panics after `timeout` with the last list.
fn wait_peers(
    d: &LanDaemon,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&[pb::Peer]) -> bool,
) -> Vec<pb::Peer> {
    let deadline = Instant::now() + timeout;
    loop {
        let peers = list_peers(d);
        if pred(&peers) {
            return peers;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} : {what} not reached within {timeout:?}; it lists {}\n--- stderr ---\n{}",
                d.name,
                describe(&peers),
                d.stderr()
            );
        }
        std::thread::sleep(POLL);
    }
}

fn describe(peers: &[pb::Peer]) -> String {
    if peers.len() > 20 {
        return format!("{} peers", peers.len());
    }
    let v: Vec<String> = peers
        .iter()
        .map(|p| {
            format!(
                "{} {} {} compatible={} source={}",
                p.name, p.device_id, p.address, p.compatible, p.source
            )
        })
        .collect();
    format!("[{}]", v.join("; "))
}

/// The entry of `other` in `peers`, if listed with its IPv4 address.
fn entry<'a>(peers: &'a [pb::Peer], other: &LanDaemon) -> Option<&'a pb::Peer> {
    peers
        .iter()
        .find(|p| p.device_id == other.device_id() && p.address == other.addr())
}

/// Whether `peers` holds exactly `others` (each by id at its IPv4 address), nothing else.
fn lists_exactly(peers: &[pb::Peer], others: &[&LanDaemon]) -> bool {
    peers.len() == others.len() && others.iter().all(|o| entry(peers, o).is_some())
}

/// Waits until every daemon in `ds` lists exactly the others, within `timeout` in all.
fn wait_all_see_each_other(ds: &[&LanDaemon], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for d in ds {
        let others: Vec<&LanDaemon> = ds
            .iter()
            .copied()
            .filter(|o| o.device_id() != d.device_id())
            .collect();
        let names: Vec<&str> = others.iter().map(|o| o.name.as_str()).collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let peers = wait_peers(d, left, &format!("listing exactly {names:?}"), |p| {
            lists_exactly(p, &others)
        });
        for o in &others {
            let e = entry(&peers, o).expect("listed");
            assert_eq!(e.name, o.name, "{} lists {} by name", d.name, o.name);
            assert!(e.compatible, "{} lists {} as compatible", d.name, o.name);
            assert_eq!(e.protocol_version, PROTOCOL_VERSION);
            assert_eq!(e.source, "broadcast");
            assert!(e.last_seen_ms > 0);
            assert!(e.address.starts_with("10."), "{}", e.address);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Beacons built by the test

/// A beacon packet as a daemon sends it.
fn beacon(id: &str, name: &str, listen_port: u16, instance: u64, version: u32) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    Beacon {
        protocol_version: version,
        device_id: id.to_owned(),
        name: name.to_owned(),
        listen_port: u32::from(listen_port),
        instance,
    }
    .encode(&mut out)
    .expect("encode a beacon");
    out
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn three_daemons_on_one_link_find_each_other_within_3s() {
    let net = Lan::new(3);
    let ds = net.start_all(&[(0, "alpha", &[]), (1, "bravo", &[]), (2, "charlie", &[])]);
    let all: Vec<&LanDaemon> = ds.iter().collect();
    wait_all_see_each_other(&all, FOUND_WITHIN);
    // Nobody sees itself, and the lists stay stable over a beacon interval.
    std::thread::sleep(Duration::from_millis(2500));
    for d in &ds {
        let others: Vec<&LanDaemon> = ds.iter().filter(|o| o.pid != d.pid).collect();
        let peers = list_peers(d);
        assert!(
            lists_exactly(&peers, &others),
            "{} lists {}",
            d.name,
            describe(&peers)
        );
        // The control API says the same as p2pctl.
        let key = |p: &pb::Peer| (p.device_id.clone(), p.name.clone(), p.address.clone());
        let mut cli: Vec<_> = peers.iter().map(key).collect();
        let mut grpc: Vec<_> = block_on(api::peers(d)).iter().map(key).collect();
        cli.sort();
        grpc.sort();
        assert_eq!(cli, grpc);
    }
}

#[test]
fn send_by_name_resolves_discovered_peers() {
    let net = Lan::new(4);
    let ds = net.start_all(&[
        (0, "alpha", &[]),
        (1, "bravo", &[]),
        (2, "twin", &[]),
        (3, "twin", &[]),
    ]);
    let (a, b, c, d) = (&ds[0], &ds[1], &ds[2], &ds[3]);
    wait_peers(a, FOUND_WITHIN, "listing bravo and both twins", |p| {
        lists_exactly(p, &[b, c, d])
    });
    block_on(api::trust_each_other(a, b));

    let (_src, file) = temp_random_file("payload-7.bin", 300_000, 7);
    let out = a.ctl(&["send", file.to_str().unwrap(), "--peer", "bravo"]);
    assert!(
        out.status.success(),
        "send --peer bravo: {}",
        ctl::describe(&out)
    );
    let got = b.dirs.download_dir.join(file.file_name().unwrap());
    assert!(
        p2p_tests::wait_until(Duration::from_secs(5), || got.exists()),
        "{} not in bravo's download dir: {:?}",
        got.display(),
        paths_under(&b.dirs.download_dir)
    );
    assert_eq!(sha256_file(&got), sha256_file(&file));

    let out = a.ctl(&["send", file.to_str().unwrap(), "--peer", "nosuch"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unknown name: {}",
        ctl::describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nosuch"), "{err}");
    assert!(err.contains("known peers"), "{err}");
    for p in [b, c, d] {
        assert!(
            err.contains(&p.addr()),
            "the known peers include {}: {err}",
            p.addr()
        );
    }
    assert!(err.contains("bravo") && err.contains("twin"), "{err}");

    let out = a.ctl(&["send", file.to_str().unwrap(), "--peer", "twin"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "ambiguous name: {}",
        ctl::describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("several peers"), "{err}");
    for p in [c, d] {
        assert!(err.contains(&p.addr()), "both twins listed: {err}");
    }
    assert!(!err.contains(&b.addr()), "bravo is no twin: {err}");
    // Nothing reached the twins.
    for p in [c, d] {
        assert!(paths_under(&p.dirs.download_dir).is_empty());
    }
}

#[test]
fn stopped_daemons_are_lost_within_12s() {
    let net = Lan::new(3);
    let mut ds = net.start_all(&[(0, "alpha", &[]), (1, "bravo", &[]), (2, "charlie", &[])]);
    {
        let all: Vec<&LanDaemon> = ds.iter().collect();
        wait_all_see_each_other(&all, FOUND_WITHIN);
    }
    let ids = [ds[1].device_id().to_owned(), ds[2].device_id().to_owned()];
    block_on(async {
        let mut c = api::client(&ds[0]).await;
        let mut stream = c
            .watch_peers(pb::WatchPeersRequest {})
            .await
            .expect("WatchPeers")
            .into_inner();
        // First the current peers, as APPEARED.
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("initial WatchPeers events within 5 s")
                .expect("stream open")
                .expect("event");
            assert_eq!(ev.change(), pb::PeerChange::Appeared, "{ev:?}");
            seen.push(ev.peer.expect("peer").device_id);
        }
        seen.sort();
        let mut want = ids.to_vec();
        want.sort();
        assert_eq!(seen, want);

        ds[1].stop(libc::SIGTERM);
        ds[2].stop(libc::SIGKILL);
        let stopped = Instant::now();
        let mut lost = Vec::new();
        while lost.len() < 2 {
            let left = LOST_WITHIN.saturating_sub(stopped.elapsed());
            let ev = tokio::time::timeout(left, stream.next())
                .await
                .unwrap_or_else(|_| panic!("LOST events within {LOST_WITHIN:?}: got {lost:?}"))
                .expect("stream open")
                .expect("event");
            if ev.change() == pb::PeerChange::Lost {
                let id = ev.peer.expect("peer").device_id;
                assert!(ids.contains(&id), "lost an unknown peer {id}");
                lost.push(id);
            }
        }
        eprintln!("both lost {:?} after the stop", stopped.elapsed());
    });
    let peers = list_peers(&ds[0]);
    assert!(peers.is_empty(), "alpha still lists {}", describe(&peers));
}

#[test]
fn daemons_on_one_host_share_the_discovery_port() {
    let net = Lan::new(2);
    let ds = net.start_all(&[
        (
            0,
            "one",
            &["--listen", "0.0.0.0:20001", "--discovery-port", "15001"],
        ),
        (
            0,
            "two",
            &["--listen", "0.0.0.0:20002", "--discovery-port", "15001"],
        ),
        (1, "other", &["--discovery-port", "15001"]),
    ]);
    assert_eq!((ds[0].listen_port(), ds[1].listen_port()), (20001, 20002));
    let all: Vec<&LanDaemon> = ds.iter().collect();
    wait_all_see_each_other(&all, FOUND_WITHIN);
}

#[test]
fn static_peers_are_listed_and_usable_by_name() {
    let net = Lan::new(2);
    let b = net.start_all(&[(1, "bravo", &[])]).remove(0);
    let b_addr = b.addr();
    let a = net
        .start_all(&[(0, "alpha", &["--no-discovery", "--peer-addr", &b_addr])])
        .remove(0);
    let peers = wait_peers(&a, Duration::from_secs(5), "listing bravo", |p| {
        p.iter().any(|p| p.device_id == b.device_id())
    });
    assert_eq!(peers.len(), 1, "{}", describe(&peers));
    let p = &peers[0];
    assert_eq!(
        (p.name.as_str(), p.address.as_str(), p.source.as_str()),
        ("bravo", b_addr.as_str(), "static")
    );
    assert!(p.compatible);

    block_on(api::trust_each_other(&a, &b));
    let (_src, file) = temp_random_file("payload-11.bin", 100_000, 11);
    let out = a.ctl(&["send", file.to_str().unwrap(), "--peer", "bravo"]);
    assert!(
        out.status.success(),
        "send --peer bravo: {}",
        ctl::describe(&out)
    );
    let got = b.dirs.download_dir.join(file.file_name().unwrap());
    assert!(
        p2p_tests::wait_until(Duration::from_secs(5), || got.exists()),
        "{} not received",
        got.display()
    );
    assert_eq!(sha256_file(&got), sha256_file(&file));

    // A static peer that goes away is reported lost at the next probe (every 10 s).
    let mut b = b;
    let lost = block_on(async {
        let mut stream = api::client(&a)
            .await
            .watch_peers(pb::WatchPeersRequest {})
            .await
            .expect("WatchPeers")
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the current peer within 5 s")
            .expect("stream open")
            .expect("event");
        assert_eq!(first.change(), pb::PeerChange::Appeared, "{first:?}");
        assert_eq!(
            first.peer.as_ref().map(|p| p.source.as_str()),
            Some("static")
        );
        b.stop(libc::SIGKILL);
        let stopped = Instant::now();
        loop {
            let left = LOST_WITHIN.saturating_sub(stopped.elapsed());
            let ev = tokio::time::timeout(left, stream.next())
                .await
                .unwrap_or_else(|_| panic!("bravo not lost within {LOST_WITHIN:?}"))
                .expect("stream open")
                .expect("event");
            if ev.change() == pb::PeerChange::Lost {
                eprintln!("static peer lost {:?} after the stop", stopped.elapsed());
                return ev.peer.expect("peer");
            }
        }
    });
    assert_eq!(
        (lost.name.as_str(), lost.source.as_str()),
        ("bravo", "static")
    );
    let peers = list_peers(&a);
    assert!(peers.is_empty(), "alpha still lists {}", describe(&peers));
}

#[test]
fn garbage_and_a_flood_of_fake_devices_leave_discovery_working() {
    let net = Lan::new(4);
    let mut ds = net.start_all(&[(0, "alpha", &[]), (1, "bravo", &[])]);
    {
        let all: Vec<&LanDaemon> = ds.iter().collect();
        wait_all_see_each_other(&all, FOUND_WITHIN);
    }

    // 1,000 packets of garbage (some with the magic, some oversized) and beacons of 10,000
    // devices, interleaved, from host 2 to the broadcast address.
    let mut rng = Rng::new(0x5EED_1234_ABCD_0001);
    let mut packets: Vec<Vec<u8>> = Vec::new();
    for i in 0..1_000 {
        let len = (rng.next() % 700) as usize;
        let mut p = rng.bytes(len);
        if i % 3 == 0 {
            let mut m = MAGIC.to_vec();
            m.append(&mut p);
            p = m;
        }
        packets.push(p);
    }
    // Oversized but otherwise valid.
    let big_id = DeviceId::from_spki(b"big").to_string();
    let mut big = beacon(&big_id, &"x".repeat(250), 1, 1, PROTOCOL_VERSION);
    big.resize(600, 0);
    packets.push(big);
    let fakes: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| {
            let id = DeviceId::from_spki(&[b"fake".as_slice(), &i.to_le_bytes()].concat());
            let version = if i % 10 == 0 { 1 } else { PROTOCOL_VERSION };
            beacon(
                &id.to_string(),
                &format!("fake-{i}"),
                (1 + i % 60_000) as u16,
                rng.next(),
                version,
            )
        })
        .collect();
    let mut all = Vec::with_capacity(packets.len() + fakes.len());
    let mut g = packets.into_iter();
    for (i, f) in fakes.into_iter().enumerate() {
        if i % 10 == 0 {
            all.extend(g.next());
        }
        all.push(f);
    }
    all.extend(g);
    assert_eq!(all.len(), 11_001);

    let sock = net.udp_socket(2);
    let target = SocketAddr::from((net.broadcast, 14566));
    let flood_start = Instant::now();
    let mut sent = 0;
    for (i, p) in all.iter().enumerate() {
        if sock.send_to(p, target).is_ok() {
            sent += 1;
        }
        // A little pacing so that the receivers' socket buffers do not simply overflow.
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    eprintln!(
        "sent {sent} of {} packets in {:?}",
        all.len(),
        flood_start.elapsed()
    );
    assert!(sent > 10_000, "only {sent} packets sent");

    for d in &mut ds {
        assert!(d.running(), "{} died\n{}", d.name, d.stderr());
        let t = Instant::now();
        let out = d.ctl(&["status", "--json"]);
        assert!(out.status.success(), "{}", ctl::describe(&out));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "status of {} took {:?}",
            d.name,
            t.elapsed()
        );
        let peers = list_peers(d);
        let fake = peers.iter().filter(|p| p.name.starts_with("fake-")).count();
        eprintln!("{} lists {} peers, {fake} fake", d.name, peers.len());
        assert!(peers.len() <= MAX_PEERS, "{} lists {}", d.name, peers.len());
        assert!(fake > 0, "the flood reached {}", d.name);
        assert!(
            !peers.iter().any(|p| p.device_id == big_id),
            "the oversized beacon was accepted"
        );
        // Incompatible fakes are listed as such.
        assert!(
            peers
                .iter()
                .filter(|p| p.name.starts_with("fake-"))
                .all(|p| p.compatible == (p.protocol_version == PROTOCOL_VERSION))
        );
    }
    // The real peers, known before the table filled up, stay listed.
    let (a, b) = (&ds[0], &ds[1]);
    for (d, other) in [(a, b), (b, a)] {
        let peers = list_peers(d);
        let e = entry(&peers, other)
            .unwrap_or_else(|| panic!("{} lost {} in the flood", d.name, other.name));
        assert!(e.compatible);
    }

    // A daemon starting now is found once the fakes have expired.
    let c = net.start_all(&[(3, "charlie", &[])]).remove(0);
    wait_peers(
        a,
        Duration::from_secs(16).saturating_sub(flood_start.elapsed()) + Duration::from_secs(2),
        "listing charlie and bravo, no fakes",
        |p| lists_exactly(p, &[b, &c]),
    );
    wait_peers(&c, FOUND_WITHIN, "listing alpha and bravo", |p| {
        lists_exactly(p, &[a, b])
    });
    eprintln!(
        "recovered {:?} after the flood began",
        flood_start.elapsed()
    );
}

#[test]
fn a_spoofed_beacon_cannot_divert_a_send() {
    let net = Lan::new(3);
    let ds = net.start_all(&[
        (0, "alpha", &[]),
        (1, "bravo", &[]),
        // Charlie is elsewhere: it sends no beacons; only its id is used.
        (2, "charlie", &["--no-discovery"]),
    ]);
    let (a, b, c) = (&ds[0], &ds[1], &ds[2]);
    wait_peers(a, FOUND_WITHIN, "listing bravo", |p| lists_exactly(p, &[b]));
    // Alpha even trusts charlie: a send "to charlie" would be accepted there without a word.
    block_on(api::trust_each_other(a, c));

    // From bravo's host (so at bravo's address), beacons claiming charlie's id, name "spoof"
    // and bravo's listen port, every 300 ms until the test ends.
    let sock = net.udp_socket(1);
    let target = SocketAddr::from((net.broadcast, 14566));
    let packet = beacon(
        c.device_id(),
        "spoof",
        b.listen_port(),
        42,
        PROTOCOL_VERSION,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let spoofer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = sock.send_to(&packet, target);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = StopOnDrop(stop.clone());

    let peers = wait_peers(a, FOUND_WITHIN, "listing the spoof", |p| {
        p.iter().any(|p| p.name == "spoof")
    });
    let spoof = peers.iter().find(|p| p.name == "spoof").unwrap();
    assert_eq!(
        (spoof.device_id.as_str(), spoof.address.as_str()),
        (c.device_id(), b.addr().as_str())
    );

    let (_src, file) = temp_random_file("payload-3.bin", 50_000, 3);
    // Over the control API.
    let err = block_on(async {
        api::client(a)
            .await
            .send(pb::SendRequest {
                paths: vec![file.display().to_string()],
                peer: "spoof".into(),
                options: None,
            })
            .await
    });
    match err {
        Ok(r) => panic!("Send to the spoof was accepted: {r:?}"),
        Err(s) => {
            assert!(s.message().contains("but expected"), "{s:?}");
            assert!(s.message().contains(b.device_id()), "{s:?}");
            assert!(s.message().contains(c.device_id()), "{s:?}");
        }
    }
    // With p2pctl.
    let out = a.ctl(&["send", file.to_str().unwrap(), "--peer", "spoof"]);
    assert!(!out.status.success(), "{}", ctl::describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("but expected"), "{}", ctl::describe(&out));

    stop.store(true, Ordering::Relaxed);
    spoofer.join().expect("spoofer");
    // No transfer happened on either end.
    std::thread::sleep(Duration::from_millis(300));
    let offers = block_on(api::incoming(b));
    assert!(offers.is_empty(), "{offers:?}");
    for d in [b, c] {
        assert!(
            paths_under(&d.dirs.download_dir).is_empty(),
            "{} received {:?}",
            d.name,
            paths_under(&d.dirs.download_dir)
        );
    }
    for d in [a, b, c] {
        let transfers = block_on(api::transfers(d));
        assert!(
            transfers
                .iter()
                .all(|t| api::state(t) != pb::TransferState::Completed),
            "{} has transfers: {transfers:?}",
            d.name
        );
        if d.pid != a.pid {
            assert!(transfers.is_empty(), "{}: {transfers:?}", d.name);
        }
    }
}

#[test]
fn no_discovery_sends_no_beacons_and_lists_nobody() {
    let net = Lan::new(3);
    let ds = net.start_all(&[
        (0, "alpha", &[]),
        (1, "bravo", &[]),
        (2, "silent", &["--no-discovery"]),
    ]);
    let (a, b, s) = (&ds[0], &ds[1], &ds[2]);
    // Discovery works on this link...
    wait_peers(a, FOUND_WITHIN, "listing bravo", |p| lists_exactly(p, &[b]));
    // ...but for 5 s nobody hears of the silent one, and it hears of nobody.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for d in [a, b] {
            let peers = list_peers(d);
            assert!(
                !peers.iter().any(|p| p.device_id == s.device_id()),
                "{} lists the silent daemon: {}",
                d.name,
                describe(&peers)
            );
        }
        let peers = list_peers(s);
        assert!(peers.is_empty(), "silent lists {}", describe(&peers));
        std::thread::sleep(POLL);
    }
}
