//! The accept loop every listener shares: TCP options on each socket,
//! calm when the process is out of descriptors, and each connection
//! counted in `strata_connections` while it is open. tonic's own loop retried a
//! failing accept at once, so a broker at its `ulimit -n` spun a core
//! (60% CPU seen) while the queued connections waited anyway.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{ConnectionGuard, Metrics};

use crate::broker::error::open_file_limit;
use crate::config::{ACCEPT_BACKOFF, ACCEPT_WARN_INTERVAL as WARN_INTERVAL, TCP_KEEPALIVE as KEEPALIVE};

/// Whether an accept error means the process or system is out of a
/// resource (descriptors, buffers) rather than a bad connection.
fn out_of_resources(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM.
    matches!(e.raw_os_error(), Some(24) | Some(23) | Some(105) | Some(12))
}

/// Accepted connections of the listener named `name` (`grpc`, `kafka`,
/// `http`), forever: errors are handled here (logged, backed off), never
/// passed on, so the server never stops accepting.
pub fn incoming(
    listener: TcpListener,
    name: &'static str,
    metrics: &Metrics,
) -> impl Stream<Item = io::Result<Counted>> + Send + 'static {
    let (open, refused) = (metrics.connections(name), metrics.connections_refused(name));
    let state = (listener, None::<Instant>, 0u64, open, refused);
    futures::stream::unfold(state, |(listener, mut warned, mut failed, open, refused)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    configure(&stream);
                    if failed > 0 {
                        tracing::info!(failed_accepts = failed, "accepting connections again");
                        failed = 0;
                    }
                    let counted = Counted { stream, _open: ConnectionGuard::new(open.clone()) };
                    return Some((Ok(counted), (listener, warned, failed, open, refused)));
                }
                Err(e) if out_of_resources(&e) => {
                    failed += 1;
                    refused.inc();
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

/// An accepted connection, counted as open until it is dropped.
#[derive(Debug)]
pub struct Counted {
    pub stream: TcpStream,
    _open: ConnectionGuard,
}

impl Counted {
    /// The socket and the guard that keeps it counted (drop it with the socket).
    pub fn into_parts(self) -> (TcpStream, ConnectionGuard) {
        (self.stream, self._open)
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}
