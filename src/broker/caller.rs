//! Who is calling: passed to every broker operation by every listener, so
//! that authorization, metrics and logs have one place to look.

use std::net::SocketAddr;

/// The listener a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Grpc,
    Kafka,
    Http,
    /// The broker itself: dead letters, alerts, internal topics.
    Internal,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Grpc => "grpc",
            Via::Kafka => "kafka",
            Via::Http => "http",
            Via::Internal => "internal",
        })
    }
}

/// The caller of one broker operation.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated principal (a user, a client certificate's CN), or
    /// `None` for an anonymous caller.
    pub principal: Option<String>,
    /// The peer's address, when the listener knows it.
    pub peer: Option<SocketAddr>,
    pub via: Via,
    /// The span the operation's work and logs belong to.
    pub span: tracing::Span,
    /// The caller's W3C trace context (gRPC `traceparent` metadata), stored
    /// on the records it produces that carry none.
    pub trace: Option<crate::telemetry::TraceContext>,
}

impl Caller {
    /// An anonymous caller that came through `via` from `peer`.
    pub fn anonymous(via: Via, peer: Option<SocketAddr>) -> Caller {
        let span = tracing::debug_span!("request", %via, peer = ?peer);
        Caller { principal: None, peer, via, span, trace: None }
    }

    /// The broker itself (internal produce for dead letters and alerts).
    pub fn internal(what: &'static str) -> Caller {
        Caller {
            principal: Some(format!("strata:{what}")),
            peer: None,
            via: Via::Internal,
            span: tracing::Span::current(),
            trace: None,
        }
    }

    /// The caller, with the trace context its request carried.
    pub fn with_trace(mut self, trace: Option<crate::telemetry::TraceContext>) -> Caller {
        self.trace = trace;
        self
    }

    /// The principal's name for logs: `anonymous` when there is none.
    pub fn who(&self) -> &str {
        self.principal.as_deref().unwrap_or("anonymous")
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.who(), self.via)?;
        if let Some(peer) = self.peer {
            write!(f, " from {peer}")?;
        }
        Ok(())
    }
}
