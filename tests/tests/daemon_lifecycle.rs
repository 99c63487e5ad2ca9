//! The daemon as a service: start and stop, status, identity, the control socket's rules,
//! signals, reload, `--daemon`, socket activation and readiness notification. Every test runs
//! real `p2pd` and `p2pctl` processes in temporary directories.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use p2p_tests::api::is_device_id_format;
use p2p_tests::{
    ChildGuard, Daemon, DaemonDirs, DaemonOptions, PidGuard, alive, ctl, run_p2pd,
    run_with_timeout, text, wait_until,
};

#[test]
fn starts_answers_and_stops_on_sigterm_removing_the_socket() {
    let mut d = Daemon::start();
    let s = d.status();
    assert_eq!(s["pid"].as_u64(), Some(u64::from(d.pid)));
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    let listen: std::net::SocketAddr = s["listen_address"].as_str().unwrap().parse().unwrap();
    assert_eq!(listen.ip().to_string(), "127.0.0.1");
    assert_ne!(listen.port(), 0, "port 0 is resolved to the bound port");
    assert!(
        std::net::TcpStream::connect(listen).is_ok(),
        "the reported peer port is really bound"
    );
    assert_eq!(s["socket_path"], d.dirs.socket.display().to_string());
    assert_eq!(s["state_dir"], d.dirs.state_dir.display().to_string());
    assert_eq!(s["download_dir"], d.dirs.download_dir.display().to_string());
    assert_eq!(s["session_count"], 0);
    assert_eq!(s["active_transfer_count"], 0);

    let status = d
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
        .expect("exits within 5 s");
    assert_eq!(status.code(), Some(0), "{}", d.stderr());
    assert!(!d.dirs.socket.exists(), "socket removed on shutdown");
}

#[test]
fn sigint_also_stops_cleanly() {
    let mut d = Daemon::start();
    let status = d
        .signal_and_wait(libc::SIGINT, Duration::from_secs(5))
        .expect("exits within 5 s");
    assert_eq!(status.code(), Some(0));
    assert!(!d.dirs.socket.exists());
}

#[test]
fn status_human_summary_matches_json() {
    let d = Daemon::start();
    let s = d.status();
    let out = d.ctl(&["status"]);
    assert!(out.status.success());
    let human = text(&out.stdout);
    for key in ["device_id", "device_name", "listen_address", "socket_path"] {
        let v = s[key].as_str().unwrap();
        assert!(human.contains(v), "human status lacks {key}={v}:\n{human}");
    }
    assert!(human.contains(&format!("pid {}", d.pid)), "{human}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&human).is_err(),
        "human output is not JSON"
    );
}

#[test]
fn shutdown_command_stops_the_daemon() {
    let mut d = Daemon::start();
    let out = d.ctl(&["shutdown", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["shutdown"], true);
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s");
    assert_eq!(status.code(), Some(0));
    assert!(!d.dirs.socket.exists());
}

#[test]
fn identity_persists_across_restarts_and_name_defaults_to_host_name() {
    let mut d = Daemon::start();
    let first = d.status();
    assert!(
        d.signal_and_wait(libc::SIGTERM, Duration::from_secs(5))
            .is_some()
    );
    let dirs = d.into_dirs();
    let d2 = Daemon::start_with(dirs, DaemonOptions::default());
    let second = d2.status();
    assert_eq!(first["device_id"], second["device_id"]);
    let id = second["device_id"].as_str().unwrap();
    assert!(is_device_id_format(id), "{id}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(second["device_name"], host.trim());
    for f in ["identity.json", "device.key", "device.crt", "state.db"] {
        let mode = std::fs::metadata(d2.dirs.state_dir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[test]
fn name_flag_overrides_without_changing_the_id() {
    let d = Daemon::start_with(
        DaemonDirs::new(),
        DaemonOptions::with_args(&["--name", "kitchen-pc"]),
    );
    assert_eq!(d.status()["device_name"], "kitchen-pc");
}

#[test]
fn socket_is_0600_in_a_0700_directory() {
    let d = Daemon::start();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.dirs.socket), 0o600);
    assert_eq!(mode(d.dirs.socket.parent().unwrap()), 0o700);
}

#[test]
fn a_stale_socket_is_replaced() {
    let d = Daemon::start();
    let id = d.status()["device_id"].clone();
    let dirs = d.into_dirs(); // SIGKILL: the socket file stays behind
    assert!(dirs.socket.exists(), "kill -9 leaves the socket file");
    let d2 = Daemon::start_with(dirs, DaemonOptions::default());
    assert_eq!(d2.status()["device_id"], id);
}

#[test]
fn a_second_daemon_is_refused_and_the_first_keeps_serving() {
    let d = Daemon::start();
    let other = DaemonDirs::new();
    let out = run_p2pd(
        &[
            "--socket",
            d.dirs.socket.to_str().unwrap(),
            "--state-dir",
            other.state_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("already running") && err.contains(d.dirs.socket.to_str().unwrap()),
        "{err}"
    );
    assert!(d.dirs.socket.exists());
    assert_eq!(d.status()["pid"].as_u64(), Some(u64::from(d.pid)));
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_removed() {
    let dirs = DaemonDirs::new();
    std::fs::create_dir_all(dirs.socket.parent().unwrap()).unwrap();
    std::fs::write(&dirs.socket, b"not a socket").unwrap();
    let out = run_p2pd(&dirs.args(), Duration::from_secs(10));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a socket"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&dirs.socket).unwrap(), b"not a socket");
}

#[test]
fn a_busy_peer_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dirs = DaemonDirs::new();
    let out = run_p2pd(
        &dirs.args_with(&["--listen", &addr]),
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&addr) && err.contains("cannot listen"),
        "{err}"
    );
    assert!(
        !dirs.socket.exists(),
        "a failed start leaves no socket behind"
    );
}

#[test]
fn bad_config_files_are_refused_with_the_key_named() {
    let cases = [
        ("lisen = \"127.0.0.1:0\"\n", "lisen"),
        ("listen = \"not-an-address\"\n", "listen"),
        ("listen = 14567\n", "listen"),
        ("name = \"\"\n", "name"),
        ("log_level = \"info,[\"\n", "log_level"),
        ("name = \"unterminated\n", "config file"),
    ];
    for (config, key) in cases {
        let dirs = DaemonDirs::new();
        std::fs::write(&dirs.config_file, config).unwrap();
        let config_file = dirs.config_file.to_str().unwrap();
        let out = run_p2pd(
            &dirs.args_with(&["--config", config_file]),
            Duration::from_secs(10),
        );
        assert!(!out.status.success(), "{config:?} accepted");
        let err = text(&out.stderr);
        assert!(
            err.contains(key),
            "{config:?}: error does not name {key}: {err}"
        );
        assert!(
            err.contains(dirs.config_file.to_str().unwrap()),
            "names the file: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!dirs.socket.exists());
    }
    let out = run_p2pd(
        &["--config", "/nonexistent/p2pd.toml"],
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/p2pd.toml"));
}

#[test]
fn config_file_values_apply_and_flags_win() {
    let d = Daemon::start_with(
        DaemonDirs::new(),
        DaemonOptions {
            config: Some("name = \"from-config\"\nlog_level = \"debug\"\n".into()),
            args: vec!["--log-level".into(), "info".into()],
            ..Default::default()
        },
    );
    assert_eq!(d.status()["device_name"], "from-config");
    let d2 = Daemon::start_with(
        DaemonDirs::new(),
        DaemonOptions {
            config: Some("name = \"from-config\"\n".into()),
            args: vec!["--name".into(), "from-flag".into()],
            ..Default::default()
        },
    );
    assert_eq!(d2.status()["device_name"], "from-flag");
}

#[test]
fn sighup_reloads_the_config_and_keeps_running_on_a_bad_one() {
    let dirs = DaemonDirs::new();
    let dl2 = dirs.root.path().join("other-downloads");
    let d = Daemon::start_with(
        dirs,
        DaemonOptions {
            config: Some("name = \"before\"\nlisten = \"127.0.0.1:0\"\n".into()),
            no_default_listen: true,
            ..Default::default()
        },
    );
    let pid = d.pid;
    assert_eq!(d.status()["device_name"], "before");

    // download_dir is set on the command line in the harness, so the flag keeps winning there;
    // the name comes from the file and changes live.
    std::fs::write(
        &d.dirs.config_file,
        format!(
            "name = \"after\"\nlisten = \"127.0.0.1:1\"\ndownload_dir = \"{}\"\n",
            dl2.display()
        ),
    )
    .unwrap();
    p2p_tests::signal(pid, libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || d.status()["device_name"]
            == "after"),
        "{}",
        d.stderr()
    );
    assert_eq!(
        d.status()["download_dir"],
        d.dirs.download_dir.display().to_string(),
        "the flag still wins"
    );
    assert!(
        wait_until(Duration::from_secs(5), || d.stderr().contains("listen")
            && d.stderr().contains("after a restart")),
        "a change that needs a restart is logged: {}",
        d.stderr()
    );

    std::fs::write(&d.dirs.config_file, "name = [broken\n").unwrap();
    p2p_tests::signal(pid, libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || d
            .stderr()
            .contains("config not reloaded")),
        "{}",
        d.stderr()
    );
    assert!(alive(pid));
    assert_eq!(
        d.status()["device_name"],
        "after",
        "the running configuration is kept"
    );
}

#[test]
fn daemon_mode_detaches_writes_the_pidfile_and_answers() {
    let dirs = DaemonDirs::new();
    let pidfile = dirs.root.path().join("p2pd.pid");
    let daemon_args = ["--listen", "127.0.0.1:0", "--daemon", "--pidfile"];
    let mut args = dirs.args_with(&daemon_args);
    args.push(pidfile.display().to_string());
    let out = run_p2pd(&args, Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| !s.trim().is_empty())
    }));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let guard = PidGuard(pid);
    assert!(wait_until(Duration::from_secs(10), || ctl(
        &dirs.socket,
        &["status"]
    )
    .status
    .success()));
    let s: serde_json::Value =
        serde_json::from_slice(&ctl(&dirs.socket, &["status", "--json"]).stdout).unwrap();
    assert_eq!(s["pid"].as_u64(), Some(u64::from(pid)));

    // The pid file is locked: a second daemon with the same pid file fails to start.
    let other = DaemonDirs::new();
    let mut args2 = other.args_with(&daemon_args);
    args2.push(pidfile.display().to_string());
    let out2 = run_p2pd(&args2, Duration::from_secs(10));
    assert!(
        !out2.status.success(),
        "a second daemon on a locked pid file must fail"
    );
    assert!(
        text(&out2.stderr).contains("pid file"),
        "{}",
        text(&out2.stderr)
    );

    let log = dirs.state_dir.join("p2pd.log");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("p2pd ready"),
        "logs go to {}",
        log.display()
    );
    p2p_tests::signal(pid, libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || !alive(pid)),
        "daemon exits on SIGTERM"
    );
    assert!(!dirs.socket.exists());
    assert!(!pidfile.exists(), "the pid file is removed on a clean exit");
    drop(guard);
}

#[test]
fn readiness_is_notified_once_the_socket_accepts() {
    let dirs = DaemonDirs::new();
    let notify_path = dirs.root.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let child = Command::new(p2p_tests::bin("p2pd"))
        .args(dirs.args_with(&["--listen", "127.0.0.1:0"]))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = ChildGuard(child);
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("a notification arrives");
    let msg = text(&buf[..n]);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // Ready means the control API answers right now, without retrying.
    let out = ctl(&dirs.socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    p2p_tests::signal(child.pid(), libc::SIGTERM);
    let n = notify.recv(&mut buf).expect("STOPPING arrives");
    assert!(text(&buf[..n]).contains("STOPPING=1"));
}

#[test]
fn socket_activation_serves_on_the_passed_socket_and_leaves_it() {
    let dirs = DaemonDirs::new();
    std::fs::create_dir_all(dirs.socket.parent().unwrap()).unwrap();
    // systemd-socket-activate binds the socket and hands it over as fd 3 with LISTEN_FDS=1.
    let mut args: Vec<String> = vec![
        "-l".into(),
        dirs.socket.display().to_string(),
        p2p_tests::bin("p2pd").display().to_string(),
    ];
    args.extend(dirs.args_with(&["--listen", "127.0.0.1:0"]));
    let mut child = Command::new("systemd-socket-activate")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd) is installed");
    let guard = PidGuard(child.id());
    assert!(wait_until(Duration::from_secs(10), || dirs.socket.exists()));
    // The first connection starts p2pd (systemd-socket-activate execs it), which then serves it.
    let out = ctl(&dirs.socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        s["pid"].as_u64(),
        Some(u64::from(child.id())),
        "p2pd runs in place of the activator"
    );
    p2p_tests::signal(child.id(), libc::SIGTERM);
    let _ = child.wait();
    assert!(
        dirs.socket.exists(),
        "an inherited socket belongs to the service manager and stays"
    );
    drop(guard);
}

#[test]
fn unknown_socket_activation_without_fds_binds_its_own() {
    // LISTEN_FDS for another process (wrong LISTEN_PID) must be ignored.
    let dirs = DaemonDirs::new();
    let child = Command::new(p2p_tests::bin("p2pd"))
        .args(dirs.args_with(&["--listen", "127.0.0.1:0"]))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = ChildGuard(child);
    assert!(wait_until(Duration::from_secs(10), || ctl(
        &dirs.socket,
        &["status"]
    )
    .status
    .success()));
}

#[test]
fn p2pctl_without_a_daemon_says_so_in_one_line() {
    let dirs = DaemonDirs::new();
    let out = ctl(&dirs.socket, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(dirs.socket.to_str().unwrap()));
    // A socket file with nothing behind it reads the same.
    std::fs::create_dir_all(dirs.socket.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&dirs.socket).unwrap());
    let out = ctl(&dirs.socket, &["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn help_of_both_binaries_runs() {
    for bin in ["p2pd", "p2pctl"] {
        let out = run_with_timeout(
            Command::new(p2p_tests::bin(bin)).arg("--help"),
            Duration::from_secs(10),
        );
        assert!(out.status.success());
    }
}
