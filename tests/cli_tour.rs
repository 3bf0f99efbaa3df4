//! Runs the README's five-minute tour, line by line, against the real
//! `strata` binary, and checks what a person would look for in the output.
//! The commands come from the README itself, so the docs cannot drift.

mod common;

use std::path::Path;
use std::process::Command;

use common::process::{run, serve_all};

fn tour_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("<!-- tour:start -->").expect("tour start marker");
    let end = readme.find("<!-- tour:end -->").expect("tour end marker");
    readme[start..end].lines().filter(|l| l.contains("strata ")).map(|l| l.trim().to_string()).collect()
}

#[test]
fn readme_tour_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, addrs) = serve_all(dir.path(), "127.0.0.1:0");
    let server = addrs.grpc.clone();
    let commands = tour_commands();
    assert!(commands.len() >= 6, "the tour has its commands: {commands:?}");
    let mut outputs = Vec::new();
    for line in &commands {
        let (ok, stdout, stderr) = run(dir.path(), &server, line);
        assert!(ok, "`{line}` failed: {stderr}");
        outputs.push((line.clone(), stdout));
    }
    let out = |prefix: &str| {
        outputs
            .iter()
            .find(|(l, _)| l.starts_with(prefix))
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("no tour command starts with {prefix:?}"))
    };
    assert!(out("strata topic create").contains("created topic payments.sent with 3 partition(s)"));
    let all = out("strata consume 'payments.*'");
    assert!(all.contains(r#"key=cust-42  source=web  {"amount": 120}"#), "{all}");
    assert!(all.contains("refund 1") && all.contains("refund 2"), "{all}");
    let json = out("strata consume payments.sent --from -1h --format json");
    let records: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 3, "the last hour holds all three records");
    assert!(records.iter().any(|r| r["key"] == "cust-42" && r["headers"]["source"] == "web"));
    let offsets = out("strata offsets");
    assert!(offsets.contains("OFFSET-AT-TIME"), "{offsets}");
    let describe = out("strata topic describe");
    assert!(describe.contains("retention.ms = 86400000"), "{describe}");
    assert!(describe.contains("flush.policy = always"), "{describe}");
    assert!(out("strata topic list").contains("payments.sent"));
    assert_eq!(out("strata consume payments.sent --group alerts").lines().count(), 2);
    let lag = out("strata group describe alerts");
    let total: u64 =
        lag.lines().find(|l| l.starts_with("TOTAL")).unwrap().split_whitespace().last().unwrap().parse().unwrap();
    assert_eq!(total, 1, "three records, two consumed and committed\n{lag}");

    // The README's metrics block, right after the tour: the lag Prometheus
    // scrapes is the lag `group describe` shows, and `strata top` shows it.
    let metrics = common::readme_block("metrics");
    let mut lines = metrics.lines().filter(|l| !l.trim().is_empty());
    let curl = lines.next().expect("the curl line").replace("127.0.0.1:9644", &addrs.http);
    assert!(curl.starts_with("curl ") && curl.contains("grep strata_consumer_group_lag"), "{curl}");
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is needed for this test (apt-get install curl)"
    );
    let (ok, scraped, stderr) = run(dir.path(), &server, &curl);
    assert!(ok, "`{curl}` failed: {stderr}");
    let series: Vec<&str> = scraped.lines().filter(|l| l.starts_with("strata_consumer_group_lag{")).collect();
    assert_eq!(series.len(), 3, "one series per partition of payments.sent: {scraped}");
    let scraped_lag: u64 = series.iter().map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(scraped_lag, total, "{scraped}");
    assert!(series.iter().all(|l| l.contains("group=\"alerts\"") && l.contains("topic=\"payments.sent\"")));
    let top = lines.next().expect("the strata top line");
    let (ok, view, stderr) = run(dir.path(), &server, &format!("STRATA_HTTP={} {top}", addrs.http));
    assert!(ok, "`{top}` failed: {stderr}");
    assert!(
        view.lines().any(|l| l.starts_with("payments.sent ") && l.split_whitespace().nth(5) == Some("3")),
        "{view}"
    );
    assert!(view.lines().any(|l| l.starts_with("alerts ") && l.contains("payments.sent")), "{view}");

    // Errors are one clear line and a non-zero exit.
    let (ok, _, stderr) = run(dir.path(), &server, "strata consume no.such.topic");
    assert!(!ok && stderr.trim().lines().count() == 1 && stderr.contains("no.such.topic"), "{stderr}");

    // Stop it the way an operator would, then inspect the files offline.
    let pid = broker.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(broker.wait().unwrap().success(), "SIGTERM is a clean exit");
    assert!(dir.path().join("data/payments.sent/0/clean.shutdown").exists());
    let (ok, stdout, stderr) = run(dir.path(), &server, "strata log verify ./data");
    assert!(ok, "{stdout}{stderr}");
    assert!(
        // Three partitions of payments.sent plus the committed-offsets log
        // and the share group journal.
        stdout.contains("OK: no problems found") && stdout.contains("5 partition(s)"),
        "{stdout}"
    );
    let dumps: Vec<String> = (0..3)
        .map(|p| {
            run(
                dir.path(),
                &server,
                &format!("strata log dump ./data/payments.sent/{p}/00000000000000000000.log --records"),
            )
            .1
        })
        .collect();
    assert!(dumps.iter().any(|d| d.contains("crc ok") && d.contains("amount")), "{dumps:?}");
}

#[test]
fn log_verify_reports_a_corrupt_segment_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, addrs) = serve_all(dir.path(), "127.0.0.1:0");
    let server = addrs.grpc.clone();
    assert!(run(dir.path(), &server, "strata topic create t --config segment.bytes=1024").0);
    for i in 0..30 {
        assert!(run(dir.path(), &server, &format!("strata produce t value-{i}-{}", "x".repeat(50))).0);
    }
    Command::new("kill").args(["-TERM", &broker.id().to_string()]).status().unwrap();
    broker.wait().unwrap();
    let segment = dir.path().join("data/t/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let position = bytes.len() / 2;
    bytes[position] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let (ok, stdout, _) = run(dir.path(), &server, "strata log verify ./data");
    assert!(!ok, "a corrupt segment fails verify");
    assert!(
        stdout.contains("PROBLEM") && stdout.contains("00000000000000000000.log") && stdout.contains("at byte"),
        "{stdout}"
    );
}

#[test]
fn server_addresses_work_as_people_type_them_and_an_unreachable_one_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, addrs) = serve_all(dir.path(), "127.0.0.1:0");
    let server = addrs.grpc.clone();
    let bare = server.trim_start_matches("http://").to_string();
    let (ok, _, err) = run(dir.path(), &server, &format!("strata topic create plain --server {bare}"));
    assert!(ok, "host:port without a scheme: {err}");
    let port = bare.rsplit(':').next().unwrap();
    let (ok, out, err) = run(dir.path(), &server, &format!("strata topic list --server localhost:{port}"));
    assert!(ok && out.contains("plain"), "localhost:port: {out}{err}");
    common::process::kill9(&mut broker);
    let (ok, _, err) = run(dir.path(), &server, &format!("strata topic list --server {bare}"));
    assert!(!ok);
    assert!(err.contains("cannot reach the broker") && err.to_lowercase().contains("refused"), "{err}");
    assert!(err.contains("strata serve"), "says what to do: {err}");
}
