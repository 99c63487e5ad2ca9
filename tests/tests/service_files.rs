//! Checks the service definitions shipped in `systemd/` and `launchd/`.
//!
//! * Every systemd unit must pass `systemd-analyze verify` without a single line on stderr.
//!   `systemd-analyze verify` exits 0 for most problems (unknown keys, unparsable values,
//!   unknown sections are "ignored" with a warning), so the exit status alone proves nothing;
//!   any output on stderr counts as a failure.
//! * The checker itself is tested: copies of the units with a typo (`Tpye=notify`), a bad
//!   value, an unknown section or a misspelt command must be rejected.
//! * The launchd plist must parse (Python's `plistlib`) and run `/usr/local/bin/p2pd`.
//! * The units must agree with each other and with the daemon's flags: `Type=notify`,
//!   `ExecReload=` sending SIGHUP, the socket unit listening where `--socket` points, the
//!   state and download directories lying inside `StateDirectory=` (everything else is
//!   read-only under `ProtectSystem=strict`).
//!
//! Needs `systemd-analyze` (Debian package `systemd`; PID 1 need not be systemd) and `python3`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use p2p_tests::process::which;
use p2p_tests::repo_root;

/// Where the units run the daemon from.
const INSTALLED_BINARY: &str = "/usr/local/bin/p2pd";

/// Commands the units use that every real target system has, but a minimal CI container
/// may lack: `/bin/kill` comes from `procps`, which is "important" but not "required" in
/// Debian and missing from the `debian` container images. When absent here they are
/// replaced by `/bin/true` (coreutils, always present) in the copies that get verified, so
/// that `systemd-analyze` judges the unit rather than the container. Any other missing
/// command (say a misspelt `/bin/kil`) is still reported.
const HOST_COMMANDS: &[&str] = &["/bin/kill", "/usr/bin/install"];

fn read_repo_file(rel: &str) -> String {
    let path = repo_root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn systemd_analyze() -> PathBuf {
    which("systemd-analyze").unwrap_or_else(|| {
        panic!(
            "systemd-analyze not found in $PATH or /usr/bin: the systemd unit files cannot be \
             verified. Install it (Debian/Ubuntu: `apt-get install systemd`; systemd need not \
             be running)."
        )
    })
}

/// The executable that replaces `/usr/local/bin/p2pd` in the verified copies.
///
/// `systemd-analyze verify` checks that `ExecStart=` names an existing executable, and
/// `/usr/local/bin/p2pd` is not installed on test machines. The daemon built from this
/// workspace is preferred (`target/<profile>/p2pd`, the parent of the `deps/` directory
/// holding this test executable) because it is what would be installed; it only has to exist,
/// systemd-analyze never runs it. Cargo does not build other packages' binaries for this test,
/// so when it has not been built `/bin/true` stands in: any existing executable proves the
/// same thing, namely that the unit is fine apart from the install path.
fn stand_in_binary() -> PathBuf {
    let built = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("p2pd")))
        .filter(|p| p.is_file());
    built.unwrap_or_else(|| PathBuf::from("/bin/true"))
}

/// Rewrites a unit for verification on this machine: the daemon path and host commands that
/// are missing here (see [`HOST_COMMANDS`]).
fn localize(unit: &str) -> String {
    let mut text = unit.replace(INSTALLED_BINARY, &stand_in_binary().to_string_lossy());
    for cmd in HOST_COMMANDS {
        if !Path::new(cmd).exists() {
            eprintln!("note: {cmd} is missing on this machine; verifying with /bin/true instead");
            text = text.replace(&format!("={cmd} "), "=/bin/true ");
        }
    }
    text
}

#[derive(Clone, Copy, Debug)]
enum Manager {
    System,
    User,
}

/// Writes `units` (file name, contents) into a fresh directory and runs
/// `systemd-analyze [--user] verify` on them. `Err` carries the complaint.
fn verify(manager: Manager, units: &[(&str, String)]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for (name, text) in units {
        let p = dir.path().join(name);
        fs::write(&p, text).expect("write unit copy");
        paths.push(p);
    }

    let mut cmd = Command::new(systemd_analyze());
    // Deterministic logging whatever the caller's environment says: to stderr (under a
    // systemd service, "auto" would send it to the journal and hide every complaint), at
    // the default level (debug would fill stderr with noise that is not about the units).
    cmd.env("SYSTEMD_LOG_TARGET", "console")
        .env("SYSTEMD_LOG_LEVEL", "info")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env_remove("JOURNAL_STREAM");
    let runtime_dir = tempfile::tempdir().expect("tempdir");
    if let Manager::User = manager {
        // `--user verify` works as root in a container, but the user manager it simulates
        // needs $XDG_RUNTIME_DIR ("Failed to lookup RuntimeDirectory path: No such device or
        // address" without it); an empty private directory is enough.
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime_dir.path());
    }
    // --man=no: do not check Documentation= man pages (needs man-db, unrelated to the unit).
    cmd.args(["verify", "--man=no"]).args(&paths);

    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run systemd-analyze: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!(
            "systemd-analyze {manager:?} verify of {names:?} failed ({status}):\n\
             --- stderr ---\n{stderr}--- stdout ---\n{stdout}",
            names = units.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            status = out.status,
        ))
    }
}

fn system_units() -> Vec<(&'static str, String)> {
    vec![
        (
            "p2pd.service",
            localize(&read_repo_file("systemd/p2pd.service")),
        ),
        (
            "p2pd.socket",
            localize(&read_repo_file("systemd/p2pd.socket")),
        ),
    ]
}

fn user_units() -> Vec<(&'static str, String)> {
    vec![(
        "p2pd.service",
        localize(&read_repo_file("systemd/user/p2pd.service")),
    )]
}

/// A unit file as `section -> key -> values` (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Minimal unit-file parser: sections, `Key=Value`, comments, backslash continuations.
fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not Key=Value: {line}"));
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

/// The last value of `section.key` (later assignments override earlier ones).
fn get<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a str {
    unit.get(section)
        .and_then(|s| s.get(key))
        .and_then(|v| v.last())
        .map(String::as_str)
        .unwrap_or_else(|| panic!("[{section}] {key}= is missing"))
}

fn has(unit: &Unit, section: &str, key: &str) -> bool {
    unit.get(section).is_some_and(|s| s.contains_key(key))
}

/// The value following `flag` in a command line.
fn flag_value<'a>(cmdline: &'a str, flag: &str) -> &'a str {
    let mut words = cmdline.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == flag)
        .unwrap_or_else(|| panic!("{flag} missing in {cmdline}"));
    words
        .next()
        .unwrap_or_else(|| panic!("{flag} without a value in {cmdline}"))
}

// ---------------------------------------------------------------------------------------------
// systemd-analyze verify

#[test]
fn system_units_pass_systemd_analyze_verify() {
    // Verified together: the socket unit needs its p2pd.service next to it.
    verify(Manager::System, &system_units()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn user_unit_passes_systemd_analyze_user_verify() {
    verify(Manager::User, &user_units()).unwrap_or_else(|e| panic!("{e}"));
}

/// The check must catch mistakes, including those systemd-analyze only warns about with exit
/// status 0. Each mutation of a good unit must be rejected.
#[test]
fn verify_rejects_broken_units() {
    let mutations: &[(&str, &str, &str)] = &[
        // (what, from, to) - exit status 0, a warning on stderr
        ("misspelt key", "\nType=notify\n", "\nTpye=notify\n"),
        (
            "bad value",
            "\nRestart=on-failure\n",
            "\nRestart=sometimes\n",
        ),
        (
            "bad boolean",
            "\nNoNewPrivileges=yes\n",
            "\nNoNewPrivileges=yess\n",
        ),
        (
            "unknown syscall set",
            "=@system-service\n",
            "=@system-servic\n",
        ),
        // exit status 1
        (
            "missing command",
            "ExecReload=/bin/true ",
            "ExecReload=/bin/kil ",
        ),
        ("misspelt section", "\n[Service]\n", "\n[Servise]\n"),
    ];
    for (manager, units) in [
        (Manager::System, system_units()),
        (Manager::User, user_units()),
    ] {
        let service = &units[0].1;
        // "missing command" needs a known-good ExecReload= to break.
        let service = service.replace("ExecReload=/bin/kill ", "ExecReload=/bin/true ");
        for (what, from, to) in mutations {
            assert!(
                service.contains(from),
                "{manager:?} unit has no {from:?} to break ({what})"
            );
            let mut broken = units.clone();
            broken[0].1 = service.replacen(from, to, 1);
            let err = verify(manager, &broken).err().unwrap_or_else(|| {
                panic!("{manager:?} verify accepted a unit with a {what} ({from:?} -> {to:?})")
            });
            eprintln!("rejected as expected ({manager:?}, {what}):\n{err}");
        }
    }
    // And the typo is named, so a failing run points at the culprit.
    let mut broken = system_units();
    broken[0].1 = broken[0]
        .1
        .replacen("\nType=notify\n", "\nTpye=notify\n", 1);
    let err = verify(Manager::System, &broken).unwrap_err();
    assert!(
        err.contains("Tpye"),
        "the complaint does not name the bad key:\n{err}"
    );
}

#[test]
fn missing_install_path_is_what_gets_rewritten() {
    // Guard for localize(): the shipped units refer to the installed binary, and once
    // rewritten they no longer do.
    for rel in ["systemd/p2pd.service", "systemd/user/p2pd.service"] {
        let text = read_repo_file(rel);
        assert!(
            text.contains(&format!("ExecStart={INSTALLED_BINARY}")),
            "{rel}"
        );
        assert!(!localize(&text).contains(INSTALLED_BINARY), "{rel}");
    }
}

// ---------------------------------------------------------------------------------------------
// unit contents

#[test]
fn system_service_settings() {
    let svc = parse_unit(&read_repo_file("systemd/p2pd.service"));
    assert_eq!(get(&svc, "Service", "Type"), "notify");
    let reload = get(&svc, "Service", "ExecReload");
    assert!(
        reload.contains("-HUP") && reload.contains("$MAINPID"),
        "ExecReload={reload}"
    );
    assert_eq!(get(&svc, "Service", "User"), "p2pd");
    assert_eq!(get(&svc, "Service", "Group"), "p2pd");
    assert_eq!(get(&svc, "Service", "RuntimeDirectory"), "p2pd");
    assert_eq!(get(&svc, "Service", "RuntimeDirectoryPreserve"), "yes");
    assert_eq!(get(&svc, "Service", "ProtectSystem"), "strict");
    assert_eq!(get(&svc, "Service", "Restart"), "on-failure");
    assert_eq!(get(&svc, "Install", "WantedBy"), "multi-user.target");

    let exec = get(&svc, "Service", "ExecStart");
    assert!(
        exec.starts_with(&format!("{INSTALLED_BINARY} ")),
        "ExecStart={exec}"
    );

    // The control socket lives in the RuntimeDirectory= (/run/<name>).
    let socket = Path::new(flag_value(exec, "--socket"));
    assert_eq!(
        socket.parent(),
        Some(Path::new("/run/p2pd")),
        "--socket {}",
        socket.display()
    );

    // With ProtectSystem=strict only StateDirectory= (/var/lib/<name>) is writable: the state
    // and download directories must lie inside it.
    let state_dirs: Vec<PathBuf> = get(&svc, "Service", "StateDirectory")
        .split_whitespace()
        .map(|d| Path::new("/var/lib").join(d))
        .collect();
    assert!(
        state_dirs.contains(&PathBuf::from("/var/lib/p2pd")),
        "{state_dirs:?}"
    );
    for flag in ["--state-dir", "--download-dir"] {
        let dir = Path::new(flag_value(exec, flag));
        assert!(
            dir.starts_with("/var/lib/p2pd"),
            "{flag} {} is read-only",
            dir.display()
        );
    }
}

#[test]
fn socket_unit_matches_service() {
    let svc = parse_unit(&read_repo_file("systemd/p2pd.service"));
    let sock = parse_unit(&read_repo_file("systemd/p2pd.socket"));
    let exec = get(&svc, "Service", "ExecStart");
    assert_eq!(
        get(&sock, "Socket", "ListenStream"),
        flag_value(exec, "--socket"),
        "p2pd.socket must listen where p2pd.service's --socket points"
    );
    assert_eq!(
        get(&sock, "Socket", "SocketUser"),
        get(&svc, "Service", "User")
    );
    assert_eq!(
        get(&sock, "Socket", "SocketGroup"),
        get(&svc, "Service", "Group")
    );
    assert_eq!(get(&sock, "Socket", "SocketMode"), "0660");
    assert_eq!(get(&sock, "Install", "WantedBy"), "sockets.target");
}

#[test]
fn user_service_settings() {
    let svc = parse_unit(&read_repo_file("systemd/user/p2pd.service"));
    assert_eq!(get(&svc, "Service", "Type"), "notify");
    // No flags: the per-user defaults ($XDG_RUNTIME_DIR/p2pd/p2pd.sock, $XDG_STATE_HOME/p2pd).
    assert_eq!(get(&svc, "Service", "ExecStart"), INSTALLED_BINARY);
    let reload = get(&svc, "Service", "ExecReload");
    assert!(
        reload.contains("-HUP") && reload.contains("$MAINPID"),
        "ExecReload={reload}"
    );
    assert_eq!(get(&svc, "Install", "WantedBy"), "default.target");
    for key in ["User", "Group", "DynamicUser"] {
        assert!(
            !has(&svc, "Service", key),
            "a user unit cannot switch users ({key}=)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// launchd

/// Parses a plist with Python's plistlib and returns it as JSON.
fn load_plist(path: &Path) -> Result<serde_json::Value, String> {
    let python = which("python3")
        .unwrap_or_else(|| panic!("python3 not found in $PATH: cannot check the launchd plist"));
    let out = Command::new(python)
        .args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    if !out.status.success() {
        return Err(format!(
            "{} does not parse as a plist:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("plistlib output: {e}"))
}

#[test]
fn launchd_plist_parses_and_runs_p2pd() {
    let path = repo_root().join("launchd/com.p2pd.daemon.plist");
    let plist = load_plist(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plist["Label"], "com.p2pd.daemon", "{plist:#}");
    assert_eq!(plist["ProgramArguments"][0], INSTALLED_BINARY, "{plist:#}");
    assert_eq!(plist["RunAtLoad"], true, "{plist:#}");
    assert_eq!(plist["KeepAlive"]["SuccessfulExit"], false, "{plist:#}");
    assert_eq!(plist["ProcessType"], "Background", "{plist:#}");
    // launchd expands neither "~" nor variables: log paths must be absolute.
    for key in ["StandardOutPath", "StandardErrorPath"] {
        let p = plist[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing: {plist:#}"));
        assert!(
            p.starts_with('/') && !p.contains('~') && !p.contains('$'),
            "{key}={p}"
        );
    }
}

#[test]
fn launchd_check_rejects_broken_plist() {
    let good = read_repo_file("launchd/com.p2pd.daemon.plist");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.plist");
    let broken = good.replacen("</dict>\n</plist>", "</plist>", 1);
    assert_ne!(broken, good, "mutation did not apply");
    fs::write(&path, broken).expect("write");
    assert!(
        load_plist(&path).is_err(),
        "a plist with an unclosed <dict> was accepted"
    );
}
