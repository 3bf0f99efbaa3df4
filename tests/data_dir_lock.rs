//! One data directory, one broker: a second `strata serve` on a directory
//! in use exits at once, naming the process that holds it, instead of
//! acknowledging writes that the first broker then overwrites.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{kill9, serve, BIN};

#[test]
fn a_second_broker_on_the_same_data_dir_exits_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, _url) = serve(dir.path());
    let mut second = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A broker that ran would never exit by itself: give it a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            kill9(&mut second);
            panic!("the second broker kept running on a data directory in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second broker must not run: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "it never listened");
    assert!(stderr.contains(&format!("pid {}", first.id())), "names the holder: {stderr}");
    // The lock goes with its process, however it ends.
    kill9(&mut first);
    let (mut again, _url) = serve(dir.path());
    kill9(&mut again);
}
