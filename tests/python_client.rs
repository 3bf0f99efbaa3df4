//! Guards the contract for non-Rust users: a Python grpcio client, with
//! stubs generated from `proto/` at test time, creates, produces, fetches and
//! subscribes. grpcio is installed from PyPI into `target/pyenv` on first run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn python_with_grpc() -> PathBuf {
    common::python::python_with("grpc, grpc_tools", &["grpcio", "grpcio-tools"])
}

#[tokio::test(flavor = "multi_thread")]
async fn python_grpcio_client_creates_produces_fetches_and_subscribes() {
    let python = tokio::task::spawn_blocking(python_with_grpc).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let addr = server.addr().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(manifest.join("tests/python/client_test.py"))
            .arg(addr)
            .arg(manifest.join("proto"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("PYTHON CLIENT OK"), "{stdout}");
    server.shutdown().await.unwrap();
}
