//! Hostile input on the port: random bytes, a plain HTTP/1.1 request, a
//! half-sent HTTP/2 preface, and hundreds of connections that stall, while a
//! normal client keeps being served; oversize and deep requests are refused
//! with the spec's codes.

mod common;

use std::time::Duration;

use common::*;
use strata::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn served(c: &mut Client, topic: &str, n: usize) {
    let r = produce(c, topic, None, vec![record("", &format!("ok-{n}"))]).await;
    let got = fetch(c, topic, 0, r[0].base_offset).await.unwrap();
    assert_eq!(got.records[0].value.as_ref(), format!("ok-{n}").as_bytes());
}

/// Sends bytes and reads whatever comes back until the broker closes or a
/// short timeout passes; the broker must neither crash nor hang the client.
/// Returns what came back and whether the broker closed the connection.
async fn poke(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.is_ok();
    (buf, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_stalled_connections_do_not_disturb_real_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr();
    let mut c = client(&server).await;
    create(&mut c, "steady", 1).await;
    served(&mut c, "steady", 0).await;

    let mut x = 0x1234_5678_9abc_def1u64;
    for round in 0..20 {
        let junk: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (_, closed) = poke(addr, &junk).await;
        assert!(closed, "the broker hangs up on garbage");
        served(&mut c, "steady", round + 1).await;
    }
    // The port speaks HTTP/2 only: an HTTP/1.1 request gets the server's
    // HTTP/2 SETTINGS and a hang-up, not a crash or a hung connection.
    let (_, closed) = poke(addr, b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(closed, "an HTTP/1.1 request is answered by closing the connection");
    served(&mut c, "steady", 100).await;

    // Half a preface, then silence; and hundreds of silent connections.
    let mut stalled = Vec::new();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    stalled.push(half);
    for i in 0..300 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        }
        stalled.push(s);
    }
    for n in 0..20 {
        served(&mut c, "steady", 200 + n).await;
    }
    // A fresh client can still connect and work.
    let mut fresh = client(&server).await;
    served(&mut fresh, "steady", 300).await;
    drop(stalled);
    served(&mut c, "steady", 301).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn huge_header_maps_and_oversize_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "h", 1).await;
    let headers = (0..10_000).map(|i| (format!("h{i}"), bytes::Bytes::from_static(b"v"))).collect();
    let req = proto::ProduceRequest {
        topic: "h".into(),
        records: vec![proto::Record { value: "v".into(), headers, ..Default::default() }],
        ..Default::default()
    };
    let err = c.produce(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("headers") && err.message().contains("256"), "{}", err.message());
    // A 20 MiB request is over the 16 MiB default.
    let big = proto::Record { value: vec![0u8; 20 << 20].into(), ..Default::default() };
    let req = proto::ProduceRequest { topic: "h".into(), records: vec![big], ..Default::default() };
    assert_eq!(c.produce(req.clone()).await.unwrap_err().code(), tonic::Code::ResourceExhausted);
    // The same in a ProduceStream: the oversize request is answered with
    // its error (request_id 0: it was never decoded) and the stream goes on,
    // acknowledging the requests around it.
    let good = |v: &str, id| proto::ProduceRequest {
        topic: "h".into(),
        records: vec![record("", v)],
        request_id: id,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let mut stream = c.produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(good("streamed", 1)).await.unwrap();
    assert_eq!(stream.message().await.unwrap().expect("the first answer").error_code, 0);
    tx.send(req).await.unwrap();
    let refused = stream.message().await.unwrap().expect("an answer for the oversize request");
    assert_eq!(refused.error_code, tonic::Code::ResourceExhausted as i32, "{refused:?}");
    assert!(refused.error_message.contains("too large"), "{refused:?}");
    tx.send(good("streamed again", 3)).await.unwrap();
    let after = stream.message().await.unwrap().expect("the stream goes on");
    assert_eq!((after.request_id, after.error_code, after.results[0].base_offset), (3, 0, 1));
    drop(tx);
    assert!(stream.message().await.unwrap().is_none(), "the stream ends cleanly");
    // The broker is fine afterwards.
    let r = produce(&mut c, "h", None, vec![record("", "after")]).await;
    assert_eq!(r[0].base_offset, 2, "nothing from the refused requests was appended");
    server.shutdown().await.unwrap();
}
