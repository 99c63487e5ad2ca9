//! TCP options of peer connections: no Nagle, and a send buffer large enough for a long fat
//! path where the kernel's send auto-tuning would stop short; and how many connections (lanes)
//! a session wants for its send buffer to cover a fast, long path.

use tokio::net::TcpStream;

/// Send buffer a session should be able to use over all its connections (lanes): enough for
/// 1 Gbit/s × 100 ms, or 2.5 Gbit/s × 50 ms.
const SESSION_SNDBUF: usize = 16 << 20;
/// Most connections per session.
const MAX_LANES: usize = 4;

/// Connections a session wants: as many as it takes for `SESSION_SNDBUF` of send buffer,
/// given what one connection gets here.
pub(crate) fn lanes_wanted() -> usize {
    SESSION_SNDBUF
        .div_ceil(connection_sndbuf().max(1))
        .clamp(1, MAX_LANES)
}

/// The send buffer one peer connection can fill: `2 × SO_SNDBUF` where `tune` sets it, else
/// what auto-tuning reaches (`tcp_wmem`'s maximum); `PEER_SNDBUF` where that is unknown.
fn connection_sndbuf() -> usize {
    if let Some(asked) = sndbuf_request() {
        return 2 * asked;
    }
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(PEER_SNDBUF)
}

/// Send buffer asked for on peer connections: room for the bandwidth-delay product of a fast,
/// long path (1 Gbit/s × 50 ms ≈ 6.25 MB, and some slack).
const PEER_SNDBUF: usize = 16 << 20;

/// Latency matters for acknowledgements: no Nagle. And a single TCP connection must be able to
/// fill a long fat path: Linux auto-tunes the send buffer only up to `net.ipv4.tcp_wmem`'s
/// maximum (4 MiB by default), less than 1 Gbit/s × 50 ms. An unprivileged `SO_SNDBUF` may go up
/// to `net.core.wmem_max` (the kernel doubles the value for its bookkeeping), so the buffer is
/// set — only where that gives more than auto-tuning could reach, since a fixed size turns
/// send auto-tuning off. The receive buffer is left alone: its auto-tuning already goes much
/// higher (`tcp_rmem`), and setting it would switch that off.
pub(crate) fn tune(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(cause = %e, "cannot set TCP_NODELAY");
    }
    let Some(want) = sndbuf_request() else {
        return;
    };
    let sock = socket2::SockRef::from(stream);
    match sock.set_send_buffer_size(want) {
        Ok(()) => tracing::debug!(
            asked = want,
            got = sock.send_buffer_size().unwrap_or(0),
            "peer socket send buffer set"
        ),
        Err(e) => tracing::debug!(cause = %e, "cannot set SO_SNDBUF"),
    }
}

/// The `SO_SNDBUF` to ask for, or `None` where send auto-tuning reaches as far (read once from
/// `/proc/sys`; elsewhere than Linux the buffer is always asked for).
fn sndbuf_request() -> Option<usize> {
    static REQUEST: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *REQUEST.get_or_init(|| {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let wmem_max = read("/proc/sys/net/core/wmem_max").and_then(|s| s.trim().parse().ok());
        let autotune_max = read("/proc/sys/net/ipv4/tcp_wmem")
            .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()));
        sndbuf_choice(wmem_max, autotune_max)
    })
}

/// What to ask for given `net.core.wmem_max` and `tcp_wmem`'s maximum (when known): the kernel
/// grants `2 × min(asked, wmem_max)`; asking is worth it only if that beats auto-tuning.
fn sndbuf_choice(wmem_max: Option<usize>, autotune_max: Option<usize>) -> Option<usize> {
    match (wmem_max, autotune_max) {
        (Some(cap), Some(auto)) => {
            let want = PEER_SNDBUF.min(cap);
            (2 * want > auto).then_some(want)
        }
        _ => Some(PEER_SNDBUF),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_buffer_is_set_only_where_it_beats_auto_tuning() {
        // Debian's defaults: wmem_max 4 MiB (granted doubled), auto-tuning up to 4 MiB.
        assert_eq!(sndbuf_choice(Some(4 << 20), Some(4 << 20)), Some(4 << 20));
        // A generous wmem_max: the request itself is the limit.
        assert_eq!(
            sndbuf_choice(Some(64 << 20), Some(4 << 20)),
            Some(PEER_SNDBUF)
        );
        // Auto-tuning already goes further than a fixed buffer could.
        assert_eq!(sndbuf_choice(Some(208 << 10), Some(4 << 20)), None);
        assert_eq!(sndbuf_choice(Some(16 << 20), Some(64 << 20)), None);
        assert_eq!(sndbuf_choice(None, None), Some(PEER_SNDBUF));
    }
}
