//! A broker out of file descriptors (connections flood it, or too many
//! partitions for `ulimit -n`) stays calm: it backs off accepting instead of
//! spinning, and a CreateTopic that needs descriptors is refused with
//! RESOURCE_EXHAUSTED naming the limit.

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{kill9, BIN};
use strata::proto;

/// user + system CPU ticks of a process, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_broker_backs_off_and_answers_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "ulimit -n 64 && exec {BIN} serve --listen 127.0.0.1:0 --kafka-listen 127.0.0.1:0 --http-listen 127.0.0.1:0"
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = common::process::listening(&mut child);
    let mut c = strata::proto::broker_client::BrokerClient::connect(format!("http://{addr}")).await.unwrap();
    c.list_topics(proto::ListTopicsRequest::default()).await.unwrap();
    // More connections than the broker has descriptors left: the kernel
    // queues them, and every accept fails with EMFILE.
    let flood: Vec<TcpStream> = (0..100).filter_map(|_| TcpStream::connect(&addr).ok()).collect();
    assert!(flood.len() > 64, "the kernel took the connections into the backlog");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(child.id()) - before;
    // 2 s are 200 ticks of one core; a retrying accept loop burns most of them.
    assert!(used < 40, "the broker spins while out of descriptors: {used} ticks in 2 s");
    let status = c
        .create_topic(proto::CreateTopicRequest { name: "many".into(), partitions: 30, config: Default::default() })
        .await
        .expect_err("30 partitions need more descriptors than are left");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("open files") && status.message().contains("64"), "{status:?}");
    // Room again: connections are accepted and topics created.
    drop(flood);
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.create_topic(proto::CreateTopicRequest { name: "one".into(), partitions: 1, config: Default::default() })
        .await
        .expect("descriptors freed, CreateTopic works");
    let mut again = strata::proto::broker_client::BrokerClient::connect(format!("http://{addr}")).await.unwrap();
    again.list_topics(proto::ListTopicsRequest::default()).await.expect("new connections are accepted");
    kill9(&mut child);
}
