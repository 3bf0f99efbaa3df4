//! Committed offsets survive SIGKILL of the real broker process, and the
//! CLI consumes as a group member, committing as it goes, with a lag table
//! that matches high watermark minus committed offset.

mod common;

use common::process::{kill9, run, serve};

fn lag_rows(describe: &str) -> Vec<(u32, String, u64, u64)> {
    describe
        .lines()
        .filter(|l| l.starts_with("t "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].parse().unwrap(), f[2].to_string(), f[3].parse().unwrap(), f[4].parse().unwrap())
        })
        .collect()
}

#[test]
fn group_commits_survive_sigkill_and_the_cli_resumes_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let (mut broker, server) = serve(cwd);
    assert!(run(cwd, &server, "strata topic create t").0);
    let lines: String = (0..10).map(|i| format!("event-{i}\n")).collect();
    assert!(run(cwd, &server, &format!("printf '{lines}' | strata produce t")).0);

    let (ok, out, err) = run(cwd, &server, "strata consume t --group g --max 4");
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.contains("event-0") && out.contains("event-3") && !out.contains("event-4"));
    let (ok, describe, _) = run(cwd, &server, "strata group describe g");
    assert!(ok);
    assert_eq!(lag_rows(&describe), [(0, "4".to_string(), 10, 6)], "lag = 10 - 4\n{describe}");

    kill9(&mut broker);
    let addr = server.trim_start_matches("http://");
    let (mut broker, _) = common::process::serve_on(cwd, addr);
    let (ok, describe, err) = run(cwd, &server, "strata group describe g");
    assert!(ok, "{err}");
    assert_eq!(lag_rows(&describe), [(0, "4".to_string(), 10, 6)], "the commit survived kill -9\n{describe}");

    let (ok, out, err) = run(cwd, &server, "strata consume t --group g");
    assert!(ok, "{err}");
    let got: Vec<&str> = out.lines().map(|l| l.rsplit("  ").next().unwrap()).collect();
    assert_eq!(
        got,
        (4..10).map(|i| format!("event-{i}")).collect::<Vec<_>>(),
        "resumes after the commit, skips nothing"
    );
    let (_, describe, _) = run(cwd, &server, "strata group describe g");
    assert_eq!(lag_rows(&describe), [(0, "10".to_string(), 10, 0)]);

    let (ok, out, _) = run(cwd, &server, "strata group reset g --to earliest --dry-run");
    assert!(ok && out.contains("dry run"), "{out}");
    assert!(run(cwd, &server, "strata group reset g --to 2").0);
    let (_, describe, _) = run(cwd, &server, "strata group describe g");
    assert_eq!(lag_rows(&describe), [(0, "2".to_string(), 10, 8)]);
    let (ok, list, _) = run(cwd, &server, "strata group list");
    assert!(ok && list.contains("g "), "{list}");
    assert!(run(cwd, &server, "strata group delete g").0);
    let (ok, _, err) = run(cwd, &server, "strata group describe g");
    assert!(!ok && err.contains("NotFound"), "{err}");
    kill9(&mut broker);
}
