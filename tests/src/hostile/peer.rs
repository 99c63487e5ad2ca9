//! [`Peer`]: one connection of the hostile device, either side, with bounded reads and writes
//! of raw frames and bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use p2p_core::net::identity::Identity;
use p2p_core::net::tls;
use p2p_core::net::wire::{self as codec, PROTOCOL_VERSION, WireError, caps};
use p2p_proto::wire::v1::{self as wire, frame::Body};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Device, STEP};

/// Largest frame the test peer reads.
pub const READ_MAX: usize = 64 << 20;

/// A byte stream: plain TCP, or TLS over it, either side.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to (or from) a daemon that the test drives frame by frame.
pub struct Peer {
    stream: Box<dyn Io>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").finish_non_exhaustive()
    }
}

/// A TCP connection to `addr` (within [`STEP`]), Nagle off.
pub async fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

impl Peer {
    /// Plain TCP, no TLS (for what a device that does not speak TLS would send).
    pub async fn plain(addr: SocketAddr) -> Self {
        Peer {
            stream: Box::new(tcp(addr).await),
        }
    }

    /// TCP and a TLS 1.3 handshake with `device`'s identity; nothing of the wire protocol yet.
    pub async fn tls(addr: SocketAddr, device: &Device) -> Self {
        Peer::tls_as(addr, &device.identity).await
    }

    /// TCP and a TLS 1.3 handshake with `identity`, as a daemon would dial (no expected id).
    pub async fn tls_as(addr: SocketAddr, identity: &Identity) -> Self {
        let config = tls::client_config(identity, None).expect("client config");
        Peer::tls_with(addr, config).await.expect("TLS handshake")
    }

    /// TCP and a TLS handshake with any client configuration; the handshake's error if it
    /// fails on this side.
    ///
    /// # Errors
    /// The TLS handshake failed (an alert from the daemon, or this side refused).
    pub async fn tls_with(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<Self> {
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream =
            tokio::time::timeout(STEP, connector.connect(tls::server_name(), tcp(addr).await))
                .await
                .expect("TLS handshake timed out")?;
        Ok(Peer {
            stream: Box::new(stream),
        })
    }

    /// Connects as `device` and runs the initiator's handshake with the usual proposal (1 MiB
    /// chunks, compression, window 64), which the daemon must agree to unchanged.
    pub async fn handshake(addr: SocketAddr, device: &Device) -> (Self, wire::Config) {
        let proposal = wire::Config {
            chunk_size: 1 << 20,
            compress: true,
            level: 3,
            windowed: true,
            window_size: 64,
        };
        let (p, agreed) = Peer::handshake_with(addr, device, proposal).await;
        assert_eq!(agreed, proposal);
        (p, agreed)
    }

    /// The initiator's handshake with another Config proposal; returns the agreed one.
    pub async fn handshake_with(
        addr: SocketAddr,
        device: &Device,
        proposal: wire::Config,
    ) -> (Self, wire::Config) {
        let mut p = Peer::tls(addr, device).await;
        p.send(Body::Hello(device.hello(PROTOCOL_VERSION))).await;
        let ack = match p.recv().await {
            Body::HelloAck(a) => a,
            other => panic!("expected HelloAck, got {other:?}"),
        };
        assert_eq!(ack.protocol_version, PROTOCOL_VERSION);
        assert!(
            ack.device_id.parse::<p2p_core::DeviceId>().is_ok(),
            "{ack:?}"
        );
        assert_eq!(ack.capabilities, caps::SUPPORTED);
        p.send(Body::Config(proposal)).await;
        let agreed = match p.recv().await {
            Body::ConfigAck(c) => c.agreed.expect("ConfigAck carries the agreed values"),
            other => panic!("expected ConfigAck, got {other:?}"),
        };
        (p, agreed)
    }

    /// The listening side: accepts a daemon's connection and TLS with `identity`; returns the
    /// peer and the device id the daemon proved.
    pub async fn accept(listener: &TcpListener, identity: &Identity) -> (Self, String) {
        let (tcp, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("the daemon connects")
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(identity).unwrap());
        let stream = tokio::time::timeout(STEP, acceptor.accept(tcp))
            .await
            .expect("TLS accept timed out")
            .expect("TLS accept");
        let proven = tls::peer_id(stream.get_ref().1).unwrap().to_string();
        let p = Peer {
            stream: Box::new(stream),
        };
        (p, proven)
    }

    /// The acceptor's half of the handshake's first step: answers the daemon's Hello with a
    /// HelloAck from `identity` offering the capabilities both have, less `withheld`. Returns
    /// the Hello.
    pub async fn answer_hello(
        &mut self,
        identity: &Identity,
        listen_port: u16,
        withheld: u32,
    ) -> wire::Hello {
        let hello = match self.recv().await {
            Body::Hello(h) => h,
            other => panic!("expected Hello, got {other:?}"),
        };
        self.send(Body::HelloAck(wire::HelloAck {
            device_id: identity.device_id.to_string(),
            name: "mallory".into(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: hello.capabilities & caps::SUPPORTED & !withheld,
            listen_port: u32::from(listen_port),
            software_version: "test-peer".into(),
            ..Default::default()
        }))
        .await;
        hello
    }

    /// Sends one frame (panics if it cannot be written within [`STEP`]).
    pub async fn send(&mut self, body: Body) {
        self.write_raw(&codec::encode(body)).await;
    }

    /// Sends one frame; the write error if the daemon has closed or failed the connection.
    ///
    /// # Errors
    /// Writing or flushing failed.
    pub async fn try_send(&mut self, body: Body) -> std::io::Result<()> {
        let bytes = codec::encode(body);
        tokio::time::timeout(STEP, async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await
        })
        .await
        .expect("write timed out")
    }

    /// Writes bytes as they are (panics if they cannot be written within [`STEP`]).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .expect("write timed out")
        .expect("write");
    }

    /// The next frame that is not a Ping (Pings are answered), or `None` after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Result<Body, WireError>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r =
                tokio::time::timeout_at(deadline, codec::read_frame(&mut self.stream, READ_MAX))
                    .await
                    .ok()?;
            match r {
                Ok(Body::Ping(p)) => self.send(Body::Pong(wire::Pong { nonce: p.nonce })).await,
                other => return Some(other),
            }
        }
    }

    /// The next frame or the read error; panics if nothing comes within `within`.
    pub async fn try_recv(&mut self, within: Duration) -> Result<Body, WireError> {
        self.next(within)
            .await
            .unwrap_or_else(|| panic!("no frame from the daemon within {within:?}"))
    }

    /// The next frame (within [`STEP`]); panics on anything else.
    pub async fn recv(&mut self) -> Body {
        self.try_recv(STEP).await.expect("read a frame")
    }

    /// Reads until the daemon closes the connection; returns what it sent before (Pings left
    /// out). Panics if it stays open for `within`.
    pub async fn expect_closed(&mut self, within: Duration) -> Vec<Body> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let r =
                tokio::time::timeout_at(deadline, codec::read_frame(&mut self.stream, READ_MAX))
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "the daemon kept the connection open for {within:?}; it sent {got:?}"
                        )
                    });
            match r {
                Ok(Body::Ping(_)) => {}
                Ok(b) => got.push(b),
                Err(WireError::Closed | WireError::Io(_)) => return got,
                Err(e) => panic!("unexpected bytes from the daemon: {e}"),
            }
        }
    }

    /// Reads raw bytes until the daemon closes the connection (or it fails); returns them.
    /// Panics if it stays open for `within`.
    pub async fn raw_until_closed(&mut self, within: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let r = tokio::time::timeout(within, async {
            let mut buf = [0u8; 4096];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "the daemon kept the connection open for {within:?}; it sent {got:?}"
        );
        got
    }

    /// Waits for the daemon's decision on the offer `id`: Ready, Reject, or Cancel (a
    /// resumable Cancel means "try again"). Pongs are skipped; anything else panics.
    pub async fn decision(&mut self, id: &str) -> Body {
        loop {
            match self.recv().await {
                b @ (Body::Ready(_) | Body::Reject(_) | Body::Cancel(_)) => {
                    let got = match &b {
                        Body::Ready(r) => &r.transfer_id,
                        Body::Reject(r) => &r.transfer_id,
                        Body::Cancel(c) => &c.transfer_id,
                        _ => unreachable!(),
                    };
                    assert_eq!(got, id, "decision for another transfer: {b:?}");
                    return b;
                }
                Body::Pong(_) => {}
                other => panic!("expected Ready or Reject for {id}, got {other:?}"),
            }
        }
    }
}

/// Asserts what a plain TCP client gets for bytes that are not a TLS handshake: nothing, or a
/// TLS alert record (content type 21) — never a frame of the wire protocol.
pub fn assert_tls_refusal(what: &str, got: &[u8]) {
    assert!(
        got.is_empty() || (got[0] == 0x15 && got.len() >= 7),
        "{what}: expected nothing or a TLS alert, got {got:?}"
    );
}
