//! The README's share group block, run line by line against the real
//! `strata` binary: accepted records printed, a rejected and a twice
//! released record dead-lettered with their headers, and redriven once.

mod common;

use common::process::{run, run_readme_block, serve};

#[test]
fn readme_share_group_block_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    let outputs = run_readme_block(dir.path(), &server, "share");
    assert_eq!(outputs.len(), 7);
    let (consumed, notes) = &outputs[3];
    let values: Vec<&str> = consumed.lines().map(|l| l.rsplit("  ").next().unwrap()).collect();
    assert_eq!(values, ["charge ok-1", "charge ok-3"], "{consumed}");
    assert!(consumed.starts_with("payments.charge[0]@0 "), "{consumed}");
    assert!(notes.contains("rejected payments.charge/0@1 (delivery 1)"), "{notes}");
    assert!(notes.contains("released payments.charge/0@3 (delivery 1)"), "{notes}");
    assert!(notes.contains("released payments.charge/0@3 (delivery 2)"), "{notes}");

    let describe = &outputs[4].0;
    let total: Vec<&str> = describe.lines().find(|l| l.starts_with("TOTAL")).unwrap().split_whitespace().collect();
    assert_eq!(total, ["TOTAL", "0", "0", "0", "2"], "nothing pending, held or waiting; two dead-lettered\n{describe}");
    assert!(describe.contains("max.deliveries = 2"), "{describe}");

    let dead = &outputs[5].0;
    assert_eq!(dead.lines().count(), 2, "{dead}");
    assert!(dead.contains("dlq.reason=matched --reject-if") && dead.contains("charge fail-2"), "{dead}");
    assert!(dead.contains("dlq.deliveries=2") && dead.contains("charge slow-4"), "{dead}");
    assert!(outputs[6].0.contains("redrove 2 dead letter(s) of billing"), "{}", outputs[6].0);

    // Redriven records are new records of the original topic, and a second
    // redrive moves nothing.
    let (ok, stdout, _) = run(dir.path(), &server, "strata consume payments.charge");
    assert!(ok);
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
    let (_, again, _) = run(dir.path(), &server, "strata share redrive billing");
    assert!(again.contains("redrove 0"), "{again}");
    let (code, _, stderr) = common::process::run_code(dir.path(), &server, "strata share describe nope");
    assert_eq!(code, Some(3), "not found: {stderr}");
    broker.kill().unwrap();
    broker.wait().unwrap();
}
