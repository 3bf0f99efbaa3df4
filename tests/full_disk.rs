//! A real full disk: the broker's data dir on a small tmpfs. Produce until
//! the disk is full (RESOURCE_EXHAUSTED, never an ack for lost data), check
//! everything acknowledged reads back, free space, and appends resume.
//! Needs permission to mount tmpfs (root); skipped with a message otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use strata::proto;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(path.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_appends_keeps_data_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = Mount::tmpfs(dir.path(), "8m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the injected-ENOSPC test still covers the code path"
        );
        return;
    };
    let ballast = dir.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 2 << 20]).unwrap();
    let server = strata::server::start(config(&dir.path().join("data"))).await.unwrap();
    let mut c = client(&server).await;
    create(&mut c, "big", 1).await;
    let mut acked = Vec::new();
    let mut full = None;
    for i in 0..1000u32 {
        let value = vec![(i % 251) as u8; 60_000];
        let req = proto::ProduceRequest {
            topic: "big".into(),
            records: vec![proto::Record { value: value.clone().into(), ..Default::default() }],
            ..Default::default()
        };
        match c.produce(req).await {
            Ok(r) => acked.push((r.into_inner().results[0].base_offset, value)),
            Err(status) => {
                full = Some(status);
                break;
            }
        }
    }
    let status = full.expect("the 8 MiB disk fills up");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(acked.len() > 10);
    let got = fetch_all(&mut c, "big", 0, 0).await;
    assert_eq!(got.len(), acked.len(), "exactly the acknowledged records are there");
    for (rec, (offset, value)) in got.iter().zip(&acked) {
        assert_eq!((rec.offset, rec.value.as_ref()), (*offset, value.as_slice()));
    }
    std::fs::remove_file(&ballast).unwrap();
    let r = produce(&mut c, "big", None, vec![record("", "space again")]).await;
    assert_eq!(r[0].base_offset, acked.len() as u64, "appends resume with no hole");
    server.shutdown().await.unwrap();
}
