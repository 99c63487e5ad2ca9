//! The daemon's effective configuration: built-in defaults, overridden by the optional TOML
//! config file, overridden by flags. Validation happens here so that a bad value stops the
//! daemon before it touches anything, with the key and the problem named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use p2p_core::{AcceptPolicy, UntrustedPolicy};

use crate::cli::Cli;

/// The default peer port.
pub(crate) const DEFAULT_PORT: u16 = 14567;
/// Longest device name accepted.
const MAX_NAME_LEN: usize = 64;

/// The config file as written by the user. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    listen: Option<String>,
    name: Option<String>,
    download_dir: Option<PathBuf>,
    log_level: Option<String>,
    accept: Option<String>,
    accept_untrusted: Option<String>,
    discovery: Option<bool>,
    discovery_port: Option<u16>,
    peers: Option<Vec<String>>,
    max_attempts: Option<u32>,
    /// A speed ("10M", "unlimited") or a number of bytes per second.
    max_speed: Option<toml::Value>,
}

/// Errors of loading the configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys or wrong types.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value has the right type but is not acceptable.
    #[error("invalid value for `{key}` ({origin}): {problem}")]
    Invalid {
        key: &'static str,
        origin: String,
        problem: String,
    },
    /// No default could be derived.
    #[error(transparent)]
    Path(#[from] p2p_core::paths::PathError),
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) config_file: Option<PathBuf>,
    pub(crate) socket: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) listen: SocketAddr,
    /// `None`: the name stored in the identity (the host name at creation).
    pub(crate) name: Option<String>,
    pub(crate) download_dir: PathBuf,
    pub(crate) log_level: String,
    pub(crate) accept: AcceptPolicy,
    pub(crate) accept_untrusted: UntrustedPolicy,
    /// UDP port of discovery beacons; `None` when discovery is off.
    pub(crate) discovery_port: Option<u16>,
    /// Static peers (HOST:PORT), flags and config together.
    pub(crate) peers: Vec<String>,
    /// Consecutive failed attempts before an outgoing transfer gives up; 0 = never.
    pub(crate) max_attempts: u32,
    /// Global speed limit of outgoing transfers, bytes per second; 0 = none.
    pub(crate) max_speed: u64,
}

impl Config {
    /// Loads the config file (the one named by `--config`, else the default one if it exists)
    /// and merges it with the flags.
    pub(crate) fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let config_file = match &cli.config {
            Some(p) => Some(absolute(p)),
            None => p2p_core::paths::default_config_file().filter(|p| p.exists()),
        };
        let file = match &config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file, config_file)
    }

    fn merge(
        cli: &Cli,
        file: FileConfig,
        config_file: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let origin = |flag: bool| -> String {
            match (&config_file, flag) {
                (_, true) => "command line".to_owned(),
                (Some(p), false) => format!("config file {}", p.display()),
                (None, false) => "default".to_owned(),
            }
        };

        let listen = match (cli.listen, &file.listen) {
            (Some(a), _) => a,
            (None, Some(s)) => s.parse().map_err(|e| ConfigError::Invalid {
                key: "listen",
                origin: origin(false),
                problem: format!("{s:?} is not ADDR:PORT ({e}), e.g. \"0.0.0.0:{DEFAULT_PORT}\""),
            })?,
            (None, None) => SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
        };

        let name = cli.name.clone().or(file.name.clone());
        if let Some(n) = &name {
            validate_name(n).map_err(|problem| ConfigError::Invalid {
                key: "name",
                origin: origin(cli.name.is_some()),
                problem,
            })?;
        }

        let log_level = match (
            &cli.log_level,
            std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()),
            &file.log_level,
        ) {
            (Some(l), _, _) => l.clone(),
            (None, Some(env), _) => env,
            (None, None, Some(l)) => l.clone(),
            (None, None, None) => "info".to_owned(),
        };
        crate::logging::parse_filter(&log_level).map_err(|problem| ConfigError::Invalid {
            key: "log_level",
            origin: origin(cli.log_level.is_some()),
            problem,
        })?;

        let state_dir = match cli.state_dir.clone().or(file.state_dir.clone()) {
            Some(p) => non_empty_path(p, "state_dir", origin(cli.state_dir.is_some()))?,
            None => p2p_core::paths::default_state_dir()?,
        };
        let socket = match cli.socket.clone().or(file.socket.clone()) {
            Some(p) => non_empty_path(p, "socket", origin(cli.socket.is_some()))?,
            None => p2p_client::paths::default_socket_path(),
        };
        p2p_client::paths::check_socket_path(&socket).map_err(|e| ConfigError::Invalid {
            key: "socket",
            origin: origin(cli.socket.is_some()),
            problem: e.to_string(),
        })?;
        let download_dir = match cli.download_dir.clone().or(file.download_dir.clone()) {
            Some(p) => non_empty_path(p, "download_dir", origin(cli.download_dir.is_some()))?,
            None => p2p_core::paths::default_download_dir(&state_dir),
        };

        let accept = match (cli.accept, &file.accept) {
            (Some(a), _) => a,
            (None, Some(s)) => s.parse().map_err(|problem| ConfigError::Invalid {
                key: "accept",
                origin: origin(false),
                problem,
            })?,
            (None, None) => AcceptPolicy::default(),
        };

        let accept_untrusted = match (cli.accept_untrusted, &file.accept_untrusted) {
            (Some(a), _) => a,
            (None, Some(s)) => s.parse().map_err(|problem| ConfigError::Invalid {
                key: "accept_untrusted",
                origin: origin(false),
                problem,
            })?,
            (None, None) => UntrustedPolicy::default(),
        };

        let discovery_on = !cli.no_discovery && file.discovery.unwrap_or(true);
        let discovery_port = discovery_on.then(|| {
            cli.discovery_port
                .or(file.discovery_port)
                .unwrap_or(p2p_core::net::discovery::DEFAULT_PORT)
        });
        let mut peers = file.peers.clone().unwrap_or_default();
        peers.extend(cli.peer_addr.iter().cloned());
        for p in &peers {
            let ok = matches!(p.rsplit_once(':'), Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n != 0));
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "peers",
                    origin: origin(cli.peer_addr.contains(p)),
                    problem: format!("{p:?} is not HOST:PORT"),
                });
            }
        }

        let max_speed = match (cli.max_speed, &file.max_speed) {
            (Some(rate), _) => rate,
            (None, Some(value)) => rate_of(value).map_err(|problem| ConfigError::Invalid {
                key: "max_speed",
                origin: origin(false),
                problem,
            })?,
            (None, None) => 0,
        };

        Ok(Config {
            max_attempts: cli.max_attempts.or(file.max_attempts).unwrap_or(0),
            max_speed,
            discovery_port,
            peers,
            accept_untrusted,
            config_file,
            socket,
            state_dir,
            listen,
            name,
            download_dir,
            log_level,
            accept,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', "\n    "),
    })
}

fn non_empty_path(p: PathBuf, key: &'static str, origin: String) -> Result<PathBuf, ConfigError> {
    if p.as_os_str().is_empty() {
        return Err(ConfigError::Invalid {
            key,
            origin,
            problem: "the path is empty".to_owned(),
        });
    }
    Ok(absolute(&p))
}

/// Makes a path absolute against the current directory, so that it keeps its meaning after
/// `--daemon` changes directory to `/`.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A `max_speed` value: a speed as text (`"10M"`, `"unlimited"`, see
/// [`p2p_client::units::parse_rate`]) or a whole number of bytes per second.
fn rate_of(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::String(text) => p2p_client::units::parse_rate(text).map_err(|e| e.to_string()),
        toml::Value::Integer(n) => {
            let rate = u64::try_from(*n)
                .map_err(|_| format!("{n} is negative; use 0 or \"unlimited\" for no limit"))?;
            p2p_core::transfer::ratelimit::check_rate(rate).map_err(|e| e.to_string())?;
            Ok(rate)
        }
        other => Err(format!(
            "expected a speed such as \"10M\", \"512K\" or \"unlimited\", or a whole number of bytes per second, not a {}",
            other.type_str()
        )),
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("the device name is empty".to_owned());
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "the device name is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the device name contains control characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["p2pd"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "name = \"from-file\"\nlisten = \"127.0.0.1:9\"\nlog_level = \"debug\"\n",
        );
        let c = Config::load(&cli(&[
            "--config",
            f.to_str().unwrap(),
            "--name",
            "from-flag",
            "--log-level",
            "warn",
        ]))
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("from-flag"));
        assert_eq!(c.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(c.log_level, "warn");
        let c = Config::load(&cli(&[
            "--config",
            f.to_str().unwrap(),
            "--state-dir",
            "/x",
        ]))
        .unwrap();
        assert_eq!(c.name.as_deref(), Some("from-file"));
        assert_eq!(c.state_dir, PathBuf::from("/x"));
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "lisen = \"0.0.0.0:1\"\n");
        let err = Config::load(&cli(&["--config", f.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (text, key) in [
            ("listen = \"nowhere\"", "listen"),
            ("listen = 5", "listen"),
            ("name = \"\"", "name"),
            ("log_level = \"info,[\"", "log_level"),
            ("download_dir = \"\"", "download_dir"),
            ("accept = \"always\"", "accept"),
            ("accept_untrusted = \"auto\"", "accept_untrusted"),
            ("peers = [\"nohost\"]", "peers"),
            ("discovery_port = 70000", "discovery_port"),
            ("max_speed = \"fast\"", "max_speed"),
            ("max_speed = \"10X\"", "max_speed"),
            ("max_speed = -1", "max_speed"),
            ("max_speed = 5", "max_speed"),
            ("max_speed = 1.5", "max_speed"),
            ("max_speed = \"1.5.5M\"", "max_speed"),
        ] {
            let f = write(dir.path(), text);
            let err = Config::load(&cli(&["--config", f.to_str().unwrap()]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn max_speed_takes_a_speed_a_number_or_unlimited() {
        let dir = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("max_speed = \"10M\"", 10 << 20),
            ("max_speed = \"512K\"", 512 << 10),
            ("max_speed = \"1G\"", 1 << 30),
            ("max_speed = \"unlimited\"", 0),
            ("max_speed = 1000000", 1_000_000),
            ("max_speed = 0", 0),
            ("", 0),
        ] {
            let f = write(dir.path(), text);
            let c = Config::load(&cli(&["--config", f.to_str().unwrap()])).unwrap();
            assert_eq!(c.max_speed, want, "{text}");
        }
        // The flag wins over the file.
        let f = write(dir.path(), "max_speed = \"10M\"");
        let c = Config::load(&cli(&[
            "--config",
            f.to_str().unwrap(),
            "--max-speed",
            "unlimited",
        ]))
        .unwrap();
        assert_eq!(c.max_speed, 0);
        // A bad value names the file, the key and the problem.
        let f = write(dir.path(), "max_speed = \"10X\"");
        let err = Config::load(&cli(&["--config", f.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`max_speed`")
                && err.contains(f.to_str().unwrap())
                && err.contains("unknown unit"),
            "{err}"
        );
        let err = Cli::try_parse_from(["p2pd", "--max-speed", "-1"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--max-speed") && err.contains("not a speed"),
            "{err}"
        );
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Config::load(&cli(&["--config", "/nonexistent/p2pd.toml"])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::merge(&cli(&["--state-dir", "/s"]), FileConfig::default(), None).unwrap();
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert!(c.socket.ends_with("p2pd.sock"));
    }
}
