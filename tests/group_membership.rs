//! Consumer groups over real gRPC: assignment, rebalances, session expiry,
//! commit fencing, resume from committed offsets, reset, pattern groups, lag.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use strata::proto;
use tokio_stream::StreamExt;
use tonic::Code;

fn held(assignments: &[proto::TopicPartitions]) -> BTreeSet<(String, u32)> {
    assignments.iter().flat_map(|a| a.partitions.iter().map(move |p| (a.topic.clone(), *p))).collect()
}

async fn join(c: &mut Client, group: &str, pattern: &str, member: &str, timeout_ms: u32) -> proto::JoinGroupResponse {
    c.join_group(proto::JoinGroupRequest {
        group: group.into(),
        member_id: member.into(),
        topic_pattern: pattern.into(),
        session_timeout_ms: timeout_ms,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn heartbeat(c: &mut Client, group: &str, member: &str) -> Result<proto::HeartbeatResponse, tonic::Status> {
    c.heartbeat(proto::HeartbeatRequest { group: group.into(), member_id: member.into(), generation: 0 })
        .await
        .map(|r| r.into_inner())
}

async fn commit(
    c: &mut Client,
    group: &str,
    member: &str,
    generation: u64,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<(), tonic::Status> {
    c.commit_offsets(proto::CommitOffsetsRequest {
        group: group.into(),
        member_id: member.into(),
        generation,
        offsets: vec![proto::OffsetCommit { topic: topic.into(), partition, offset, metadata: String::new() }],
    })
    .await
    .map(|_| ())
}

#[tokio::test]
async fn two_members_split_four_partitions_and_one_leaving_hands_over_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "orders", 4).await;
    let a = join(&mut c, "billing", "orders", "", 10_000).await;
    let b = join(&mut c, "billing", "orders", "", 10_000).await;
    let a_now = heartbeat(&mut c, "billing", &a.member_id).await.unwrap();
    let (ha, hb) = (held(&a_now.assignments), held(&b.assignments));
    assert_eq!(a_now.generation, b.generation);
    assert_eq!((ha.len(), hb.len()), (2, 2), "balanced");
    assert!(ha.is_disjoint(&hb), "disjoint");
    assert_eq!(ha.union(&hb).count(), 4, "complete");

    c.leave_group(proto::LeaveGroupRequest { group: "billing".into(), member_id: b.member_id.clone() }).await.unwrap();
    let a_after = heartbeat(&mut c, "billing", &a.member_id).await.unwrap();
    assert_eq!(held(&a_after.assignments).len(), 4);
    assert!(a_after.generation > a_now.generation);
    assert!(ha.is_subset(&held(&a_after.assignments)), "sticky: a keeps what it had");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_member_expires_and_its_partitions_move() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "orders", 4).await;
    let a = join(&mut c, "g", "orders", "", 10_000).await;
    let b = join(&mut c, "g", "orders", "", 300).await;
    assert_eq!(held(&b.assignments).len(), 2);
    // a keeps heartbeating; b says nothing.
    let mut moved = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = heartbeat(&mut c, "g", &a.member_id).await.unwrap();
        if held(&now.assignments).len() == 4 {
            moved = true;
            break;
        }
    }
    assert!(moved, "b's partitions moved to a after b's session timeout");
    let err = heartbeat(&mut c, "g", &b.member_id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn commits_are_fenced_by_generation_and_membership() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "orders", 2).await;
    produce(&mut c, "orders", Some(0), vec![record("", "a"), record("", "b")]).await;
    let a = join(&mut c, "g", "orders", "", 10_000).await;
    commit(&mut c, "g", &a.member_id, a.generation, "orders", 0, 1).await.unwrap();
    let _b = join(&mut c, "g", "orders", "", 10_000).await;
    let stale = commit(&mut c, "g", &a.member_id, a.generation, "orders", 0, 2).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(stale.message().contains("generation"), "{}", stale.message());
    let unknown = commit(&mut c, "g", "nobody", a.generation + 1, "orders", 0, 2).await.unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    let manual = commit(&mut c, "g", "", 0, "orders", 0, 2).await.unwrap_err();
    assert_eq!(manual.code(), Code::FailedPrecondition, "no manual commits while members are live");
    let generation = heartbeat(&mut c, "g", &a.member_id).await.unwrap().generation;
    let beyond = commit(&mut c, "g", &a.member_id, generation, "orders", 0, 99).await.unwrap_err();
    assert_eq!(beyond.code(), Code::OutOfRange);
    let committed = c
        .fetch_committed_offsets(proto::FetchCommittedOffsetsRequest { group: "g".into(), topic: None })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    assert_eq!(committed.iter().map(|o| (o.partition, o.offset)).collect::<Vec<_>>(), [(0, 1)]);

    // With no live members, manual commits (empty member id) are accepted.
    let m = c.list_groups(proto::ListGroupsRequest {}).await.unwrap().into_inner();
    assert_eq!(m.groups[0].members, 2);
    for g in m.groups.iter() {
        assert_eq!(g.group, "g");
    }
    let desc = c.describe_group(proto::DescribeGroupRequest { group: "g".into() }).await.unwrap().into_inner();
    for member in desc.members {
        c.leave_group(proto::LeaveGroupRequest { group: "g".into(), member_id: member.member_id }).await.unwrap();
    }
    commit(&mut c, "g", "", 0, "orders", 1, 0).await.unwrap();
    commit(&mut c, "g", "", 0, "orders", 0, 2).await.unwrap();
    server.shutdown().await.unwrap();
}

async fn subscribe_group(c: &mut Client, pattern: &str, group: &str) -> tonic::Streaming<proto::SubscribeResponse> {
    c.subscribe(proto::SubscribeRequest {
        topic_pattern: pattern.into(),
        group: Some(group.into()),
        from: None,
        fallback: Some(proto::Boundary::Earliest as i32),
        raw_batches: false,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn next_records(s: &mut tonic::Streaming<proto::SubscribeResponse>) -> proto::SubscribeResponse {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), s.next()).await.expect("a message").unwrap().unwrap();
        if !m.records.is_empty() {
            return m;
        }
    }
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_resumes_at_its_commit_and_skips_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "events", 1).await;
    for i in 0..10 {
        produce(&mut c, "events", None, vec![record("", &format!("e{i}"))]).await;
    }
    let mut stream = subscribe_group(&mut c, "events", "auditor").await;
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(held(&first.assignments).len(), 1, "the first message says what the stream holds");
    assert!(!first.member_id.is_empty());
    let msg = next_records(&mut stream).await;
    assert_eq!(msg.records[0].offset, 0);
    assert_eq!(held(&msg.assignments).len(), 1, "every message says what the stream holds");
    // Commit only up to offset 4 (next to read: 4), then "crash".
    commit(&mut c, "auditor", &msg.member_id, msg.generation, "events", 0, 4).await.unwrap();
    drop(stream);
    for i in 10..15 {
        produce(&mut c, "events", None, vec![record("", &format!("e{i}"))]).await;
    }
    // The group has no members once the stream is gone (wait for the leave).
    for _ in 0..100 {
        let d = c.describe_group(proto::DescribeGroupRequest { group: "auditor".into() }).await.unwrap().into_inner();
        if d.members.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stream = subscribe_group(&mut c, "events", "auditor").await;
    let mut offsets = Vec::new();
    while offsets.len() < 11 {
        let m = next_records(&mut stream).await;
        offsets.extend(m.records.iter().map(|r| r.offset));
    }
    assert_eq!(offsets, (4..15).collect::<Vec<_>>(), "resumes exactly at the committed offset, nothing skipped");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn reset_then_consume_starts_at_the_new_position() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "ledger", 1).await;
    for i in 0..20 {
        produce(&mut c, "ledger", None, vec![record("", &format!("l{i}"))]).await;
    }
    commit(&mut c, "ops", "", 0, "ledger", 0, 20).await.unwrap();
    let to = |o: u64| at_offset(o);
    let dry = c
        .reset_group_offsets(proto::ResetGroupOffsetsRequest {
            group: "ops".into(),
            topic_pattern: "ledger".into(),
            to: to(5),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.resets[0].old_offset, dry.resets[0].new_offset), (Some(20), 5));
    let after_dry = c
        .fetch_committed_offsets(proto::FetchCommittedOffsetsRequest { group: "ops".into(), topic: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after_dry.offsets[0].offset, 20, "a dry run changes nothing");
    c.reset_group_offsets(proto::ResetGroupOffsetsRequest {
        group: "ops".into(),
        topic_pattern: "ledger".into(),
        to: to(5),
        dry_run: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = subscribe_group(&mut c, "ledger", "ops").await;
    let m = next_records(&mut stream).await;
    assert_eq!(m.records[0].offset, 5);
    // Refused while the group has a live member.
    let refused = c
        .reset_group_offsets(proto::ResetGroupOffsetsRequest {
            group: "ops".into(),
            topic_pattern: "ledger".into(),
            to: to(0),
            dry_run: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let refused = c.delete_group(proto::DeleteGroupRequest { group: "ops".into() }).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    drop(stream);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_pattern_group_picks_up_a_matching_topic_created_later() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "payments.sent", 1).await;
    let mut stream = subscribe_group(&mut c, "payments.*", "dash").await;
    create(&mut c, "payments.refunded", 2).await;
    produce(&mut c, "payments.refunded", Some(1), vec![record("", "refund")]).await;
    let m = next_records(&mut stream).await;
    assert_eq!(m.records[0].topic, "payments.refunded");
    assert_eq!(held(&m.assignments).len(), 3);
    drop(stream);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn lag_is_high_watermark_minus_committed_and_groups_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "metrics", 3).await;
    produce(&mut c, "metrics", Some(2), (0..4).map(|i| record("", &format!("u{i}"))).collect()).await;
    for i in 0..7 {
        produce(&mut c, "metrics", Some(0), vec![record("", &format!("m{i}"))]).await;
    }
    produce(&mut c, "metrics", Some(1), vec![record("", "x"), record("", "y")]).await;
    commit(&mut c, "dashboards", "", 0, "metrics", 0, 3).await.unwrap();
    commit(&mut c, "dashboards", "", 0, "metrics", 1, 2).await.unwrap();
    let d = c.describe_group(proto::DescribeGroupRequest { group: "dashboards".into() }).await.unwrap().into_inner();
    let lag: Vec<_> = d.partitions.iter().map(|p| (p.partition, p.committed_offset, p.high_watermark, p.lag)).collect();
    // Partition 2 has no commit: listed all the same, lag from the log start.
    assert_eq!(lag, [(0, Some(3), 7, 4), (1, Some(2), 2, 0), (2, None, 4, 4)]);
    c.delete_group(proto::DeleteGroupRequest { group: "dashboards".into() }).await.unwrap();
    let gone = c.describe_group(proto::DescribeGroupRequest { group: "dashboards".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    server.shutdown().await.unwrap();
}

async fn members(c: &mut Client, group: &str) -> Vec<proto::MemberDescription> {
    match c.describe_group(proto::DescribeGroupRequest { group: group.into() }).await {
        Ok(r) => r.into_inner().members,
        Err(s) if s.code() == Code::NotFound => vec![],
        Err(s) => panic!("{s:?}"),
    }
}

/// Waits (a while) for the group to have `n` members.
async fn until_members(c: &mut Client, group: &str, n: usize) -> Vec<proto::MemberDescription> {
    for _ in 0..200 {
        let m = members(c, group).await;
        if m.len() == n {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("group {group} never had {n} members: {:?}", members(c, group).await)
}

#[tokio::test]
async fn a_closed_group_stream_leaves_at_once_and_a_live_one_keeps_its_heartbeat_current() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "quiet", 2).await;
    let subscribe = proto::SubscribeRequest {
        topic_pattern: "quiet".into(),
        group: Some("g".into()),
        from: at_boundary(proto::Boundary::Earliest),
        ..Default::default()
    };
    // A live, idle member: its heartbeat moves although nothing is produced.
    let mut live_client = client(&server).await;
    let mut live = live_client.subscribe(subscribe.clone()).await.unwrap().into_inner();
    live.next().await.unwrap().unwrap();
    let first = until_members(&mut c, "g", 1).await[0].last_heartbeat_ms;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = until_members(&mut c, "g", 1).await[0].last_heartbeat_ms;
    assert!(later > first, "a live stream member's heartbeat is kept current ({first} -> {later})");

    // A second member whose client goes away without a word about it:
    // the stream is reset, nothing is ever produced, yet it leaves.
    let mut gone_client = client(&server).await;
    let mut gone = gone_client.subscribe(subscribe.clone()).await.unwrap().into_inner();
    gone.next().await.unwrap().unwrap();
    until_members(&mut c, "g", 2).await;
    drop(gone);
    drop(gone_client);
    until_members(&mut c, "g", 1).await;
    drop(live);
    until_members(&mut c, "g", 0).await;
    // With no member left, the group may be deleted (refused while one is live).
    c.delete_group(proto::DeleteGroupRequest { group: "g".into() }).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_consume_follow_leaves_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "quiet", 1).await;
    let mut consumer = std::process::Command::new(common::process::BIN)
        .args(["consume", "quiet", "--group", "g", "--follow", "--server", &server.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until_members(&mut c, "g", 1).await;
    common::process::kill9(&mut consumer);
    until_members(&mut c, "g", 0).await;
    server.shutdown().await.unwrap();
}
