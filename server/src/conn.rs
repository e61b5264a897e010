//! Connection limits: at most `max_connections` open at once (more are closed at once, with a
//! log line), and a connection that moves no bytes either way for `idle_timeout` is closed.
//! With hyper's header-read timeout (set in [`crate::serve`]) this bounds what a slow or silent
//! client (slowloris) can hold: a slot, for seconds.

use std::future::{ready, Future as _, Ready};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Least time between two "connection limit reached" log lines.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// An acceptor (innermost, on the TCP stream, under TLS) that enforces the limits.
#[derive(Debug, Clone)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    max: usize,
    idle_timeout: Duration,
    refusals: Arc<Refusals>,
}

#[derive(Debug)]
struct Refusals {
    /// Refused since the last log line.
    unlogged: AtomicU64,
    /// When the last line was written, in milliseconds after `epoch` (0: never).
    last_logged_ms: AtomicU64,
    epoch: std::time::Instant,
}

impl Limiter {
    /// Limits for one listener.
    pub fn new(max_connections: usize, idle_timeout: Duration) -> Self {
        Limiter {
            slots: Arc::new(Semaphore::new(max_connections)),
            max: max_connections,
            idle_timeout,
            refusals: Arc::new(Refusals {
                unlogged: AtomicU64::new(0),
                last_logged_ms: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
            }),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Count a refusal; log at most one line per [`REFUSAL_LOG_EVERY`], with the count since
    /// the last, so a flood of connections cannot flood the log.
    fn refused(&self) {
        let r = &self.refusals;
        r.unlogged.fetch_add(1, Ordering::Relaxed);
        let now_ms = u64::try_from(r.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = r.last_logged_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= REFUSAL_LOG_EVERY.as_millis() as u64;
        if due
            && r.last_logged_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let refused = r.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                max_connections = self.max,
                refused,
                "connection limit reached: refusing new connections (raise max_connections if this is legitimate load)"
            );
        }
    }
}

impl<I, S> Accept<I, S> for Limiter
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    type Stream = Limited<I>;
    type Service = S;
    type Future = Ready<io::Result<(Limited<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.refused();
            // Dropping the stream closes the connection at once.
            return ready(Err(io::Error::other("connection limit reached")));
        };
        ready(Ok((
            Limited {
                inner: stream,
                _slot: slot,
                idle_timeout: self.idle_timeout,
                last_activity: Instant::now(),
                timer: None,
            },
            service,
        )))
    }
}

/// A connection holding one slot until it closes, and failing its next read or write once it
/// has been idle for the timeout.
#[derive(Debug)]
pub struct Limited<I> {
    inner: I,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_activity: Instant,
    /// Armed only while the connection waits: activity merely records the time, so the busy
    /// path costs a clock read and no timer operation.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<I> Limited<I> {
    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Whether the connection has been idle too long; otherwise make sure a wake-up is armed
    /// for when it would be.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_activity + self.idle_timeout;
        if Instant::now() >= deadline {
            return true;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        // Registers the waker; it cannot be ready before the deadline checked above.
        timer.as_mut().poll(cx).is_ready()
    }

    fn idle_error() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Limited<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(Self::idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Limited<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(Self::idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(Self::idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_fails_after_the_timeout_and_a_busy_one_does_not() {
        let limiter = Limiter::new(4, Duration::from_secs(60));
        let (client, server) = tokio::io::duplex(64);
        let (mut conn, ()) = limiter.accept(server, ()).await.unwrap();
        let mut client = client;
        // Activity every 50 s keeps it open past 60 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            client.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).await.unwrap();
        }
        // Then silence: the read fails once 60 s have passed.
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let err = conn.read_exact(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed().as_secs(), 60);
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_refused_until_one_closes() {
        let limiter = Limiter::new(2, Duration::from_secs(60));
        let (_a, a) = tokio::io::duplex(8);
        let (_b, b) = tokio::io::duplex(8);
        let (_c, c) = tokio::io::duplex(8);
        let first = limiter.accept(a, ()).await.unwrap();
        let _second = limiter.accept(b, ()).await.unwrap();
        assert_eq!(limiter.open(), 2);
        assert!(limiter.accept(c, ()).await.is_err());
        drop(first);
        assert_eq!(limiter.open(), 1);
        let (_d, d) = tokio::io::duplex(8);
        assert!(limiter.accept(d, ()).await.is_ok());
    }
}
