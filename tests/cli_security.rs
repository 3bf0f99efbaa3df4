//! The CLI against `strata serve --config` with security on: without a
//! token a command is refused (exit 4) with what to do; `--token` and
//! `STRATA_TOKEN` work; `strata auth hash-token` prints a token whose
//! sha256 the broker accepts.

mod common;

use std::process::{Command, Stdio};

use common::process::{listening, run_code, BIN};

/// `strata serve --config strata.toml` in `cwd` (gRPC only); the process
/// and its URL.
fn serve_config(cwd: &std::path::Path) -> (std::process::Child, String) {
    let mut broker = Command::new(BIN)
        .args(["serve", "--config", "strata.toml", "--listen", "127.0.0.1:0", "--kafka-listen", "none"])
        .args(["--http-listen", "none"])
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = format!("http://{}", listening(&mut broker));
    (broker, server)
}

#[test]
fn tokens_from_hash_token_open_a_secured_broker_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["auth", "hash-token"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).expect(name);
    let (token, hash) = (field("token:"), field("token_sha256:"));
    assert_eq!(hash, strata::security::acl::token_sha256(&token));
    let config = format!(
        "[security]\n[[security.users]]\nname = \"ops\"\ntoken_sha256 = \"{hash}\"\n[[security.acl]]\nprincipal = \"ops\"\noperations = [\"all\"]\ntopics = [\"*\"]\ngroups = [\"*\"]\n"
    );
    std::fs::write(dir.path().join("strata.toml"), config).unwrap();
    let (mut broker, server) = serve_config(dir.path());
    let (code, _, err) = run_code(dir.path(), &server, "strata topic create payments");
    assert_eq!(code, Some(4), "refused: {err}");
    assert!(err.contains("--token") && err.contains("STRATA_TOKEN"), "says what to do: {err}");
    let (code, _, err) = run_code(dir.path(), &server, "strata topic list --token wrong");
    assert_eq!(code, Some(4), "{err}");
    let (code, out, err) = run_code(dir.path(), &server, &format!("strata topic create payments --token {token}"));
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) =
        run_code(dir.path(), &server, &format!("STRATA_TOKEN={token} strata produce payments hello"));
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = run_code(dir.path(), &server, &format!("STRATA_TOKEN={token} strata topic list"));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("payments"), "{out}");
    broker.kill().unwrap();
    broker.wait().unwrap();
}

/// SIGHUP reloads users and ACLs at once: a grant written to the file (its
/// modification time put back, so the file watch cannot be what noticed)
/// applies after `kill -HUP`, and not before.
#[test]
fn sighup_reloads_the_acls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let hash = strata::security::acl::token_sha256("svc-token");
    let write = |grant: bool| {
        let mut text = format!("[security]\n[[security.users]]\nname = \"svc\"\ntoken_sha256 = \"{hash}\"\n");
        text.push_str("[[security.acl]]\nprincipal = \"svc\"\noperations = [\"admin\"]\ntopics = [\"orders\"]\n");
        if grant {
            text.push_str("[[security.acl]]\nprincipal = \"svc\"\noperations = [\"produce\"]\ntopics = [\"orders\"]\n");
        }
        std::fs::write(&path, text).unwrap();
    };
    write(false);
    let written = std::fs::metadata(&path).unwrap().modified().unwrap();
    let (mut broker, server) = serve_config(dir.path());
    let (code, _, err) = run_code(dir.path(), &server, "strata topic create orders --token svc-token");
    assert_eq!(code, Some(0), "{err}");
    let produce = "strata produce orders hello --token svc-token";
    assert_eq!(run_code(dir.path(), &server, produce).0, Some(4), "not granted yet");
    write(true);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(written).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(run_code(dir.path(), &server, produce).0, Some(4), "the file watch did not reload it");
    let hup = Command::new("kill").args(["-HUP", &broker.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, out, err) = run_code(dir.path(), &server, produce);
        if code == Some(0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload: {out}{err}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    broker.kill().unwrap();
    broker.wait().unwrap();
}

/// The README's "Securing strata" as a new user follows it: its openssl
/// lines make the CA and certificates, its config (with the hash `strata
/// auth hash-token` printed) starts a broker with mTLS and ACLs, and its
/// commands create, produce (certificate + token) and consume (certificate)
/// over TLS. A client without a certificate, and the auditor producing, are
/// refused.
#[test]
fn readme_security_section_works_as_written() {
    common::process::debian_tool("openssl", "version", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let sh = |line: &str| {
        let out = Command::new("sh").args(["-c", line]).current_dir(cwd).output().unwrap();
        assert!(out.status.success(), "`{line}` failed: {}", String::from_utf8_lossy(&out.stderr));
    };
    let mut token = None;
    let mut broker = None;
    let mut port = String::new();
    let mut consumed = String::new();
    for line in common::readme_block("security").lines().map(str::trim) {
        if line.starts_with("strata auth hash-token") {
            let out = Command::new(BIN).args(["auth", "hash-token"]).output().unwrap();
            assert!(out.status.success());
            let text = String::from_utf8(out.stdout).unwrap();
            let field =
                |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).expect(name);
            let config = common::readme_block("security-config")
                .replace("<strata auth hash-token prints it>", &field("token_sha256:"));
            std::fs::write(cwd.join("strata.toml"), config).unwrap();
            token = Some(field("token:"));
        } else if line.starts_with("strata serve") {
            assert_eq!(line, "strata serve --config strata.toml");
            let (child, url) = serve_config(cwd);
            port = url.rsplit(':').next().unwrap().to_string();
            broker = Some(child);
        } else if line.starts_with("strata ") {
            let line = line.replace("localhost:50051", &format!("localhost:{port}"));
            let line = line.replace("\"$TOKEN\"", token.as_deref().expect("hash-token ran before"));
            let (code, out, err) = run_code(cwd, "", &format!("timeout 20 {line}"));
            assert_eq!(code, Some(0), "`{line}` failed: {out}{err}");
            if line.starts_with("strata consume") {
                consumed = out;
            }
        } else if !line.is_empty() {
            sh(line);
        }
    }
    assert!(consumed.contains("paid-42"), "the auditor reads what payments-svc produced: {consumed}");
    let server = format!("https://localhost:{port}");
    let (code, _, err) = run_code(cwd, "", &format!("strata topic list --server {server} --tls-ca ca.pem"));
    assert_ne!(code, Some(0), "no client certificate, refused: {err}");
    let auditor = "--tls-ca ca.pem --tls-cert auditor.pem --tls-key auditor.key";
    let (code, _, err) = run_code(cwd, "", &format!("strata produce payments.eu x --server {server} {auditor}"));
    assert_eq!(code, Some(4), "the auditor may not produce: {err}");
    assert!(err.contains("auditor") && err.contains("produce"), "{err}");
    let mut broker = broker.expect("the block starts a broker");
    broker.kill().unwrap();
    broker.wait().unwrap();
}
