//! The README's alert rule block, run line by line against the real
//! `strata` binary: five errors within a minute, one alert consumed from
//! `alerts.error_storm`.

mod common;

use common::process::{run, serve};
use common::readme_block;

#[test]
fn readme_alert_block_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    let lines: Vec<String> =
        readme_block("alerts").lines().filter(|l| l.contains("strata ")).map(|l| l.trim().to_string()).collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    let mut outputs = Vec::new();
    for line in &lines {
        // A broker that never fired would leave `consume --follow` waiting.
        let guarded = if line.starts_with("strata consume") { format!("timeout 20 {line}") } else { line.clone() };
        let (ok, stdout, stderr) = run(dir.path(), &server, &guarded);
        assert!(ok, "`{line}` failed: {stderr}");
        outputs.push(stdout);
    }
    assert!(outputs[0].contains("created alert rule error_storm: >= 5 in 60000 ms on *.error"), "{}", outputs[0]);
    let consumed: serde_json::Value = serde_json::from_str(outputs[3].trim()).unwrap();
    let alert: serde_json::Value = serde_json::from_str(consumed["value"].as_str().unwrap()).unwrap();
    assert_eq!((alert["rule"].as_str(), alert["count"].as_u64()), (Some("error_storm"), Some(5)), "{alert}");
    assert_eq!(alert["topics"], serde_json::json!(["ach.error"]));
    assert!(outputs[4].contains("error_storm") && outputs[4].lines().count() == 2, "{}", outputs[4]);
    broker.kill().unwrap();
    broker.wait().unwrap();
}
