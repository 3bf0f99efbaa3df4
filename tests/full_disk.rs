//! A real full disk: the broker's data dir on a small tmpfs. Produce until
//! the disk is full (RESOURCE_EXHAUSTED, never an ack for lost data), check
//! everything acknowledged reads back, free space, and appends resume. A
//! broker that fills the disk, or starts on a full one, serves reads and
//! refuses appends; it never dies (index pages the disk cannot allocate
//! once killed it with SIGBUS).
//!
//! Mounting a tmpfs needs root (CAP_SYS_ADMIN). Without it the tests fail
//! and say so; `STRATA_SKIP_TMPFS_TESTS=1` skips them on purpose.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::process::{kill9, BIN};
use common::*;
use strata::proto;

struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` on `path`, or None when the test should not run.
    fn tmpfs(path: &Path, size: &str) -> Option<Mount> {
        if std::env::var_os("STRATA_SKIP_TMPFS_TESTS").is_some() {
            eprintln!("SKIPPED on purpose: STRATA_SKIP_TMPFS_TESTS is set");
            return None;
        }
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot mount a tmpfs on {} (needs root or CAP_SYS_ADMIN); run as root, or set \
             STRATA_SKIP_TMPFS_TESTS=1 to skip the full-disk tests on purpose",
            path.display()
        );
        Some(Mount(path.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes a file until the file system is full; returns its path.
fn fill_disk(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    path
}

#[tokio::test]
async fn a_full_disk_refuses_appends_keeps_data_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = Mount::tmpfs(dir.path(), "8m") else { return };
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

fn serve(data: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It must start, even on a full disk.
    let addr = common::process::listening(&mut child);
    (child, format!("http://{addr}"))
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

async fn produce_value(c: &mut Client, value: Vec<u8>) -> Result<u64, tonic::Status> {
    let req = proto::ProduceRequest {
        topic: "t".into(),
        records: vec![proto::Record { value: value.into(), timestamp_ms: 1, ..Default::default() }],
        ..Default::default()
    };
    c.produce(req).await.map(|r| r.into_inner().results[0].base_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_on_a_full_disk_never_dies_starts_serves_reads_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = Mount::tmpfs(dir.path(), "4m") else { return };
    let data = dir.path().join("data");
    let (mut broker, url) = serve(&data);
    let mut c = Client::connect(url).await.unwrap();
    create(&mut c, "t", 1).await;
    // 4.2 KiB in the active segment: the next batch gets the segment's
    // first index entry, in an index page nothing has touched yet.
    assert_eq!(produce_value(&mut c, vec![7; 4200]).await.unwrap(), 0);
    let ballast = fill_disk(dir.path(), "ballast");
    // Fits in the log's last page, so only the index needs a new page.
    let small = produce_value(&mut c, vec![8; 300]).await;
    assert!(alive(&mut broker), "the broker died writing an index entry on a full disk");
    let mut acked = vec![(0u64, vec![7u8; 4200])];
    if let Ok(offset) = small {
        acked.push((offset, vec![8; 300]));
    }
    // More, until the log itself cannot grow.
    let refused = loop {
        match produce_value(&mut c, vec![9; 3000]).await {
            Ok(offset) => acked.push((offset, vec![9; 3000])),
            Err(s) => break s,
        }
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(alive(&mut broker));

    // A broker killed on a full disk starts again on it.
    kill9(&mut broker);
    let (mut broker, url) = serve(&data);
    let mut c = Client::connect(url).await.unwrap();
    let got = fetch_all(&mut c, "t", 0, 0).await;
    let got: Vec<(u64, Vec<u8>)> = got.into_iter().map(|r| (r.offset, r.value.to_vec())).collect();
    assert_eq!(got, acked, "reads serve exactly what was acknowledged");
    let refused = produce_value(&mut c, vec![9; 3000]).await.expect_err("the disk is still full");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(alive(&mut broker));

    std::fs::remove_file(&ballast).unwrap();
    let next = produce_value(&mut c, b"space again".to_vec()).await.expect("appends resume when space returns");
    assert_eq!(next, acked.last().unwrap().0 + 1, "with no hole");
    kill9(&mut broker);
}
