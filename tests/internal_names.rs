//! Topic names that look like the broker's own files are ordinary topics:
//! internal files and directories live in the `__` namespace, which topic
//! names cannot use, so no valid name collides with them. Data directories
//! from before the move are upgraded in place.

mod common;

use common::*;
use strata::proto;

const LOOKALIKES: [&str; 5] = [".deleted-audit-1", "producer_ids", "producer_ids.tmp", "recovery.checkpoint", ".lock"];

async fn idempotent_produce(c: &mut Client, topic: &str, producer_id: i64, value: &str) -> u64 {
    let r = c
        .produce(proto::ProduceRequest {
            topic: topic.into(),
            partition: Some(0),
            records: vec![record("", value)],
            producer_id: Some(producer_id),
            sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("produce to {topic:?}: {s:?}"));
    r.into_inner().results[0].base_offset
}

#[tokio::test]
async fn topics_named_like_internal_files_survive_restarts_and_keep_producer_ids_working() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    for name in LOOKALIKES {
        create(&mut c, name, 1).await;
        produce(&mut c, name, None, vec![record("k", &format!("in {name}"))]).await;
        let pid = c.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner().producer_id;
        assert_eq!(idempotent_produce(&mut c, name, pid, "idem").await, 1);
    }
    server.shutdown().await.unwrap();
    for clean in [true, false, true] {
        let server = start(dir.path()).await;
        let mut c = client(&server).await;
        for name in LOOKALIKES {
            let got = fetch_all(&mut c, name, 0, 0).await;
            let values: Vec<&[u8]> = got.iter().map(|r| r.value.as_ref()).collect();
            assert_eq!(values, [format!("in {name}").as_bytes(), b"idem"], "topic {name:?} after a restart");
        }
        c.init_producer(proto::InitProducerRequest {}).await.expect("InitProducer keeps working");
        if clean {
            server.shutdown().await.unwrap();
        } else {
            server.crash().await; // no clean close
        }
    }
}

#[tokio::test]
async fn a_data_dir_from_before_the_move_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    // The old layout: `producer_ids` at the top, and an interrupted delete
    // left as `.deleted-<topic>-<ms>` (a renamed topic directory).
    std::fs::write(dir.path().join("producer_ids"), "5000").unwrap();
    let old = dir.path().join(".deleted-gone-1700000000000");
    std::fs::create_dir_all(old.join("0")).unwrap();
    std::fs::write(old.join("topic.json"), r#"{"name":"gone","partitions":1,"config":{},"created_ms":1}"#).unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    let pid = c.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    assert!(pid >= 5000, "producer ids continue after the reserved block: {pid}");
    assert!(!old.exists(), "the interrupted delete is finished");
    let topics = c.list_topics(proto::ListTopicsRequest::default()).await.unwrap().into_inner().topics;
    assert!(topics.is_empty(), "{topics:?}");
    server.shutdown().await.unwrap();
}
