//! The accept loop every listener shares: TCP options on each socket,
//! calm when the process is out of descriptors, and each connection
//! counted in `strata_connections` while it is open. tonic's own loop retried a
//! failing accept at once, so a broker at its `ulimit -n` spun a core
//! (60% CPU seen) while the queued connections waited anyway.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

/// How a listener takes its connections: TLS or not, and the limits.
#[derive(Clone)]
pub struct Listening {
    /// TLS on this listener (`[tls]`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub limits: Arc<ConnectionLimits>,
    /// A TLS handshake must finish within this (`request_read_timeout_ms`).
    pub handshake_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Listening {
    /// Plain TCP, no limits but the defaults (tests, benches).
    pub fn plain() -> Listening {
        Listening {
            tls: None,
            limits: Arc::new(ConnectionLimits::new(usize::MAX, usize::MAX)),
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Open connections over every listener, in all and per client IP:
/// `max_connections` and `max_connections_per_ip`.
#[derive(Debug)]
pub struct ConnectionLimits {
    max: usize,
    per_ip_max: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnectionLimits {
    pub fn new(max: usize, per_ip_max: usize) -> ConnectionLimits {
        ConnectionLimits { max, per_ip_max, open: Mutex::new((0, HashMap::new())) }
    }

    /// A slot for a connection from `ip`, or why there is none.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.max {
            return Err("max_connections");
        }
        let n = open.1.entry(ip).or_insert(0);
        if *n >= self.per_ip_max {
            return Err("max_connections_per_ip");
        }
        *n += 1;
        open.0 += 1;
        Ok(Slot { limits: self.clone(), ip })
    }
}

/// A connection's place under the limits, given back when it closes.
#[derive(Debug)]
struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Accepted connections of the listener named `name` (`grpc`, `kafka`,
/// `http`), forever: errors are handled here (logged, backed off), never
/// passed on, so the server never stops accepting. Connections over the
/// limits are closed at once and counted as refused; TLS handshakes run
/// on tasks of their own (a client that never finishes one holds nothing
/// but its socket, until `handshake_timeout`).
pub fn incoming(
    listener: TcpListener,
    name: &'static str,
    metrics: &Metrics,
    listening: Listening,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let (open, refused) = (metrics.connections(name), metrics.connections_refused(name));
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        let mut warned: Option<Instant> = None;
        let mut failed = 0u64;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if failed > 0 {
                        tracing::info!(failed_accepts = failed, "accepting connections again");
                        failed = 0;
                    }
                    let slot = match listening.limits.take(peer.ip()) {
                        Ok(slot) => slot,
                        Err(limit) => {
                            refused.inc();
                            tracing::debug!(listener = name, %peer, limit, "connection refused: over the limit");
                            continue;
                        }
                    };
                    configure(&stream);
                    let local = stream.local_addr().ok();
                    let guard = ConnectionGuard::new(open.clone());
                    let conn = |io, cn| Conn {
                        io,
                        peer: Some(peer),
                        local,
                        cn,
                        idle_timeout: listening.idle_timeout,
                        idle: Box::pin(tokio::time::sleep(listening.idle_timeout)),
                        fetch_ahead: Default::default(),
                        _open: guard,
                        _slot: slot,
                    };
                    match &listening.tls {
                        None => {
                            if tx.send(Ok(conn(Io::Plain(stream), None))).await.is_err() {
                                return;
                            }
                        }
                        Some(acceptor) => {
                            let (acceptor, tx, timeout) = (acceptor.clone(), tx.clone(), listening.handshake_timeout);
                            // Built here (it holds the slot and the gauge), completed there.
                            let pending = conn(Io::Handshaking, None);
                            tokio::spawn(async move {
                                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                                    Ok(Ok(mut tls)) => {
                                        tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER_BYTES));
                                        let cn = crate::security::tls::peer_cn(tls.get_ref().1);
                                        let conn = Conn { io: Io::Tls(Box::new(tls)), cn, ..pending };
                                        let _ = tx.send(Ok(conn)).await;
                                    }
                                    Ok(Err(e)) => {
                                        tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed")
                                    }
                                    Err(_) => tracing::debug!(listener = name, %peer, "TLS handshake timed out"),
                                }
                            });
                        }
                    }
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
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn configure(stream: &TcpStream) {
    // Nagle off: with it, a response's trailing small frames wait for a
    // delayed ACK (about 40 ms).
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// An accepted connection (TLS or not), counted as open and under the
/// limits until it is dropped; closed with an error once idle for
/// `idle_timeout` (no bytes read or written).
pub struct Conn {
    io: Io,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// A verified client certificate's subject CN (mTLS).
    pub cn: Option<String>,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    /// gRPC Fetch responses read ahead for this connection.
    fetch_ahead: Arc<crate::listener::grpc::ahead::FetchAhead>,
    _open: ConnectionGuard,
    _slot: Slot,
}

/// How much encrypted output a TLS connection holds before a write waits
/// for the socket. rustls' default, 64 KiB, cut each of HTTP/2's 1 MiB DATA
/// frames into 16 writes (a syscall and often a wake-up of the reader
/// each); 256 KiB sends such a frame in 4 and still bounds what a stalled
/// client pins (beside the kernel's socket buffer and HTTP/2's window).
const TLS_SEND_BUFFER_BYTES: usize = 256 << 10;

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while its handshake runs (never read or written).
    Handshaking,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("peer", &self.peer).field("cn", &self.cn).finish()
    }
}

/// What a gRPC request's extensions carry about its connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub cn: Option<String>,
    /// Fetch responses read ahead for this connection.
    pub fetch_ahead: Arc<crate::listener::grpc::ahead::FetchAhead>,
}

impl Conn {
    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }

    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.idle_timeout;
        // Moving the deadline costs a timer update: only when it moved enough.
        if next.saturating_duration_since(self.idle.deadline()) > Duration::from_millis(500) {
            self.idle.as_mut().reset(next);
        }
    }

    fn idle_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")),
            Poll::Pending => Poll::Pending,
        }
    }
}

macro_rules! io_of {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.io {
            Io::Plain($s) => $e,
            Io::Tls($s) => $e,
            Io::Handshaking => Poll::Ready(Err(io::Error::other("the TLS handshake has not finished"))),
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = io_of!(this, s => Pin::new(s).poll_read(cx, buf));
        match r {
            Poll::Ready(r) => {
                this.active();
                Poll::Ready(r)
            }
            Poll::Pending => this.idle_expired(cx).map(Err),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = io_of!(this, s => Pin::new(s).poll_write(cx, buf));
        if r.is_ready() {
            this.active();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = io_of!(this, s => Pin::new(s).poll_write_vectored(cx, bufs));
        if r.is_ready() {
            this.active();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Handshaking => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        io_of!(this, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        io_of!(this, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        PeerInfo { remote: self.peer, cn: self.cn.clone(), fetch_ahead: self.fetch_ahead.clone() }
    }
}
