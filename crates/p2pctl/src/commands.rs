//! One function per command. Each prints a human summary, or with `--json` one JSON document on
//! stdout.

use std::time::Duration;

use anyhow::Result;
use p2p_proto::control::v1 as pb;
use serde_json::json;

use crate::cli::{Cli, Command};
use crate::client;

/// Runs the command named on the command line.
pub(crate) async fn run(cli: Cli) -> Result<()> {
    let socket = client::socket_path(cli.socket.as_deref());
    let mut api = client::connect(&socket).await?;
    match cli.command {
        Command::Status => {
            let s = api.get_status(pb::GetStatusRequest {}).await?.into_inner();
            if cli.json {
                print_json(&status_json(&s));
            } else {
                print!("{}", status_text(&s));
            }
        }
        Command::Shutdown => {
            api.shutdown(pb::ShutdownRequest {}).await?;
            if cli.json {
                print_json(&json!({ "shutdown": true, "socket": socket.display().to_string() }));
            } else {
                println!("p2pd at {} is shutting down", socket.display());
            }
        }
    }
    Ok(())
}

fn print_json(v: &serde_json::Value) {
    println!("{v:#}");
}

fn status_json(s: &pb::GetStatusResponse) -> serde_json::Value {
    json!({
        "device_id": s.device_id,
        "device_name": s.device_name,
        "version": s.version,
        "uptime_ms": s.uptime_ms,
        "listen_address": s.listen_address,
        "session_count": s.session_count,
        "active_transfer_count": s.active_transfer_count,
        "pid": s.pid,
        "state_dir": s.state_dir,
        "download_dir": s.download_dir,
        "socket_path": s.socket_path,
    })
}

fn status_text(s: &pb::GetStatusResponse) -> String {
    format!(
        "p2pd {} running for {} (pid {})\n\
         device:     {} ({})\n\
         listening:  {}\n\
         sessions:   {}\n\
         transfers:  {} active\n\
         downloads:  {}\n\
         state:      {}\n\
         socket:     {}\n",
        s.version,
        human_duration(Duration::from_millis(s.uptime_ms)),
        s.pid,
        s.device_name,
        s.device_id,
        s.listen_address,
        s.session_count,
        s.active_transfer_count,
        s.download_dir,
        s.state_dir,
        s.socket_path,
    )
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_secs(12)), "12s");
        assert_eq!(human_duration(Duration::from_secs(250)), "4m 10s");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 4h"
        );
    }
}
