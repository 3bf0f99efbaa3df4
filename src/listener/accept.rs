//! The accept loop every listener shares: TCP options on each socket, and
//! calm when the process is out of descriptors. tonic's own loop retried a
//! failing accept at once, so a broker at its `ulimit -n` spun a core
//! (60% CPU seen) while the queued connections waited anyway.

use std::io;
use std::time::Instant;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};

use crate::broker::error::open_file_limit;
use crate::config::{ACCEPT_BACKOFF, ACCEPT_WARN_INTERVAL as WARN_INTERVAL, TCP_KEEPALIVE as KEEPALIVE};

/// Whether an accept error means the process or system is out of a
/// resource (descriptors, buffers) rather than a bad connection.
fn out_of_resources(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(e.raw_os_error(), Some(24) | Some(23) | Some(105) | Some(12))
}

/// Accepted connections, forever: errors are handled here (logged, backed
/// off), never passed on, so the server never stops accepting.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> + Send + 'static {
    futures::stream::unfold((listener, None::<Instant>, 0u64), |(listener, mut warned, mut failed)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    configure(&stream);
                    if failed > 0 {
                        tracing::info!(failed_accepts = failed, "accepting connections again");
                        failed = 0;
                    }
                    return Some((Ok(stream), (listener, warned, failed)));
                }
                Err(e) if out_of_resources(&e) => {
                    failed += 1;
                    if warned.is_none_or(|t| t.elapsed() >= WARN_INTERVAL) {
                        let limit = open_file_limit().map_or("unknown".into(), |l| l.to_string());
                        tracing::warn!(error = %e, open_file_limit = %limit, failed_accepts = failed, "cannot accept connections; retrying every 100 ms");
                        warned = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                // The peer gave up before we accepted (ECONNABORTED and the
                // like): nothing to do but take the next one.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    })
}

fn configure(stream: &TcpStream) {
    // Nagle off: with it, a response's trailing small frames wait for a
    // delayed ACK (about 40 ms).
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}
