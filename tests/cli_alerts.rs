//! The README's alert rule block, run line by line against the real
//! `strata` binary: five errors within a minute, one alert consumed from
//! `alerts.error_storm`.

mod common;

use common::process::{run_readme_block, serve};

#[test]
fn readme_alert_block_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, server) = serve(dir.path());
    let outputs: Vec<String> =
        run_readme_block(dir.path(), &server, "alerts").into_iter().map(|(out, _)| out).collect();
    assert_eq!(outputs.len(), 5);
    assert!(outputs[0].contains("created alert rule error_storm: >= 5 in 60000 ms on *.error"), "{}", outputs[0]);
    let consumed: serde_json::Value = serde_json::from_str(outputs[3].trim()).unwrap();
    let alert: serde_json::Value = serde_json::from_str(consumed["value"].as_str().unwrap()).unwrap();
    assert_eq!((alert["rule"].as_str(), alert["count"].as_u64()), (Some("error_storm"), Some(5)), "{alert}");
    assert_eq!(alert["topics"], serde_json::json!(["ach.error"]));
    assert!(outputs[4].contains("error_storm") && outputs[4].lines().count() == 2, "{}", outputs[4]);
    broker.kill().unwrap();
    broker.wait().unwrap();
}
