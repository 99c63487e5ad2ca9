//! `tun-delay`'s command line refuses what it cannot emulate before touching any namespace.
//! (Having an integration test also makes `cargo test --workspace` build the binary, which
//! the fault tests in `tests/` run.)

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tun-delay"))
        .args(args)
        .output()
        .expect("run tun-delay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn loss_outside_the_range_is_a_usage_error() {
    for bad in ["51", "-1", "lots"] {
        let flag = format!("--loss-percent={bad}");
        let (code, err) = run(&["--ns-a", "x", "--ns-b", "y", &flag]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("--loss-percent"), "{err}");
    }
}

#[test]
fn missing_namespaces_fail_with_a_message() {
    let (code, err) = run(&["--ns-a", "p2pd-no-such-ns-a", "--ns-b", "p2pd-no-such-ns-b"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("p2pd-no-such-ns-a"), "{err}");
}
