//! The command line as people who know kcat, rpk and the `nats` CLI use it:
//! streaming stdin, addresses as typed, saying why nothing was printed,
//! kcat's flags and templates, bytes shown faithfully, quiet pipes, and
//! logs that do not cry wolf. Every test runs the real binary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{run, serve, BIN};

/// `strata ARGS` against `server`, with no STRATA_SERVER or profile unless given.
fn strata(cwd: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).current_dir(cwd).env_remove("STRATA_SERVER").env("STRATA_CONFIG", cwd.join("no-profile.toml"));
    c
}

fn out(mut c: impl std::borrow::BorrowMut<Command>) -> (bool, String, String) {
    let o = c.borrow_mut().output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A child's output lines, read on a thread, so a wait for one has a deadline.
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn of(r: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    /// The next line, failing the test after 20 s without one.
    fn next(&self, what: &str) -> String {
        self.0.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|e| panic!("no line ({e}) waiting for: {what}"))
    }
}

/// Polls `check` for up to 20 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn produce_sends_each_stdin_line_as_it_arrives_and_sums_up_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    assert!(run(dir.path(), &server, "strata topic create logs").0);
    // `tail -f app.log | strata produce logs`: stdin stays open.
    let mut producer = strata(dir.path(), &["produce", "logs", "--server", &server])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    writeln!(stdin, "first line").unwrap();
    stdin.flush().unwrap();
    eventually("the first line to be readable while stdin is still open", || {
        run(dir.path(), &server, "strata consume logs").1.contains("first line")
    });
    writeln!(stdin, "second line").unwrap();
    drop(stdin);
    let o = producer.wait_with_output().unwrap();
    assert!(o.status.success());
    let summary = String::from_utf8_lossy(&o.stdout);
    assert_eq!(summary.trim(), "2 record(s) -> logs[0] offsets 0..=1", "one summary line: {summary}");

    // kcat's -K: per-line keys; a line without the separator has no key.
    let (ok, _, err) =
        run(dir.path(), &server, "printf 'cust-42:refund 1\\nno key here\\n' | strata produce logs -K :");
    assert!(ok, "{err}");
    let json = run(dir.path(), &server, "strata consume logs --from 2 --format json").1;
    let records: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2, "{json}");
    assert_eq!((records[0]["key"].as_str(), records[0]["value"].as_str()), (Some("cust-42"), Some("refund 1")));
    assert_eq!((records[1]["key"].as_str(), records[1]["value"].as_str()), (Some(""), Some("no key here")));
    broker.kill().unwrap();
}

#[test]
fn addresses_are_taken_as_people_type_them() {
    let dir = tempfile::tempdir().unwrap();
    // `serve --listen localhost:PORT` resolves the name.
    let mut broker = strata(
        dir.path(),
        &["serve", "--listen", "localhost:0", "--kafka-listen", "none", "--http-listen", "127.0.0.1:0"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let addr = common::process::listening(&mut broker);
    let port = addr.rsplit(':').next().unwrap().to_string();
    let hostport = format!("localhost:{port}");
    // --server before the subcommand, as rpk and kcat take it.
    let (ok, stdout, err) = out(strata(dir.path(), &["--server", &hostport, "topic", "create", "a"]));
    assert!(ok && stdout.contains("created topic a"), "{stdout}{err}");
    // A profile names the broker when neither --server nor STRATA_SERVER does.
    let profile = dir.path().join("profile.toml");
    std::fs::write(&profile, format!("server = \"127.0.0.1:{port}\"\n")).unwrap();
    let (ok, stdout, err) = out(strata(dir.path(), &["topic", "list"]).env("STRATA_CONFIG", &profile));
    assert!(ok && stdout.contains('a'), "{stdout}{err}");
    // ... and STRATA_SERVER wins over the profile, --server over both.
    let (ok, _, err) =
        out(strata(dir.path(), &["topic", "list"]).env("STRATA_CONFIG", &profile).env("STRATA_SERVER", "127.0.0.1:1"));
    assert!(!ok && err.contains("127.0.0.1:1"), "{err}");
    let (ok, _, err) = out(strata(dir.path(), &["topic", "list", "--server", &hostport])
        .env("STRATA_CONFIG", &profile)
        .env("STRATA_SERVER", "127.0.0.1:1"));
    assert!(ok, "{err}");
    // A broken profile is said, not silently ignored.
    std::fs::write(&profile, "server = [").unwrap();
    let (_, _, err) = out(strata(dir.path(), &["topic", "list"]).env("STRATA_CONFIG", &profile));
    assert!(err.contains("profile") && err.contains("profile.toml"), "{err}");
    broker.kill().unwrap();
    // The new data dir and topic create logged nothing about an unclean stop.
    let _ = broker.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut broker.stderr.take().unwrap(), &mut log).unwrap();
    assert!(!log.contains("unclean"), "a brand-new data dir is not a recovery:\n{log}");
}

#[test]
fn consume_says_why_it_printed_nothing_and_reads_times_as_times() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    // Waiting for a topic that does not exist yet says so, then delivers.
    let mut follower = strata(dir.path(), &["consume", "later", "--follow", "--server", &server])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err_line = Lines::of(follower.stderr.take().unwrap()).next("the waiting message");
    assert!(err_line.contains("no topic matches") && err_line.contains("waiting"), "{err_line}");
    assert!(run(dir.path(), &server, "strata topic create later").0);
    assert!(run(dir.path(), &server, "strata produce later hello").0);
    let line = Lines::of(follower.stdout.take().unwrap()).next("the record");
    assert!(line.contains("hello"), "{line}");
    follower.kill().unwrap();
    let _ = follower.wait();

    assert!(run(dir.path(), &server, "printf 'a\\nb\\nc\\n' | strata produce later").0);
    // Past the end: a word on stderr naming the high watermark, exit 0.
    let (ok, stdout, err) = run(dir.path(), &server, "strata consume later --from 99999");
    assert!(ok && stdout.is_empty(), "{stdout}");
    assert!(err.contains("past the end") && err.contains("high watermark 4"), "{err}");
    // A 13-digit number is epoch milliseconds; @ms is too.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 60_000;
    let (ok, stdout, err) = run(dir.path(), &server, &format!("strata consume later --from {now_ms}"));
    assert!(ok && stdout.is_empty() && err.contains("nothing to read"), "a time in the future: {stdout}{err}");
    let (_, stdout, _) = run(dir.path(), &server, "strata consume later --from 1000000000000");
    assert_eq!(stdout.lines().count(), 4, "a time in 2001: everything\n{stdout}");
    let (_, stdout, _) = run(dir.path(), &server, "strata consume later --from @1000000000000");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    broker.kill().unwrap();
}

#[test]
fn consume_takes_kcat_habits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    assert!(run(dir.path(), &server, "strata topic create k --partitions 2").0);
    for p in 0..2 {
        let cmd = format!("seq 1 20 | sed 's/^/p{p}-/' | strata produce k -p {p} -H src=test");
        assert!(run(dir.path(), &server, &cmd).0);
    }
    let (ok, stdout, err) = run(dir.path(), &server, "strata consume k -p 1 -o -3 -f '%t/%p/%o %h %s\\n'");
    assert!(ok, "{err}");
    assert_eq!(stdout, "k/1/17 src=test p1-18\nk/1/18 src=test p1-19\nk/1/19 src=test p1-20\n", "{stdout}");
    // -N counts back from each partition's end.
    let (_, stdout, _) = run(dir.path(), &server, "strata consume k -o -2 -f '%p:%o\\n'");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["0:18", "0:19", "1:18", "1:19"], "{stdout}");
    // --to stops before an offset; -c caps the count.
    let (_, stdout, _) = run(dir.path(), &server, "strata consume k -p 0 --from 5 --to 8 -f '%o\\n'");
    assert_eq!(stdout, "5\n6\n7\n", "{stdout}");
    let (_, stdout, _) = run(dir.path(), &server, "strata consume k -p 0 -c 2 -f '%o\\n'");
    assert_eq!(stdout, "0\n1\n");
    let (ok, _, err) = run(dir.path(), &server, "strata consume k -p 7");
    assert!(!ok && err.contains("no partition 7"), "{err}");
    broker.kill().unwrap();
}

#[test]
fn bytes_that_are_not_text_are_shown_faithfully() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    assert!(run(dir.path(), &server, "strata topic create b").0);
    assert!(run(dir.path(), &server, "printf 'plain\\n\\377\\376\\n' | strata produce b").0);
    let (_, text, _) = run(dir.path(), &server, "strata consume b -f '%s\\n'");
    assert_eq!(text, "plain\n\\xff\\xfe\n", "escaped in text, never U+FFFD");
    let (_, json, _) = run(dir.path(), &server, "strata consume b --format json");
    let records: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records[0]["value"], "plain");
    assert!(records[0].get("value_encoding").is_none());
    assert_eq!((records[1]["value"].as_str(), records[1]["value_encoding"].as_str()), (Some("//4="), Some("base64")));
    let (_, hex, _) = run(dir.path(), &server, "strata consume b --value-format hex -f '%s\\n'");
    assert_eq!(hex, "706c61696e\nfffe\n");
    let (_, b64, _) = run(dir.path(), &server, "strata consume b --value-format base64 -f '%s\\n'");
    assert_eq!(b64, "cGxhaW4=\n//4=\n");
    broker.kill().unwrap();
}

#[test]
fn a_closed_pipe_ends_client_commands_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    assert!(run(dir.path(), &server, "strata topic create p").0);
    // More output than a pipe holds, so the writer meets the closed pipe.
    assert!(run(dir.path(), &server, "seq 1 20000 | sed 's/$/ some padding to fill the pipe/' | strata produce p").0);
    for cmd in ["strata consume p | head -1", "strata log dump --records ./data/p/0/*.log | head -1"] {
        let script = format!("set -o pipefail; {}; echo \"status=$?\" >&2", cmd.replace("strata ", &format!("{BIN} ")));
        let o = Command::new("bash")
            .args(["-c", &script])
            .current_dir(dir.path())
            .env("STRATA_SERVER", &server)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1, "{cmd}: {err}");
        assert!(!err.contains("panic") && !err.contains("Broken pipe"), "{cmd}: {err}");
        // Killed by SIGPIPE (128 + 13) as `cat` would be, never a panic's 101.
        assert!(err.contains("status=141") || err.contains("status=0"), "{cmd}: {err}");
    }
    broker.kill().unwrap();
}

#[test]
fn logs_say_what_they_could_not_do() {
    let dir = tempfile::tempdir().unwrap();
    // An invalid RUST_LOG is reported, not silently replaced.
    let (_, _, err) =
        out(strata(dir.path(), &["topic", "list", "--server", "127.0.0.1:1"]).env("RUST_LOG", "foo=[bad"));
    assert!(err.contains("RUST_LOG is not a valid filter"), "{err}");
    // --log-format json: every log line is a JSON object.
    let mut broker = strata(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "none",
            "--http-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    common::process::listening(&mut broker);
    broker.kill().unwrap();
    let o = broker.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!log.trim().is_empty(), "the broker logs at info");
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

#[test]
fn help_and_exit_statuses_say_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    let code = |line: &str| common::process::run_code(dir.path(), &server, line);
    // Documented in --help, then each one.
    let (_, help, _) = code("strata --help");
    assert!(
        help.contains("Exit status") && help.contains("3 not found") && help.contains("5 broker unreachable"),
        "{help}"
    );
    assert_eq!(code("strata topic create x").0, Some(0));
    let (c, _, err) = code("strata topic create x");
    assert_eq!(c, Some(4), "refused (already exists): {err}");
    assert_eq!(code("strata consume nosuch").0, Some(3));
    assert_eq!(code("strata topic describe nosuch").0, Some(3));
    assert_eq!(code("strata topic list --server 127.0.0.1:1").0, Some(5));
    assert_eq!(code("strata topic create").0, Some(2), "bad usage is clap's 2");

    // One default per option, and positional arguments say what they are.
    let (_, help, _) = code("strata topic create --help");
    let partitions = help.lines().find(|l| l.contains("--partitions")).unwrap();
    assert_eq!(partitions.matches("[default:").count(), 1, "{partitions}");
    assert!(help.lines().any(|l| l.trim_start().starts_with("<NAME>") && l.contains("Topic name")), "{help}");
    let (_, help, _) = code("strata group describe --help");
    assert!(help.lines().any(|l| l.trim_start().starts_with("<GROUP>") && l.len() > 12), "{help}");

    // offsets takes a pattern, naming each topic.
    assert!(code("strata topic create x.two").0 == Some(0));
    let (c, out, _) = code("strata offsets 'x*'");
    assert_eq!(c, Some(0));
    assert!(out.contains("TOPIC") && out.lines().any(|l| l.starts_with("x.two ")), "{out}");

    // bench takes --format json as the other commands do.
    let (c, out, err) = code("strata bench produce --embedded --records 200 --format json");
    assert_eq!(c, Some(0), "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert!(summary["records_per_s"].is_number());

    // log dump of a damaged segment shows "crc BAD" and fails.
    assert!(code("strata produce x 'a value to damage'").0 == Some(0));
    broker.kill().unwrap();
    let _ = broker.wait();
    let log = dir.path().join("data/x/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&log).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    let damaged = dir.path().join("damaged.log");
    std::fs::write(&damaged, &bytes).unwrap();
    let (c, out, err) = code("strata log dump damaged.log");
    assert!(out.contains("crc BAD"), "{out}");
    assert_eq!(c, Some(1), "{err}");
    assert_eq!(code("strata log dump data/x/0/00000000000000000000.log").0, Some(0));
}

#[test]
fn config_overrides_can_be_removed_and_group_offsets_shifted_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    let sh = |line: &str| run(dir.path(), &server, line);
    assert!(sh("strata topic create c --partitions 2 --config retention.ms=1000").0);
    assert!(sh("strata topic describe c").1.contains("retention.ms = 1000"));
    let (ok, out, err) = sh("strata topic alter c --delete-config retention.ms");
    assert!(ok, "{err}");
    assert!(out.contains("retention.ms = 604800000"), "the default applies again:\n{out}");
    let (ok, _, err) = sh("strata topic alter c --delete-config no.such.key");
    assert!(!ok && err.contains("unknown config key"), "{err}");

    for p in 0..2 {
        assert!(sh(&format!("seq 1 10 | strata produce c -p {p}")).0);
    }
    // Commit everything, then move back.
    assert!(sh("strata consume c --group g").0);
    let lag = |out: &str, p: u32| -> u64 {
        let row = out.lines().find(|l| l.split_whitespace().take(2).eq(["c", &p.to_string()])).unwrap();
        row.split_whitespace().last().unwrap().parse().unwrap()
    };
    let d = sh("strata group describe g").1;
    assert_eq!((lag(&d, 0), lag(&d, 1)), (0, 0), "{d}");
    let (ok, _, err) = sh("strata group reset g --topic c --shift-by -3");
    assert!(ok, "{err}");
    let d = sh("strata group describe g").1;
    assert_eq!((lag(&d, 0), lag(&d, 1)), (3, 3), "shifted from the committed offsets:\n{d}");
    let (ok, _, err) = sh("strata group reset g --topic c --to earliest -p 1");
    assert!(ok, "{err}");
    let d = sh("strata group describe g").1;
    assert_eq!((lag(&d, 0), lag(&d, 1)), (3, 10), "only partition 1 moved:\n{d}");
    let (ok, _, err) = sh("strata group reset g --topic c --shift-by 100 -p 0");
    assert!(ok, "{err}");
    assert_eq!(lag(&sh("strata group describe g").1, 0), 0, "clamped to the end");
    let (ok, _, err) = sh("strata group reset g --topic c --to earliest -p 5");
    assert!(!ok && err.contains("partition 5"), "{err}");
    broker.kill().unwrap();
}

#[test]
fn topics_grow_partitions_that_followers_and_restarts_see() {
    let dir = tempfile::tempdir().unwrap();
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (mut broker, server) = common::process::serve_on(dir.path(), &listen);
    let sh = |line: &str| run(dir.path(), &server, line);
    assert!(sh("strata topic create g --partitions 1").0);
    // A follower of the pattern, started before the topic grows.
    let mut follower = strata(dir.path(), &["consume", "g*", "--follow", "-f", "%p %s\\n", "--server", &server])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(follower.stdout.take().unwrap());
    // ... and a group member, which gets the new partition in a rebalance.
    let mut member =
        strata(dir.path(), &["consume", "g", "--group", "G", "--follow", "-f", "%p %s\n", "--server", &server])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let member_lines = Lines::of(member.stdout.take().unwrap());
    assert!(sh("strata produce g -p 0 before").0);
    assert_eq!(lines.next("the follower's first record"), "0 before");
    assert_eq!(member_lines.next("the member's first record"), "0 before");

    let (ok, _, err) = sh("strata topic alter g --partitions 3");
    assert!(ok, "{err}");
    let partitions = |server: &str| -> u64 {
        let (_, json, _) = run(dir.path(), server, "strata topic describe g --format json");
        serde_json::from_str::<serde_json::Value>(&json).unwrap()["partitions"].as_u64().unwrap()
    };
    assert_eq!(partitions(&server), 3);
    assert!(sh("strata produce g -p 2 after").0, "the new partition takes records");
    assert_eq!(lines.next("the follower's record on the added partition"), "2 after");
    assert_eq!(member_lines.next("the member's record on the added partition"), "2 after");
    for c in [&mut follower, &mut member] {
        c.kill().unwrap();
        let _ = c.wait();
    }

    let (ok, _, err) = sh("strata topic alter g --partitions 2");
    assert!(!ok && err.contains("never removed"), "{err}");

    // Still three after a restart, with the record where it was written.
    broker.kill().unwrap();
    let _ = broker.wait();
    let (mut broker, server) = common::process::serve_on(dir.path(), &listen);
    let (_, out, _) = run(dir.path(), &server, "strata consume g -p 2 -f '%p %o %s\\n'");
    assert_eq!(out, "2 0 after\n");
    assert_eq!(partitions(&server), 3, "after a restart");
    broker.kill().unwrap();
}

#[test]
fn the_readme_layout_says_which_files_a_new_data_dir_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    assert!(run(dir.path(), &server, "strata topic create fresh").0);
    assert!(run(dir.path(), &server, "strata produce fresh one").0);
    let data = dir.path().join("data");
    assert!(data.join("__broker.lock").exists() && data.join("fresh/topic.json").exists());
    assert!(!data.join("__producer_ids").exists(), "no idempotent producer yet");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme.lines().find(|l| l.trim_start().starts_with("__producer_ids")).unwrap();
    assert!(line.contains("after the first InitProducer"), "the README says when it appears: {line}");
    broker.kill().unwrap();
}
