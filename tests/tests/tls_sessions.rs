//! Peer sessions run inside TLS 1.3 with mutual authentication between device identities.
//! Real daemons (and, where a device must misbehave, TLS clients built in the test) show that:
//!
//! - two daemons that trust each other transfer as before;
//! - a certificate copied from another device is useless without its key;
//! - an expected device id (`ID@HOST:PORT`, or a trusted device's last address) is enforced,
//!   so a man in the middle with a key of its own is refused, and one that passes the Hello on
//!   is caught by the check that the Hello's id is the certificate's;
//! - clients that stall, send garbage, present no certificate or offer only TLS 1.2 are
//!   dropped within the 10 s handshake deadline while real sessions go on;
//! - offers from untrusted devices wait for an explicit accept even with `--accept auto`, or
//!   are refused with `--accept-untrusted reject`; per-device rules apply;
//! - the device id has the 8×7 base32 format and survives restarts and a re-issued
//!   certificate;
//! - the control socket refuses another user even when its mode lets them connect.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_core::net::identity::CERT_FILE;
use p2p_core::net::tls;
use p2p_proto::control::v1 as pb;
use p2p_proto::wire::v1::{self as wire, frame::Body};
use p2p_tests::api::{self, incoming, is_device_id_format, sessions, trust, trust_with};
use p2p_tests::files::{random_file, sha256_file, temp_file};
use p2p_tests::hostile::tls::{client_with, tls12_client_hello, tls13_any_server};
use p2p_tests::hostile::{Device, Peer, hello_claiming};
use p2p_tests::{Daemon, DaemonOptions, start, wait_until};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STEP: Duration = Duration::from_secs(5);
/// The daemon's deadline for TLS and the protocol handshake together.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// What the tests allow for it: the deadline plus scheduling slack.
const DROPPED_WITHIN: Duration = Duration::from_secs(12);
/// How long a transfer of one small file may take.
const SEND_WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Daemons and the control API

/// Sends `path` from `from` to `peer` over the control API and follows it to its end.
async fn send_and_wait(from: &Daemon, path: &Path, peer: &str) -> pb::Transfer {
    api::send_and_wait(from, &[path], peer, None, SEND_WITHIN).await
}

// ---------------------------------------------------------------------------------------
// TLS clients built in the test

/// How a TLS client fared against the daemon: the TLS handshake's result, and what the
/// protocol handshake that follows got (a HelloAck means a session came up).
#[derive(Debug)]
enum Outcome {
    /// The TLS handshake failed on the client.
    TlsFailed(String),
    /// TLS completed on the client, then the daemon closed or failed the connection.
    ClosedAfterTls(String),
    /// A session came up.
    HelloAck(wire::HelloAck),
}

/// Connects with `config`, and if TLS completes, sends a Hello claiming `claim`.
async fn try_session(addr: SocketAddr, config: Arc<ClientConfig>, claim: &str) -> Outcome {
    let mut p = match Peer::tls_with(addr, config).await {
        Ok(p) => p,
        Err(e) => return Outcome::TlsFailed(e.to_string()),
    };
    // In TLS 1.3 the client finishes first; the daemon's verdict on its certificate arrives
    // as an alert on the next read (or write).
    let hello = Body::Hello(hello_claiming(claim, p2p_core::net::wire::PROTOCOL_VERSION));
    if let Err(e) = p.try_send(hello).await {
        return Outcome::ClosedAfterTls(e.to_string());
    }
    match p.try_recv(STEP).await {
        Ok(Body::HelloAck(a)) => Outcome::HelloAck(a),
        Ok(other) => Outcome::ClosedAfterTls(format!("{other:?}")),
        Err(e) => Outcome::ClosedAfterTls(format!("{e}: {:?}", std::error::Error::source(&e))),
    }
}

/// Reads from `p` until the daemon closes (or fails) the connection; returns the bytes and
/// when it ended. Panics after `within`.
async fn read_until_closed(mut p: Peer, within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let got = p.raw_until_closed(within).await;
    (got, started.elapsed())
}

// ---------------------------------------------------------------------------------------
// A TLS-terminating man in the middle

/// Terminates TLS from the client with its own identity, opens TLS to the target with the same
/// identity, and relays the plaintext, recording what the client sent.
struct Mitm {
    addr: SocketAddr,
    id: String,
    /// TLS sessions completed with a client.
    accepted: Arc<Mutex<u32>>,
    /// Plaintext the client sent through it.
    plaintext: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
    _device: Device,
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_mitm(listener: TcpListener, target: SocketAddr) -> Mitm {
    let device = Device::new();
    let identity = &device.identity;
    let id = device.id();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let plaintext = Arc::new(Mutex::new(Vec::new()));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(identity).unwrap());
    let connector = tokio_rustls::TlsConnector::from(tls::client_config(identity, None).unwrap());
    let task = {
        let accepted = accepted.clone();
        let plaintext = plaintext.clone();
        tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let (acceptor, connector) = (acceptor.clone(), connector.clone());
                let (accepted, plaintext) = (accepted.clone(), plaintext.clone());
                relays.spawn(async move {
                    let Ok(Ok(client)) = tokio::time::timeout(STEP, acceptor.accept(inbound)).await
                    else {
                        return;
                    };
                    *accepted.lock().unwrap() += 1;
                    let Ok(Ok(up)) = tokio::time::timeout(STEP, async {
                        let s = TcpStream::connect(target).await?;
                        connector.connect(tls::server_name(), s).await
                    })
                    .await
                    else {
                        return;
                    };
                    let (mut c_rd, mut c_wr) = tokio::io::split(client);
                    let (mut u_rd, mut u_wr) = tokio::io::split(up);
                    let up_dir = async {
                        let mut buf = [0u8; 16 << 10];
                        loop {
                            let n = match c_rd.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            plaintext.lock().unwrap().extend_from_slice(&buf[..n]);
                            if u_wr.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let _ = u_wr.flush().await;
                        }
                        let _ = u_wr.shutdown().await;
                    };
                    let down_dir = async {
                        let _ = tokio::io::copy(&mut u_rd, &mut c_wr).await;
                        let _ = c_wr.shutdown().await;
                    };
                    tokio::join!(up_dir, down_dir);
                });
                while relays.try_join_next().is_some() {}
            }
        })
    };
    Mitm {
        addr,
        id,
        accepted,
        plaintext,
        task,
        _device: device,
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_that_trust_each_other_transfer_a_file() {
    let (a, b) = tokio::join!(start(&[]), start(&["--accept", "auto"]));
    api::trust_each_other(&a, &b).await;
    let (a_id, b_id) = (a.device_id().to_owned(), b.device_id().to_owned());
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("sanity.bin");
    random_file(&path, 3 << 20, 5);

    let t = send_and_wait(&a, &path, &b.peer_addr()).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert_eq!(t.peer_id, b_id);
    assert_eq!(
        sha256_file(&b.dirs.download_dir.join("sanity.bin")),
        sha256_file(&path)
    );
    let (sa, sb) = (sessions(&a).await, sessions(&b).await);
    assert_eq!(sa.len(), 1, "{sa:?}");
    assert!(
        sa[0].outgoing && sa[0].trusted && sa[0].peer_id == b_id,
        "{sa:?}"
    );
    assert_eq!(sb.len(), 1, "{sb:?}");
    assert!(
        !sb[0].outgoing && sb[0].trusted && sb[0].peer_id == a_id,
        "{sb:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_copied_from_another_device_is_useless_without_its_key() {
    let (a, b) = tokio::join!(start(&["--accept", "auto"]), start(&[]));
    let a_addr = a.listen_addr();
    let b_id = b.device_id().to_owned();
    // A trusts B, so a session "as B" would be worth something.
    trust(&a, &b_id).await;
    let b_cert = CertificateDer::from_pem_file(b.dirs.state_dir.join(CERT_FILE))
        .expect("B's device.crt is a PEM certificate");
    assert_eq!(tls::device_id_of(&b_cert).unwrap().to_string(), b_id);
    let thief = Device::new();

    // Control: the same client construction with a certificate and key that belong together
    // gets a session, so the refusal below is about the key.
    match try_session(
        a_addr,
        client_with(thief.identity.cert.clone(), &thief.identity),
        &thief.id(),
    )
    .await
    {
        Outcome::HelloAck(ack) => assert_eq!(ack.device_id, a.device_id()),
        other => panic!("a matching certificate and key must work: {other:?}"),
    }

    // B's certificate, signed with the thief's key: the handshake signature does not verify.
    let outcome = try_session(a_addr, client_with(b_cert, &thief.identity), &b_id).await;
    eprintln!("stolen certificate: {outcome:?}");
    match &outcome {
        Outcome::TlsFailed(e) | Outcome::ClosedAfterTls(e) => {
            assert!(e.contains("DecryptError"), "refused by a TLS alert: {e}")
        }
        Outcome::HelloAck(_) => panic!("a session came up with a stolen certificate"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sessions(&a).await.is_empty(), "no session appears");
    // Logged just after the alert went out.
    assert!(
        wait_until(STEP, || a.stderr().contains("TLS handshake failed")),
        "the daemon logs the refused handshake:\n{}",
        a.stderr()
    );
    // B itself is still welcome.
    let s = api::connect(&b, &a_addr.to_string()).await;
    assert_eq!(s.peer_id, a.device_id());
    let on_a = api::wait_sessions(&a, 1, STEP).await;
    assert!(on_a[0].peer_id == b_id && on_a[0].trusted, "{on_a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_the_expected_device_is_refused() {
    let (a, b, c) = tokio::join!(start(&[]), start(&["--accept", "auto"]), start(&[]));
    let (b_id, c_id) = (b.device_id().to_owned(), c.device_id().to_owned());
    let b_addr = b.listen_addr();
    let (_src, path) = temp_file("pinned.txt", b"for B only\n");
    let wrong = format!("{c_id}@{b_addr}");
    let message = format!("peer is device {b_id} but expected {c_id}");

    let out = a.ctl(&["send", path.to_str().unwrap(), "--peer", &wrong]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&message), "p2pctl names both ids: {stderr}");

    let err = api::try_send(&a, &[&path], &wrong, None)
        .await
        .expect_err("Send to the wrong device");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&message), "{err:?}");
    assert!(sessions(&a).await.is_empty());
    assert!(sessions(&b).await.is_empty());
    assert!(!b.dirs.download_dir.join("pinned.txt").exists());

    // The right id gets through.
    trust(&b, a.device_id()).await;
    let t = send_and_wait(&a, &path, &format!("{b_id}@{b_addr}")).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert_eq!(t.peer_id, b_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_with_its_own_key_is_detected() {
    let (a, b) = tokio::join!(start(&[]), start(&["--accept", "auto"]));
    api::trust_each_other(&a, &b).await;
    let b_id = b.device_id().to_owned();
    let b_addr = b.listen_addr();
    let (_src, path) = temp_file("secret.txt", b"P2PD-MITM-SECRET\n");

    // 1. A asks for B's id explicitly, at the proxy's address.
    let mitm = start_mitm(TcpListener::bind("127.0.0.1:0").await.unwrap(), b_addr).await;
    let err = api::try_send(&a, &[&path], &format!("{b_id}@{}", mitm.addr), None)
        .await
        .expect_err("Send through the proxy");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("peer is device {} but expected {b_id}", mitm.id)),
        "{err:?}"
    );
    assert_eq!(
        *mitm.accepted.lock().unwrap(),
        0,
        "A finished no TLS session with it"
    );
    assert!(mitm.plaintext.lock().unwrap().is_empty());
    drop(mitm);

    // 2. A knows B at an address (a trusted device's last address pins it), and the proxy
    // takes that address over while B moves to another port.
    let s = api::connect(&a, &b_addr.to_string()).await;
    assert_eq!(s.peer_id, b_id);
    let b_dirs = b.into_dirs();
    api::wait_sessions(&a, 0, STEP).await;
    let listener = {
        let deadline = Instant::now() + STEP;
        loop {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.set_reuseaddr(true).unwrap();
            if sock.bind(b_addr).is_ok() {
                break sock.listen(16).unwrap();
            }
            assert!(Instant::now() < deadline, "cannot take over {b_addr}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let b = Daemon::launch(b_dirs, DaemonOptions::accepting("auto")).await;
    let b_new = b.listen_addr();
    assert_eq!(b.device_id(), b_id, "B keeps its identity");
    let mitm = start_mitm(listener, b_new).await;
    let err = api::try_send(&a, &[&path], &b_addr.to_string(), None)
        .await
        .expect_err("Send to B's old address");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("peer is device {} but expected {b_id}", mitm.id)),
        "{err:?}"
    );
    assert_eq!(*mitm.accepted.lock().unwrap(), 0);
    assert!(mitm.plaintext.lock().unwrap().is_empty());

    // 3. A device that expects no one in particular (C never met B) gets through the proxy's
    // TLS, but the proxy cannot pass C's Hello on: B sees the proxy's certificate with C's id
    // in the Hello and refuses. (Rewriting the Hello would make it the proxy's own device,
    // which C would see instead of B.)
    let c = start(&[]).await;
    let c_id = c.device_id().to_owned();
    let err = api::try_send(&c, &[&path], &mitm.addr.to_string(), None)
        .await
        .expect_err("Send through the proxy without a pinned id");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("claims to be device")
            && err.message().contains(&c_id)
            && err.message().contains(&mitm.id),
        "{err:?}"
    );
    let seen = mitm.plaintext.lock().unwrap().clone();
    assert!(
        !seen.windows(16).any(|w| w == b"P2PD-MITM-SECRET"),
        "no file content reached the proxy"
    );
    eprintln!(
        "the proxy read {} bytes (C's Hello) before being refused",
        seen.len()
    );
    assert!(!b.dirs.download_dir.join("secret.txt").exists());
    assert!(
        sessions(&b).await.is_empty(),
        "B has no session with the proxy"
    );

    // A reaches B at its new address, pinned by id, and the transfer works.
    let t = send_and_wait(&a, &path, &format!("{b_id}@{b_new}")).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_handshakes_are_dropped_within_the_deadline() {
    let (d, e) = tokio::join!(start(&["--accept", "auto"]), start(&[]));
    api::trust_each_other(&d, &e).await;
    let addr = d.listen_addr();

    let silent_tcp = tokio::spawn(async move {
        let p = Peer::plain(addr).await;
        read_until_closed(p, Duration::from_secs(15)).await
    });
    let garbage = tokio::spawn(async move {
        let mut p = Peer::plain(addr).await;
        p.write_raw(b"\x00\x00\x00\x10garbage-garbage!").await;
        read_until_closed(p, Duration::from_secs(15)).await
    });
    let tls12 = tokio::spawn(async move {
        let mut p = Peer::plain(addr).await;
        p.write_raw(&tls12_client_hello()).await;
        read_until_closed(p, Duration::from_secs(15)).await
    });
    // A TLS 1.3 ClientHello, then nothing: the daemon answers and waits for the rest.
    let stalled_tls = tokio::spawn(async move {
        let device = Device::new();
        let mut conn = rustls::ClientConnection::new(
            tls::client_config(&device.identity, None).unwrap(),
            tls::server_name(),
        )
        .unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        let mut p = Peer::plain(addr).await;
        p.write_raw(&hello).await;
        read_until_closed(p, Duration::from_secs(15)).await
    });
    let no_cert = tokio::spawn(async move {
        let started = Instant::now();
        let config = Arc::new(tls13_any_server().with_no_client_auth());
        let outcome = try_session(addr, config, "no-cert").await;
        (outcome, started.elapsed())
    });

    // Meanwhile a real device transfers.
    let (_src, path) = temp_file("meanwhile.txt", b"real sessions go on\n");
    let t = send_and_wait(&e, &path, &addr.to_string()).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert!(api::status(&d).await.session_count >= 1);

    let (outcome, elapsed) = no_cert.await.expect("no-cert client");
    eprintln!("client without a certificate: {outcome:?} after {elapsed:?}");
    match &outcome {
        Outcome::TlsFailed(e) | Outcome::ClosedAfterTls(e) => assert!(
            e.contains("CertificateRequired"),
            "refused with a certificate_required alert: {e}"
        ),
        Outcome::HelloAck(_) => panic!("a client without a certificate got a session"),
    }
    assert!(elapsed < DROPPED_WITHIN, "{elapsed:?}");

    for (what, h) in [
        ("silent TCP client", silent_tcp),
        ("garbage", garbage),
        ("TLS 1.2 client", tls12),
        ("stalled TLS 1.3 client", stalled_tls),
    ] {
        let (got, elapsed) = tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .unwrap_or_else(|_| panic!("{what}: task did not end"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        eprintln!(
            "{what}: closed after {elapsed:?}, got {} bytes: {:02x?}",
            got.len(),
            &got[..got.len().min(16)]
        );
        assert!(
            elapsed < DROPPED_WITHIN,
            "{what}: dropped after {elapsed:?}"
        );
        match what {
            "TLS 1.2 client" => {
                // An alert record: protocol_version (70) — nothing else.
                assert!(
                    got.len() == 7 && got[0] == 0x15 && got[6] == 70,
                    "{what}: expected a protocol_version alert, got {got:02x?}"
                );
                assert!(elapsed < Duration::from_secs(2), "{what}: refused at once");
            }
            "garbage" => {
                assert!(got.is_empty() || got[0] == 0x15, "{what}: {got:02x?}");
                assert!(elapsed < Duration::from_secs(2), "{what}: refused at once");
            }
            "silent TCP client" => {
                assert!(got.is_empty(), "{what}: {got:02x?}");
                assert!(elapsed >= HANDSHAKE_DEADLINE - Duration::from_secs(1));
            }
            _ => {
                // The daemon's ServerHello … Finished, then the close.
                assert!(got.first() == Some(&0x16), "{what}: {got:02x?}");
                assert!(elapsed >= HANDSHAKE_DEADLINE - Duration::from_secs(1));
            }
        }
    }

    // `openssl s_client -tls1_2`, where the tool is installed (Debian package `openssl`).
    let have_openssl = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_openssl {
        let started = Instant::now();
        let out = p2p_tests::run_with_timeout(
            std::process::Command::new("openssl").args([
                "s_client",
                "-tls1_2",
                "-connect",
                &addr.to_string(),
            ]),
            Duration::from_secs(15),
        );
        let elapsed = started.elapsed();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("openssl s_client -tls1_2: {} after {elapsed:?}", out.status);
        assert!(
            !out.status.success(),
            "openssl completed a TLS 1.2 handshake:\n{text}"
        );
        assert!(
            text.contains("protocol version"),
            "openssl reports the protocol version alert:\n{text}"
        );
        assert!(elapsed < DROPPED_WITHIN, "{elapsed:?}");
    } else {
        eprintln!("openssl is not installed: the hand-written TLS 1.2 ClientHello stands alone");
    }

    // The daemon is still there and serves another transfer.
    assert!(!api::status(&d).await.device_id.is_empty());
    assert!(!d.stderr().contains("panicked"), "{}", d.stderr());
    let t = send_and_wait(&e, &path, &addr.to_string()).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_from_untrusted_devices_wait_or_are_refused() {
    let (a, b, c) = tokio::join!(
        start(&[]),
        start(&["--accept", "auto"]),
        start(&["--accept", "auto", "--accept-untrusted", "reject"])
    );
    let a_id = a.device_id().to_owned();
    let (_src, path) = temp_file("from-a.txt", b"hello from an untrusted device\n");

    // B: `--accept auto`, but A is not trusted: the offer waits.
    let id = api::send(&a, &[&path], &b.peer_addr(), None).await;
    let offer = api::wait_offer(&b, STEP).await;
    assert_eq!(offer.transfer_id, id);
    assert_eq!(offer.peer_id, a_id);
    assert!(!offer.peer_trusted, "{offer:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = api::wait_for(&a, &id, STEP, |_| true).await;
    assert!(!api::is_final(&t), "the offer still waits: {t:?}");
    assert!(!b.dirs.download_dir.join("from-a.txt").exists());
    let pending = api::pending(&b).await;
    assert!(pending.iter().any(|d| d.id == a_id), "{pending:?}");

    // Trusting A, then accepting the waiting offer, lets it through.
    trust(&b, &a_id).await;
    api::accept(&b, &id, None).await;
    let t = api::wait_done(&a, &id, Duration::from_secs(20)).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert_eq!(
        std::fs::read(b.dirs.download_dir.join("from-a.txt")).unwrap(),
        b"hello from an untrusted device\n"
    );
    // Trusted now: the next offer is accepted at once.
    let (_src2, path2) = temp_file("second.txt", b"auto now\n");
    let t = send_and_wait(&a, &path2, &b.peer_addr()).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert!(incoming(&b).await.is_empty());

    // C: `--accept-untrusted reject` refuses outright.
    let t = send_and_wait(&a, &path, &c.peer_addr()).await;
    assert_eq!(t.state, pb::TransferState::Rejected as i32, "{t:?}");
    assert!(t.error.contains("untrusted"), "the reason says why: {t:?}");
    assert!(incoming(&c).await.is_empty());
    assert!(!c.dirs.download_dir.join("from-a.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_device_rules_override_the_daemons_policy() {
    let (a, b, c) = tokio::join!(
        start(&[]),
        start(&["--accept", "auto"]),
        start(&["--accept", "ask"])
    );
    let a_id = a.device_id().to_owned();
    let (_src, path) = temp_file("ruled.txt", b"rules\n");

    // B accepts everything from trusted devices, but has a REJECT rule for A.
    trust_with(&b, &a_id, pb::DeviceAccept::Reject, None).await;
    let t = send_and_wait(&a, &path, &b.peer_addr()).await;
    assert_eq!(t.state, pb::TransferState::Rejected as i32, "{t:?}");
    assert!(t.error.contains("refuses"), "{t:?}");
    assert!(!b.dirs.download_dir.join("ruled.txt").exists());

    // C asks, but has an AUTO rule with a directory of its own for A.
    let special = c.dirs.root.path().join("from-a");
    trust_with(&c, &a_id, pb::DeviceAccept::Auto, Some(&special)).await;
    let t = send_and_wait(&a, &path, &c.peer_addr()).await;
    assert_eq!(t.state, pb::TransferState::Completed as i32, "{t:?}");
    assert_eq!(
        std::fs::read(special.join("ruled.txt")).unwrap(),
        b"rules\n"
    );
    assert!(!c.dirs.download_dir.join("ruled.txt").exists());
    assert!(incoming(&c).await.is_empty());
    let theirs = api::transfers(&c).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].destination, special.display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_id_has_the_new_format_and_survives_restarts() {
    let d = start(&[]).await;
    let out = d.ctl(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .find(|w| is_device_id_format(w))
        .unwrap_or_else(|| panic!("no device id in `p2pctl status`:\n{text}"))
        .to_owned();
    assert_eq!(id, api::status(&d).await.device_id);
    assert!(!is_device_id_format(
        "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ"
    ));
    assert!(!is_device_id_format(
        "p56ioi7-mzjnu2y-iqgdrey-dm2mgti-mgl3bxn-pq6w5bm-tbbz4tj-xzwicq2"
    ));
    let json: serde_json::Value =
        serde_json::from_slice(&d.ctl(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["device_id"], id.as_str());

    // Restart on the same state dir: the same id.
    let dirs = d.into_dirs();
    let cert = dirs.state_dir.join(CERT_FILE);
    let cert_before = std::fs::read(&cert).expect("device.crt");
    let d = Daemon::launch(dirs, DaemonOptions::default()).await;
    assert_eq!(api::status(&d).await.device_id, id);
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        cert_before,
        "the certificate is kept"
    );

    // A deleted certificate is issued again for the same key: the same id.
    let dirs = d.into_dirs();
    std::fs::remove_file(&cert).unwrap();
    let d = Daemon::launch(dirs, DaemonOptions::default()).await;
    assert_eq!(api::status(&d).await.device_id, id);
    assert!(cert.exists(), "device.crt is issued again");
    let reissued = CertificateDer::from_pem_file(&cert).unwrap();
    assert_eq!(tls::device_id_of(&reissued).unwrap().to_string(), id);
    let mode = std::fs::metadata(&cert).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Whether every directory above `p` lets others through and `p` lets others run it.
fn others_can_run(p: &Path) -> bool {
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    mode(p) & 0o005 == 0o005 && p.ancestors().skip(1).all(|d| mode(d) & 0o001 != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_may_not_control_the_daemon_even_through_an_open_socket() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running as another user needs root");
        return;
    }
    let d = start(&[]).await;
    // Open the way to the socket for everyone: its directory, the one above, the socket.
    let socket = d.dirs.socket.clone();
    let set =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    set(d.dirs.root.path(), 0o755);
    set(socket.parent().unwrap(), 0o777);
    set(&socket, 0o777);

    // A p2pctl that `nobody` can run.
    let p2pctl = p2p_tests::bin("p2pctl");
    let copy_dir = tempfile::tempdir().unwrap();
    let p2pctl = if others_can_run(&p2pctl) {
        p2pctl
    } else {
        set(copy_dir.path(), 0o755);
        let copy = copy_dir.path().join("p2pctl");
        std::fs::copy(&p2pctl, &copy).unwrap();
        set(&copy, 0o755);
        copy
    };
    let run_as = |uid: Option<u32>| {
        let mut cmd = std::process::Command::new(&p2pctl);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("status")
            .env("NO_COLOR", "1")
            .env("HOME", "/")
            .current_dir("/");
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        p2p_tests::run_with_timeout(&mut cmd, Duration::from_secs(30))
    };

    let out = run_as(Some(65534));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "nobody: {out:?}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("may not control"),
        "nobody: {stderr}"
    );
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert!(
        d.stderr()
            .contains("refused a control call from another user")
    );

    let out = run_as(None);
    assert!(out.status.success(), "root: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(d.device_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_whose_sender_goes_away_is_withdrawn() {
    let (a, b) = tokio::join!(start(&[]), start(&[]));
    let (_src, path) = temp_file("orphan.txt", b"nobody will send this\n");
    let id = api::send(&a, &[&path], &b.peer_addr(), None).await;
    let offer = api::wait_offer(&b, STEP).await;
    assert_eq!(offer.transfer_id, id);
    drop(a);
    let deadline = Instant::now() + STEP;
    loop {
        let t = api::transfer(&b, &id).await;
        // Withdrawn from the waiting offers; the transfer waits, interrupted, for its
        // sender to offer it again.
        if incoming(&b).await.is_empty() && t.state == pb::TransferState::Interrupted as i32 {
            assert!(t.error.contains("session"), "{t:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the offer of a vanished sender still waits: {t:?} {:?}",
            incoming(&b).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
