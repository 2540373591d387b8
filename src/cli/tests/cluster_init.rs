//! `tandem cluster init` and the daemon's start-up errors: no lab needed.

use std::process::Command;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

fn tandem(args: &[&str]) -> std::process::Output {
    Command::new(TANDEM).args(args).output().unwrap()
}

#[test]
fn init_writes_a_valid_cluster_and_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = tandem(&[
        "cluster",
        "init",
        "--name",
        "prod",
        "--dir",
        d,
        "--node",
        "a=10.9.0.1,10.9.1.1",
        "--node",
        "b=10.9.0.2,10.9.1.2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let toml = dir.path().join("cluster.toml");
    let check = tandem(&["config", "check", toml.to_str().unwrap()]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let key = dir.path().join("cluster.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let hex = std::fs::read_to_string(&key).unwrap();
    assert_eq!(hex.trim().len(), 64);
    // Never overwritten by accident: every node holds this key.
    let again =
        tandem(&["cluster", "init", "--name", "prod", "--dir", d, "--node", "a=10.9.0.1", "--node", "b=10.9.0.2"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists; use --force"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), hex);
}

#[test]
fn init_rejects_bad_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, msg) in [
        (vec!["--node", "a=10.9.0.1"], "at least two nodes"),
        (vec!["--node", "a=10.9.0.1", "--node", "b=nope"], "`nope` is not an IP address"),
        (vec!["--node", "a=10.9.0.1,10.9.1.1", "--node", "b=10.9.0.2"], "one address per network"),
        (vec!["--node", "a", "--node", "b=10.9.0.2"], "expected NAME=ADDRESS"),
        (vec!["--node", "A=10.9.0.1", "--node", "b=10.9.0.2"], "invalid name"),
    ] {
        let mut all = vec!["cluster", "init", "--name", "prod", "--dir", d];
        all.extend(args);
        let out = tandem(&all);
        assert_eq!(out.status.code(), Some(1), "{all:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{all:?}: {err}");
    }
    assert!(!dir.path().join("cluster.key").exists(), "nothing written on error");
}

#[test]
fn daemon_refuses_a_bad_configuration_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(&cfg, "name = \"x\"\nkey_fle = \"k\"\n").unwrap();
    let sock = dir.path().join("s.sock");
    let out = tandem(&[
        "daemon",
        "--config",
        cfg.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.toml:2:1: key_fle: unknown key"), "{err}");
    // No daemon: state says so with its own exit code.
    let out = tandem(&["state", "--socket", sock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `tandem daemon` running"));
}
