//! A Python with the client libraries a test needs, installed from PyPI
//! into `target/pyenv` on first use (a fresh machine has only python3). A
//! missing python3 or a failed install fails the test with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Tests of one binary run in parallel; one installs at a time.
static INSTALL: Mutex<()> = Mutex::new(());

/// The venv's python, once `import <imports>` works there (installing
/// `packages` if it does not yet).
pub fn python_with(imports: &str, packages: &[&str]) -> PathBuf {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = manifest.join("target/pyenv");
    let python = venv.join("bin/python");
    let check = format!("import {imports}");
    let ready = |p: &Path| Command::new(p).args(["-c", &check]).status().is_ok_and(|s| s.success());
    if python.exists() && ready(&python) {
        return python;
    }
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 must be installed to run this test (it creates target/pyenv)");
        assert!(status.success(), "python3 -m venv {} failed", venv.display());
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .status()
        .expect("pip in target/pyenv");
    assert!(status.success(), "pip install {packages:?} failed (is PyPI reachable?)");
    assert!(ready(&python), "{check} still fails after installing {packages:?}");
    python
}

/// The Kafka client libraries `tests/python/kafka_clients.py` uses:
/// librdkafka (confluent-kafka's wheel, with SSL and SASL) and kafka-python.
const KAFKA_CLIENTS: &[&str] = &["confluent-kafka==2.16.1", "kafka-python==3.0.12"];

/// The venv's python with the Kafka client libraries.
pub fn kafka_clients_python() -> PathBuf {
    python_with("confluent_kafka, kafka", KAFKA_CLIENTS)
}

/// Runs a mode of `tests/python/kafka_clients.py` against `bootstrap`;
/// returns its stdout once it printed `ok`, fails the test otherwise.
pub async fn run_kafka_script(mode: &str, bootstrap: &str, args: &[&str], ok: &str) -> String {
    let python = tokio::task::spawn_blocking(kafka_clients_python).await.unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kafka_clients.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(mode).arg(bootstrap).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains(ok), "{mode} failed:\n{stdout}\n{stderr}");
    stdout
}
