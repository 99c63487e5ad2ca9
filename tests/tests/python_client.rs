//! Drives a real `p2pd` from Python: `tests/python/control_client.py` generates its stubs from
//! `proto/` at run time, calls `ControlService/GetStatus` and `grpc.health.v1.Health/Check`
//! over the Unix socket with `grpcio`, and prints one JSON object. Its answer must agree with
//! `p2pctl status --json`; its failures must be one line on stderr and exit status 1.
//!
//! Needs `python3` with `grpcio`, `grpcio-tools` and `grpcio-health-checking`
//! (`tests/python/requirements.txt`). Without them the tests fail, on purpose: they are what
//! proves that non-Rust clients work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use p2p_tests::ctl::describe;
use p2p_tests::process::which;
use p2p_tests::{Daemon, DaemonDirs, repo_root, run_with_timeout};
use serde_json::Value;

const PIP_INSTALL: &str = "pip install grpcio grpcio-tools grpcio-health-checking";

/// Generating the stubs and starting the interpreter take a second or two; leave plenty.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The daemon registers its control service under this name with the health service.
const CONTROL_SERVICE: &str = "p2p.control.v1.ControlService";

/// Every field of `GetStatusResponse`, by proto name.
const STATUS_FIELDS: &[&str] = &[
    "device_id",
    "device_name",
    "version",
    "uptime_ms",
    "listen_address",
    "session_count",
    "active_transfer_count",
    "pid",
    "state_dir",
    "download_dir",
    "socket_path",
];

fn script() -> PathBuf {
    repo_root().join("tests/python/control_client.py")
}

/// `python3` from `$PATH` (or the system directories), after checking that the gRPC modules
/// import; panics otherwise.
fn python3() -> PathBuf {
    let python = which("python3").unwrap_or_else(|| {
        panic!("python3 not found in $PATH: install Python 3, then `{PIP_INSTALL}`")
    });
    let out = run_with_timeout(
        Command::new(&python).args([
            "-c",
            "import grpc, grpc_tools.protoc, grpc_health.v1.health_pb2, google.protobuf.json_format",
        ]),
        CLIENT_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{} cannot import the gRPC modules; run `{PIP_INSTALL}` \
         (or `pip install -r tests/python/requirements.txt`):\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// Runs the client script against `socket` with `extra` arguments.
fn run_client(python: &Path, socket: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(python);
    cmd.arg(script())
        .arg("--socket")
        .arg(socket)
        .args(extra)
        // Keep the repository free of __pycache__ directories.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(repo_root());
    run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
}

/// Runs the client, expects success, and returns its JSON object.
fn client_json(python: &Path, socket: &Path, extra: &[&str]) -> Value {
    let out = run_client(python, socket, extra);
    assert!(
        out.status.success(),
        "control_client.py {extra:?} failed: {}",
        describe(&out)
    );
    let text = String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8");
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "expected one line of JSON: {}",
        describe(&out)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(&out)))
}

/// Asserts the client failed with exit status 1 and exactly one line on stderr, no traceback.
/// Returns that line.
fn assert_one_line_failure(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit status 1: {}",
        describe(out)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing may go to stdout on failure: {}",
        describe(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Traceback"),
        "Python traceback on stderr: {}",
        describe(out)
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected a one-line error message: {}",
        describe(out)
    );
    lines[0].to_string()
}

#[test]
fn python_client_reports_what_p2pctl_reports() {
    let python = python3();
    let d = Daemon::start();
    let expected = d.status();

    let got = client_json(&python, &d.dirs.socket, &[]);
    assert_eq!(got["health"], "SERVING", "overall health: {got}");
    let status = got["status"]
        .as_object()
        .unwrap_or_else(|| panic!("no status object: {got}"));
    for field in STATUS_FIELDS {
        assert!(status.contains_key(*field), "status lacks {field}: {got}");
    }
    for field in [
        "device_id",
        "device_name",
        "listen_address",
        "version",
        "pid",
    ] {
        assert_eq!(
            status[field], expected[field],
            "{field}: python {got} vs p2pctl {expected}"
        );
    }
    assert_eq!(status["pid"], d.pid, "pid: {got}");
    assert_eq!(
        status["socket_path"],
        d.dirs.socket.display().to_string(),
        "socket_path: {got}"
    );
    assert!(
        status["uptime_ms"].is_u64(),
        "uptime_ms must be an integer: {got}"
    );
    assert!(
        status["device_id"].as_str().is_some_and(|s| !s.is_empty()),
        "device_id must be set: {got}"
    );

    let got = client_json(
        &python,
        &d.dirs.socket,
        &["--health-service", CONTROL_SERVICE],
    );
    assert_eq!(
        got["health"], "SERVING",
        "health of {CONTROL_SERVICE}: {got}"
    );
    assert_eq!(got["status"]["device_id"], expected["device_id"], "{got}");
}

#[test]
fn python_client_health_of_unknown_service_is_not_found() {
    let python = python3();
    let d = Daemon::start();
    let out = run_client(
        &python,
        &d.dirs.socket,
        &["--health-service", "no.such.Service"],
    );
    let line = assert_one_line_failure(&out);
    assert!(line.contains("NOT_FOUND"), "expected NOT_FOUND: {line}");
    assert!(
        line.contains("Health/Check"),
        "the message should name the call: {line}"
    );
}

#[test]
fn python_client_without_daemon_fails_with_one_line() {
    let python = python3();
    let dirs = DaemonDirs::new();

    // No socket file at all.
    let out = run_client(&python, &dirs.socket, &[]);
    let line = assert_one_line_failure(&out);
    assert!(line.contains("UNAVAILABLE"), "expected UNAVAILABLE: {line}");

    // A stale socket file nobody listens on.
    std::fs::create_dir_all(dirs.socket.parent().expect("socket dir")).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(&dirs.socket).expect("bind"));
    assert!(dirs.socket.exists(), "the stale socket file stays behind");
    let out = run_client(&python, &dirs.socket, &[]);
    let line = assert_one_line_failure(&out);
    assert!(line.contains("UNAVAILABLE"), "expected UNAVAILABLE: {line}");
}
