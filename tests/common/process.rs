//! Helpers that run the real `strata` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_strata");

/// Starts `strata serve` in `cwd` (default ./data) on a free port; returns
/// the process and the broker's URL.
pub fn serve(cwd: &Path) -> (Child, String) {
    serve_on(cwd, "127.0.0.1:0")
}

/// Starts `strata serve` on `listen` (a fixed address allows restarts).
pub fn serve_on(cwd: &Path, listen: &str) -> (Child, String) {
    let mut child = spawn_serve(cwd, listen);
    let addr = listening(&mut child);
    (child, format!("http://{addr}"))
}

/// Starts `strata serve` in `cwd` with gRPC on `listen` and Kafka on a
/// free port; returns the process, the gRPC URL and the Kafka address.
pub fn serve_with_kafka(cwd: &Path, listen: &str) -> (Child, String, String) {
    let (child, addrs) = serve_all(cwd, listen);
    (child, addrs.grpc, addrs.kafka)
}

/// Where a broker started by [`serve_all`] listens.
#[derive(Debug, Clone)]
pub struct Addrs {
    /// `http://host:port` of the gRPC listener.
    pub grpc: String,
    /// `host:port` of the Kafka listener.
    pub kafka: String,
    /// `host:port` of the HTTP listener.
    pub http: String,
}

/// Starts `strata serve` in `cwd` with gRPC on `listen`, Kafka and HTTP on
/// free ports.
pub fn serve_all(cwd: &Path, listen: &str) -> (Child, Addrs) {
    let mut child = spawn_serve(cwd, listen);
    let mut out = BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut addr = |what: &str| {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with(what), "the broker did not start: {line:?}");
        line.trim().rsplit(' ').next().unwrap().to_string()
    };
    let grpc = addr("strata listening");
    let kafka = addr("kafka listening");
    let http = addr("http listening");
    (child, Addrs { grpc: format!("http://{grpc}"), kafka, http })
}

/// `strata serve` in `cwd` with gRPC on `listen`, Kafka on a free port,
/// stdout piped for the addresses.
fn spawn_serve(cwd: &Path, listen: &str) -> Child {
    Command::new(BIN)
        .args(["serve", "--listen", listen, "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits for a `strata serve` child (stdout piped) to say where it listens.
pub fn listening(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout piped")).read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "the broker did not start: {line:?}");
    line.trim().rsplit(' ').next().unwrap().to_string()
}

pub fn run(cwd: &Path, server: &str, line: &str) -> (bool, String, String) {
    let (code, stdout, stderr) = run_code(cwd, server, line);
    (code == Some(0), stdout, stderr)
}

/// `run`, with the exit status (None: killed by a signal).
pub fn run_code(cwd: &Path, server: &str, line: &str) -> (Option<i32>, String, String) {
    // `strata` in the README is the binary under test.
    let script = line.replace("strata ", &format!("{BIN} "));
    let out = Command::new("sh").args(["-c", &script]).current_dir(cwd).env("STRATA_SERVER", server).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// SIGKILL: no shutdown, no flush, no clean marker.
pub fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs the `strata ...` lines of the README block `name` in order against
/// `server`; each must succeed. A `strata consume` line gets a 20 s
/// timeout, so a broker that never sends fails the test instead of hanging
/// it. Returns each line's stdout and stderr.
pub fn run_readme_block(cwd: &Path, server: &str, name: &str) -> Vec<(String, String)> {
    let lines: Vec<String> =
        super::readme_block(name).lines().filter(|l| l.contains("strata ")).map(|l| l.trim().to_string()).collect();
    assert!(!lines.is_empty(), "README block {name} has commands");
    lines
        .iter()
        .map(|line| {
            let guarded = if line.starts_with("strata consume") { format!("timeout 20 {line}") } else { line.clone() };
            let (ok, stdout, stderr) = run(cwd, server, &guarded);
            assert!(ok, "`{line}` failed: {stderr}");
            (stdout, stderr)
        })
        .collect()
}

/// Makes sure `tool` runs (`tool check_arg` succeeds), installing Debian's
/// `package` with apt-get if it does not; a test that needs it fails with
/// the reason if it cannot be installed, never passes without it.
pub fn debian_tool(tool: &str, check_arg: &str, package: &str) {
    let works = || Command::new(tool).arg(check_arg).output().is_ok_and(|o| o.status.success());
    if works() {
        return;
    }
    let install = || Command::new("apt-get").args(["install", "-y", "-q", package]).status().is_ok_and(|s| s.success());
    if !install() {
        let updated = Command::new("apt-get").args(["update", "-q"]).status().is_ok_and(|s| s.success());
        assert!(
            updated && install(),
            "{tool} is needed: `apt-get install {package}` failed (run the tests as root, or install {package})"
        );
    }
    assert!(works(), "{package} installed but `{tool} {check_arg}` fails");
}
