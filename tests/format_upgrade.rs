//! A data directory written by strata before it stored Kafka's record
//! batch format (tests/fixtures/v1-data, made by the previous release:
//! two topics, segments rolled at 4 KiB, a keyed record with headers, a
//! group's committed offsets) is upgraded in place on the first open: every
//! record keeps its offset, timestamp, key, value and headers, and commits
//! keep their offsets. `strata log verify` reads both formats.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use strata::proto;
use strata::storage::upgrade::{format_of, Format};

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn segment_formats(dir: &Path) -> Vec<Format> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            out.push(format_of(&std::fs::read(&p).unwrap()[..]));
        }
    }
    out
}

#[tokio::test]
async fn a_v1_data_dir_is_upgraded_in_place_with_every_record_and_commit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_tree(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-data").as_path(), &data);
    assert!(segment_formats(&data.join("orders/0")).contains(&Format::V1), "the fixture is in the old format");
    // `log verify` reads the old format before any upgrade.
    let (ok, out, err) = common::process::run(dir.path(), "", "strata log verify data");
    assert!(ok, "{out}{err}");
    assert!(out.contains("OK") && out.contains("format v1"), "{out}");

    for round in 0..2 {
        let server = start(&data).await;
        let mut c = client(&server).await;
        let mut values = BTreeSet::new();
        let mut keyed = None;
        for p in 0..2 {
            for r in fetch_all(&mut c, "orders", p, 0).await {
                if r.key.as_ref() == b"cust-7" {
                    keyed = Some(r.clone());
                }
                assert!(values.insert(String::from_utf8(r.value.to_vec()).unwrap()), "no record twice");
            }
        }
        let expected: BTreeSet<String> = (1..=30)
            .flat_map(|b| (1..=5).map(move |i| format!("order-{b}-{i} with some padding to fill segments")))
            .chain(std::iter::once(r#"{"amount": 12}"#.to_string()))
            .collect();
        assert_eq!(values, expected, "round {round}: every record is there");
        let keyed = keyed.expect("the keyed record");
        let headers: Vec<(&str, &[u8])> = keyed.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())).collect();
        assert!(headers.contains(&("src", b"web".as_ref())) && headers.contains(&("trace", b"abc".as_ref())));
        let audit = fetch_all(&mut c, "audit.log", 0, 0).await;
        let keys: Vec<&[u8]> = audit.iter().take(5).map(|r| r.key.as_ref()).collect();
        assert_eq!(keys, [b"k1".as_ref(), b"k2", b"k3", b"k4", b"k5"]);
        assert!(audit.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms), "timestamps kept");
        let committed = c
            .fetch_committed_offsets(proto::FetchCommittedOffsetsRequest { group: "billing".into(), topic: None })
            .await
            .unwrap()
            .into_inner()
            .offsets;
        assert!(!committed.is_empty() && committed.iter().all(|o| o.topic == "orders"), "{committed:?}");
        // Appends go on in the new format, at the next offsets.
        let r = produce(&mut c, "audit.log", Some(0), vec![record("k6", "after the upgrade")]).await;
        assert_eq!(r[0].base_offset, 5 + round as u64);
        server.shutdown().await.unwrap();
        assert!(segment_formats(&data.join("orders/0")).iter().all(|f| *f == Format::Kafka));
    }
    let (ok, out, err) = common::process::run(dir.path(), "", "strata log verify data");
    assert!(ok && out.contains("OK") && !out.contains("format v1"), "{out}{err}");
}
