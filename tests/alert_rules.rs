//! Alert rules through gRPC: a burst fires one alert record as the contract
//! gives it, on topics created after the rule too; filters and group_by;
//! BELOW rules on silence; bad rules named by field; and across restarts a
//! burst that spans one fires exactly once, and an alert is never published
//! twice.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{client, create, produce, record, start, Client};
use strata::proto;
use tonic::Code;

fn rule(name: &str, pattern: &str, threshold: u64, window_ms: u64) -> proto::CreateAlertRuleRequest {
    proto::CreateAlertRuleRequest {
        name: name.into(),
        topic_pattern: pattern.into(),
        threshold,
        window_ms,
        ..Default::default()
    }
}

/// The alerts on `topic` once `n` are there (or whatever is there after 5 s).
async fn alerts(c: &mut Client, topic: &str, n: usize) -> Vec<(proto::StoredRecord, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = common::fetch(c, topic, 0, 0).await.map(|r| r.records).unwrap_or_default();
        if got.len() >= n || Instant::now() > deadline {
            return got
                .into_iter()
                .map(|r| {
                    let v = serde_json::from_slice(&r.value).unwrap();
                    (r, v)
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn errors(c: &mut Client, topic: &str, n: usize) {
    for i in 0..n {
        produce(c, topic, None, vec![record("", &format!("{{\"error\":{i}}}"))]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_errors_fires_one_alert_record_as_the_contract_gives_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    let created = c.create_alert_rule(rule("error_storm", "*.error", 5, 60_000)).await.unwrap().into_inner();
    let r = created.rule.unwrap();
    assert_eq!((r.alert_topic.as_str(), r.cooldown_ms), ("alerts.error_storm", Some(60_000)));
    // Topics created after the rule match its pattern too.
    create(&mut c, "ach.error", 1).await;
    create(&mut c, "card.error", 1).await;
    create(&mut c, "card.ok", 1).await;
    errors(&mut c, "ach.error", 3).await;
    errors(&mut c, "card.ok", 5).await;
    errors(&mut c, "card.error", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alerts(&mut c, "alerts.error_storm", 0).await.is_empty(), "four errors are not five");
    errors(&mut c, "card.error", 1).await;
    let fired = alerts(&mut c, "alerts.error_storm", 1).await;
    assert_eq!(fired.len(), 1);
    let (record, v) = &fired[0];
    assert_eq!(record.key.as_ref(), b"error_storm");
    assert!(record.headers.get("alert.rule").is_some_and(|h| h.as_ref() == b"error_storm"));
    assert_eq!((v["rule"].as_str(), v["condition"].as_str()), (Some("error_storm"), Some("AT_LEAST")));
    assert_eq!(
        (v["count"].as_u64(), v["threshold"].as_u64(), v["window_ms"].as_u64()),
        (Some(5), Some(5), Some(60_000))
    );
    assert_eq!(v["topics"], serde_json::json!(["ach.error", "card.error"]));
    assert_eq!(v["samples"].as_array().unwrap().len(), 5);
    assert!(v["first_timestamp_ms"].as_i64() <= v["last_timestamp_ms"].as_i64());
    // Within the cooldown five more fire nothing.
    errors(&mut c, "ach.error", 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alerts(&mut c, "alerts.error_storm", 2).await.len(), 1);
    let d = c
        .describe_alert_rule(proto::DescribeAlertRuleRequest { name: "error_storm".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.fired_total, d.current_count), (1, 5));
    assert!(d.last_fired_ms.is_some());
    let samples = strata::metrics::scrape::scrape(&server.http_addr().unwrap().to_string()).await.unwrap();
    let fired = strata::metrics::scrape::sum(&samples, "strata_alerts_fired_total", &[("rule", "error_storm")]);
    assert_eq!(fired as u64, 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_group_by_pick_what_counts_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "payments.sent", 1).await;
    let mut r = rule("failures", "payments.*", 2, 60_000);
    r.filter = HashMap::from([("/status".to_string(), "failed".to_string())]);
    r.group_by = "header:src".into();
    c.create_alert_rule(r).await.unwrap();
    let send = |status: &str, src: &str| {
        let mut rec = record("", &format!("{{\"status\":\"{status}\"}}"));
        rec.headers.insert("src".into(), src.as_bytes().to_vec().into());
        rec
    };
    produce(&mut c, "payments.sent", None, vec![send("failed", "web"), send("ok", "pos"), send("failed", "pos")]).await;
    produce(&mut c, "payments.sent", None, vec![send("ok", "web"), send("failed", "web")]).await;
    let fired = alerts(&mut c, "alerts.failures", 1).await;
    assert_eq!(fired.len(), 1, "only web has two failures");
    assert_eq!((fired[0].1["group"].as_str(), fired[0].1["count"].as_u64()), (Some("web"), Some(2)));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_below_rule_fires_when_payments_stop() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "payments.sent", 1).await;
    let mut r = rule("payments_stopped", "payments.*", 1, 400);
    r.condition = proto::AlertCondition::Below as i32;
    r.cooldown_ms = Some(60_000);
    c.create_alert_rule(r).await.unwrap();
    let fired = alerts(&mut c, "alerts.payments_stopped", 1).await;
    assert_eq!(fired.len(), 1);
    assert_eq!((fired[0].1["condition"].as_str(), fired[0].1["count"].as_u64()), (Some("BELOW"), Some(0)));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_naming_the_field_and_rules_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    for (field, spoil) in [
        ("threshold", rule("r", "*.error", 0, 1000)),
        ("window_ms", rule("r", "*.error", 1, 0)),
        ("name", rule("bad name", "*.error", 1, 1000)),
        ("topic_pattern", rule("r", "", 1, 1000)),
    ] {
        let e = c.create_alert_rule(spoil).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    let mut r = rule("r", "*.error", 1, 1000);
    r.filter = HashMap::from([("status".to_string(), "x".to_string())]);
    assert!(c.create_alert_rule(r).await.unwrap_err().message().contains("filter"));
    c.create_alert_rule(rule("kept", "*.error", 3, 1000)).await.unwrap();
    c.create_alert_rule(rule("gone", "*.error", 3, 1000)).await.unwrap();
    let again = c.create_alert_rule(rule("kept", "*.error", 3, 1000)).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    c.delete_alert_rule(proto::DeleteAlertRuleRequest { name: "gone".into() }).await.unwrap();
    let missing = c.delete_alert_rule(proto::DeleteAlertRuleRequest { name: "gone".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    drop(c);
    server.crash().await;
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    let rules = c.list_alert_rules(proto::ListAlertRulesRequest {}).await.unwrap().into_inner().rules;
    let names: Vec<_> = rules.iter().map(|d| d.rule.as_ref().unwrap().name.clone()).collect();
    assert_eq!(names, ["kept"]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spanning_a_restart_fires_exactly_once_and_is_not_published_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "ach.error", 1).await;
    c.create_alert_rule(rule("storm", "*.error", 5, 60_000)).await.unwrap();
    errors(&mut c, "ach.error", 3).await;
    drop(c);
    server.crash().await;

    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    errors(&mut c, "ach.error", 2).await;
    let fired = alerts(&mut c, "alerts.storm", 1).await;
    assert_eq!(fired.len(), 1, "three before the crash and two after are five");
    assert_eq!(fired[0].1["count"].as_u64(), Some(5));
    drop(c);
    server.crash().await;

    // Rebuilt again, the same window is recognised as published.
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alerts(&mut c, "alerts.storm", 2).await.len(), 1, "never published twice");
    // ... and the cooldown read back holds: five more within it fire nothing.
    errors(&mut c, "ach.error", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alerts(&mut c, "alerts.storm", 2).await.len(), 1);
    server.shutdown().await.unwrap();
}

/// The real binary killed with SIGKILL between the two halves of a burst,
/// and again after the alert: one alert, never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_and_after_a_burst_publishes_exactly_one_alert() {
    use common::process::{kill9, serve};
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, url) = serve(dir.path());
    let mut c = strata::proto::broker_client::BrokerClient::connect(url.clone()).await.unwrap();
    create(&mut c, "card.error", 1).await;
    c.create_alert_rule(rule("storm", "*.error", 4, 60_000)).await.unwrap();
    errors(&mut c, "card.error", 2).await;
    kill9(&mut broker);

    let (mut broker, url) = serve(dir.path());
    let mut c = strata::proto::broker_client::BrokerClient::connect(url.clone()).await.unwrap();
    errors(&mut c, "card.error", 2).await;
    let fired = alerts(&mut c, "alerts.storm", 1).await;
    assert_eq!(fired.len(), 1, "two before the kill and two after are four");
    assert_eq!(fired[0].1["count"].as_u64(), Some(4));
    kill9(&mut broker);

    let (mut broker, url) = serve(dir.path());
    let mut c = strata::proto::broker_client::BrokerClient::connect(url.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alerts(&mut c, "alerts.storm", 2).await.len(), 1, "not published again after the second kill");
    let d = c.describe_alert_rule(proto::DescribeAlertRuleRequest { name: "storm".into() }).await.unwrap().into_inner();
    assert!(d.last_fired_ms.is_some(), "the last firing is read back from the alert topic");
    kill9(&mut broker);
}
