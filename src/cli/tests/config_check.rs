//! Runs the real `tandem config check` on the shipped examples and on the fixtures of
//! `tests/config/`. Each bad fixture starts with `# expect: LINE:COL: KEY: MESSAGE` lines; every
//! one must be the beginning of an error line printed for that file (after `FILE:`), and the
//! file must print no other error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tandem(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem")).current_dir(dir).args(args).output().expect("run tandem")
}

fn check(dir: &Path, files: &[String]) -> Output {
    let mut args = vec!["config", "check"];
    args.extend(files.iter().map(String::as_str));
    tandem(dir, &args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn expectations(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: ").map(str::to_string))
        .collect()
}

/// Each bad case: a single file, or a directory whose files are checked together.
fn bad_cases() -> Vec<Vec<String>> {
    let dir = repo().join("tests/config/bad");
    let mut cases = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            let mut files: Vec<String> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| format!("{name}/{}", e.unwrap().file_name().to_string_lossy()))
                .filter(|f| f.ends_with(".toml"))
                .collect();
            files.sort();
            cases.push(files);
        } else if name.ends_with(".toml") {
            cases.push(vec![name]);
        }
    }
    cases
}

#[test]
fn shipped_examples_are_valid_together() {
    let files: Vec<String> = [
        "docs/examples/cluster.toml",
        "app-modules/generic-mirror/module.toml",
        "app-modules/generic-farm/module.toml",
    ]
    .map(String::from)
    .to_vec();
    let out = check(&repo(), &files);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{}", text(&out.stderr));
    assert!(stdout.contains("ok: docs/examples/cluster.toml (cluster \"lab\", 3 nodes, 2 networks)"), "{stdout}");
    assert!(
        stdout.contains("ok: app-modules/generic-mirror/module.toml (mirror module \"generic-mirror\", id 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok: app-modules/generic-farm/module.toml (farm module \"generic-farm\", id 2"),
        "{stdout}"
    );
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}

#[test]
fn good_fixtures_are_valid_alone_and_together() {
    let dir = repo().join("tests/config/good");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        let out = check(&dir, std::slice::from_ref(f));
        assert_eq!(out.status.code(), Some(0), "{f}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with(&format!("ok: {f} (")), "{}", text(&out.stdout));
    }
    let out = check(&dir, &files);
    assert_eq!(out.status.code(), Some(0), "together: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), files.len());
}

#[test]
fn bad_fixtures_report_the_expected_errors() {
    let dir = repo().join("tests/config/bad");
    let cases = bad_cases();
    assert!(cases.len() >= 17, "only {} bad cases", cases.len());
    let mut failures = Vec::new();
    for files in &cases {
        let out = check(&dir, files);
        let stderr = text(&out.stderr);
        if out.status.code() != Some(1) {
            failures.push(format!("{files:?}: exit code {:?}, stderr:\n{stderr}", out.status.code()));
            continue;
        }
        let error_lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("config check: ")).collect();
        let summary = stderr.lines().last().unwrap_or("");
        if !summary.starts_with("config check: ") {
            failures.push(format!("{files:?}: no summary line at the end of stderr:\n{stderr}"));
        }
        let mut expected_total = 0;
        for f in files {
            let expected = expectations(&dir.join(f));
            expected_total += expected.len();
            for e in &expected {
                let want = format!("{f}:{e}");
                if !error_lines.iter().any(|l| l.starts_with(&want)) {
                    failures.push(format!("{files:?}: expected an error starting with\n  {want}\ngot:\n{stderr}"));
                }
            }
        }
        if expected_total == 0 {
            failures.push(format!("{files:?}: no `# expect:` line"));
        }
        if error_lines.len() != expected_total {
            failures.push(format!(
                "{files:?}: {} error lines for {expected_total} expectations:\n{stderr}",
                error_lines.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_error_line_has_file_line_col() {
    let dir = repo().join("tests/config/bad");
    let out = check(&dir, &["many-errors.toml".to_string()]);
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    for l in &lines[..4] {
        let rest = l.strip_prefix("many-errors.toml:").unwrap();
        let mut parts = rest.splitn(3, ':');
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{l}");
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{l}");
    }
    assert_eq!(lines[4], "config check: 4 errors in 1 of 1 file");
}

#[test]
fn errors_point_into_the_right_file_when_mixed_with_good_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let good = repo().join("app-modules/generic-mirror/module.toml");
    std::fs::copy(&good, tmp.path().join("good.toml")).unwrap();
    std::fs::write(tmp.path().join("bad.toml"), "name = \"x\"\nkind = \"farm\"\nid = 3\n[[node]]\nname = \"n1\"\n")
        .unwrap();
    let out = check(tmp.path(), &["good.toml".into(), "bad.toml".into()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("ok: good.toml (mirror module"), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad.toml:4:1: node: a farm module needs at least 2 nodes, found 1"), "{stderr}");
    assert!(stderr.contains("config check: 1 error in 1 of 2 files"), "{stderr}");
}

#[test]
fn missing_file_and_no_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let out = check(tmp.path(), &["nope.toml".into()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("nope.toml: cannot read file:"), "{}", text(&out.stderr));
    let out = tandem(tmp.path(), &["config", "check"]);
    assert_ne!(out.status.code(), Some(0));
}
