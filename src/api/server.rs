//! Accepting connections: HTTP/1.1 with a header-read timeout and a connection cap.
//!
//! `axum::serve` sets no timer on hyper's connection builder, so hyper's header-read
//! timeout never fires there and a client that opens a connection and sends nothing (or
//! one byte a minute) holds it forever. This loop drives hyper directly: each connection
//! gets a timer and the configured header-read timeout, which also closes keep-alive
//! connections left idle that long. A semaphore caps the connections open at once; when
//! it is exhausted the loop stops accepting and new connections wait in the kernel's
//! listen backlog until one closes, which the timeouts guarantee happens.
//!
//! HTTP/2 and TLS are left to the proxy in front, which is where they are configured.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long to pause accepting after an accept error (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the accept loop treats connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Time in-flight requests get to finish after the shutdown signal.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish
/// for up to the grace period.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        if let Some((stream, slot)) = accepted {
            serve_one(stream, slot, app.clone(), &limits, &graceful);
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(open, "stopped accepting; letting open connections finish");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

/// Waits for a free slot, then for a connection. `None` after an accept error.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let slot = Arc::clone(slots)
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    match listener.accept().await {
        Ok((stream, _peer)) => {
            // An answer is one write; Nagle's algorithm could only hold it back.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "could not turn off Nagle's algorithm");
            }
            Some((stream, slot))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accepting a connection failed");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            None
        }
    }
}

fn serve_one(
    stream: TcpStream,
    slot: OwnedSemaphorePermit,
    app: Router,
    limits: &ConnectionLimits,
    graceful: &GracefulShutdown,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        drop(slot);
    });
}
