//! `p2pctl send`: checking the paths locally, starting the transfer, and following it to its
//! end with progress bars, plain lines or NDJSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use p2p_client::ControlClient;
use p2p_proto::control::v1 as pb;
use serde_json::json;

use crate::cli::SendArgs;
use crate::client;
use crate::commands::Finished;
use crate::progress::{self, SendView};

/// The paths as absolute text for the daemon (which has another working directory), each
/// checked to exist here first so that a typo is reported without asking the daemon.
///
/// # Errors
/// A path does not exist, cannot be examined, or is not UTF-8.
pub(crate) fn local_paths(paths: &[PathBuf]) -> Result<Vec<String>> {
    paths
        .iter()
        .map(|p| {
            let abs = absolute_text(p)?;
            match Path::new(&abs).try_exists() {
                Ok(true) => Ok(abs),
                Ok(false) => bail!("cannot send {abs}: no such file or directory"),
                Err(e) => Err(anyhow!(e).context(format!("cannot send {abs}"))),
            }
        })
        .collect()
}

/// `path` made absolute against the current directory, as text.
///
/// # Errors
/// The current directory is unknown, or the path is not UTF-8 (the control API carries text).
pub(crate) fn absolute_text(path: &Path) -> Result<String> {
    let abs = std::path::absolute(path)
        .with_context(|| format!("cannot make {} absolute", path.display()))?;
    abs.into_os_string().into_string().map_err(|raw| {
        anyhow!(
            "{} is not valid UTF-8, which the control API needs",
            PathBuf::from(raw).display()
        )
    })
}

fn options(args: &SendArgs) -> pb::SendOptions {
    pb::SendOptions {
        compress: args.no_compress.then_some(false),
        level: args.level.unwrap_or(0),
        chunk_size: args.chunk_size.unwrap_or(0),
        window: args.window.unwrap_or(0),
        max_speed: args.max_speed.unwrap_or(0),
    }
}

/// Sends `paths` (from [`local_paths`]) as `args` say. Ctrl-C while following leaves the
/// transfer running and returns [`Finished::Interrupted`].
///
/// # Errors
/// A failed RPC, stdout closed, or a transfer that did not complete.
pub(crate) async fn send(
    api: &mut ControlClient,
    args: &SendArgs,
    paths: Vec<String>,
    json: bool,
) -> Result<Finished> {
    let request = pb::SendRequest {
        paths,
        peer: args.peer.clone(),
        options: Some(options(args)),
    };
    let id = client::answer(api.send(request).await)?.transfer_id;
    if args.detach {
        if json {
            progress::stdout_line(&format!("{:#}", json!({ "transfer_id": id })))?;
        } else {
            progress::stdout_line(&id)?;
        }
        return Ok(Finished::Done);
    }

    let mut view = SendView::new(json);
    let followed = tokio::select! {
        result = p2p_client::watch::follow_transfer(api, &id, |event| view.event(event)) => Some(result),
        Ok(()) = tokio::signal::ctrl_c() => None,
    };
    view.finish();
    let Some(result) = followed else {
        eprintln!("transfer {id} continues in the background; `p2pctl cancel {id}` stops it");
        return Ok(Finished::Interrupted);
    };
    let t = result.with_context(|| {
        format!(
            "cannot follow transfer {id}; it goes on in the daemon (`p2pctl cancel {id}` stops it)"
        )
    })?;
    if let Some(failure) = progress::failure_text(&t) {
        bail!(failure);
    }
    if !json {
        progress::stdout_line(&progress::completed_summary(&t))?;
    }
    Ok(Finished::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn paths_become_absolute_and_missing_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, b"x").unwrap();
        let got = local_paths(std::slice::from_ref(&file)).unwrap();
        assert_eq!(got, [file.to_str().unwrap()]);
        let relative = local_paths(&[PathBuf::from(".")]).unwrap();
        assert!(Path::new(&relative[0]).is_absolute());
        let missing = dir.path().join("nope");
        let err = local_paths(&[file, missing.clone()])
            .unwrap_err()
            .to_string();
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn flags_become_options_with_zero_for_default() {
        let cli = crate::cli::Cli::parse_from(["p2pctl", "send", "x", "--peer", "h:1"]);
        let crate::cli::Command::Send(args) = cli.command else {
            panic!("not send");
        };
        assert_eq!(options(&args), pb::SendOptions::default());
        let cli = crate::cli::Cli::parse_from([
            "p2pctl",
            "send",
            "x",
            "--peer",
            "h:1",
            "--no-compress",
            "--chunk-size",
            "1M",
            "--window",
            "8",
            "--max-speed",
            "512K",
        ]);
        let crate::cli::Command::Send(args) = cli.command else {
            panic!("not send");
        };
        assert_eq!(
            options(&args),
            pb::SendOptions {
                compress: Some(false),
                level: 0,
                chunk_size: 1 << 20,
                window: 8,
                max_speed: 512 << 10,
            }
        );
    }
}
