//! Accepting TCP connections for the listeners this crate runs itself (TLS, `/metrics`), and
//! how the gRPC server's connections present themselves to h2.

use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

/// The next connection. A failed accept (out of file descriptors and the like) is logged and
/// retried after a short pause instead of spinning. Cancel-safe, for use in `select!`.
pub async fn accept(listener: &TcpListener, what: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection (TCP, Unix or TLS) that tells h2 its writes are not vectored. h2 then copies
/// DATA frames under 1 KiB into its write buffer, where with vectored writes it chains every
/// frame of 256 bytes or more and writes the buffer out before the next frame: one system call
/// per such reply instead of one for many replies (measured in BENCHMARKS.md). A frame of 1 KiB
/// or more is still chained; without vectored writes h2 then writes its buffer and the payload
/// in two calls, so a small buffer is held here and leaves with the payload in one `writev`.
/// A flush of held bytes yields to the worker's other tasks once first, so that replies
/// finishing at the same moment leave together (`poll_flush`).
pub struct Coalesced<T> {
    io: T,
    /// Bytes accepted from h2 and not yet written (at most `HOLD_UP_TO`).
    held: Vec<u8>,
    /// Whether the flush of the bytes held now was put off once already (`poll_flush`).
    deferred: bool,
}

/// h2's buffer is held when it is this small: its frame heads and copied frames before a
/// chained payload. A larger one is written at once.
const HOLD_UP_TO: usize = 2 * 1024;

impl<T> Coalesced<T> {
    /// Wraps an accepted connection.
    pub fn new(io: T) -> Self {
        Coalesced {
            io,
            held: Vec::new(),
            deferred: false,
        }
    }
}

/// One accept of a listener's stream, wrapped (the failures pass through), for every listener
/// the gRPC server serves.
pub fn coalesced<T, E>(accepted: Result<T, E>) -> Result<Coalesced<T>, E> {
    accepted.map(Coalesced::new)
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.held.is_empty() {
            if buf.len() <= HOLD_UP_TO {
                // h2 flushes after its writes, which writes this out if nothing follows.
                this.held.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        loop {
            let both = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &both))?;
            if n == 0 {
                return Poll::Ready(Err(ErrorKind::WriteZero.into()));
            }
            if n < this.held.len() {
                this.held.drain(..n);
                continue;
            }
            let of_buf = n - this.held.len();
            this.held.clear();
            if of_buf > 0 {
                return Poll::Ready(Ok(of_buf));
            }
            // Exactly the held bytes went: `buf` goes on its own.
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.held.is_empty() && !std::mem::replace(&mut this.deferred, true) {
            // Replies that finish together (one fsync answers a dozen sends) would each leave
            // in a write of their own: the handler that finishes wakes this connection's task,
            // which tokio runs next on the same worker, before the other handlers already
            // woken. Yielding once puts the flush behind them (a task that wakes itself goes
            // to the back of its worker's queue), so their replies join these bytes.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.deferred = false;
        while !this.held.is_empty() {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &this.held))?;
            if n == 0 {
                return Poll::Ready(Err(ErrorKind::WriteZero.into()));
            }
            this.held.drain(..n);
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: Connected> Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    /// A socket that takes at most `per_call` bytes a call and is not ready every other call.
    #[derive(Default)]
    struct Slow {
        per_call: usize,
        out: Vec<u8>,
        calls: usize,
        refuse_next: bool,
    }

    impl AsyncWrite for Slow {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            if std::mem::replace(&mut self.refuse_next, false) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.refuse_next = self.per_call < usize::MAX;
            self.calls += 1;
            let mut room = self.per_call;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                self.out.extend_from_slice(&b[..take]);
                (room, n) = (room - take, n + take);
            }
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_add(seed)).collect()
    }

    #[tokio::test]
    async fn a_small_buffer_leaves_with_the_payload_after_it_in_one_call() {
        let mut c = Coalesced::new(Slow {
            per_call: usize::MAX,
            ..Default::default()
        });
        let (head, payload) = (bytes(40, 1), bytes(15_000, 2));
        c.write_all(&head).await.unwrap();
        assert_eq!(c.io.calls, 0, "held until the payload or a flush");
        c.write_all(&payload).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(c.io.calls, 1);
        assert_eq!(c.io.out, [head, payload].concat());
        // Alone, a small buffer goes out at the flush.
        let small = bytes(300, 3);
        c.write_all(&small).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(c.io.calls, 2);
        assert!(c.io.out.ends_with(&small));
    }

    /// Counts wake-ups.
    struct Wakes(AtomicUsize);

    impl futures::task::ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_flush_yields_once_so_replies_finishing_meanwhile_share_its_write() {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesced::new(Slow {
            per_call: usize::MAX,
            ..Default::default()
        });
        let (first, second) = (bytes(200, 1), bytes(300, 2));
        let mut c = Pin::new(&mut c);
        assert!(matches!(
            c.as_mut().poll_write(&mut cx, &first),
            Poll::Ready(Ok(200))
        ));
        // The first flush puts itself behind the tasks already woken, and asks to come back.
        assert!(c.as_mut().poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(c.io.calls, 0);
        // A reply finished meanwhile: it leaves with the held bytes, in one call.
        assert!(matches!(
            c.as_mut().poll_write(&mut cx, &second),
            Poll::Ready(Ok(300))
        ));
        assert!(c.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(c.io.calls, 1);
        assert_eq!(c.io.out, [first, second].concat());
        // Nothing held: a flush does not yield. Held again: it yields once, then writes.
        assert!(c.as_mut().poll_flush(&mut cx).is_ready());
        let third = bytes(100, 3);
        assert!(c.as_mut().poll_write(&mut cx, &third).is_ready());
        assert!(c.as_mut().poll_flush(&mut cx).is_pending());
        assert!(c.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(c.io.calls, 2);
        assert!(c.io.out.ends_with(&third));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn partial_and_refused_writes_keep_every_byte_in_order() {
        for per_call in [1, 7, 40, 41, 1000, 5000] {
            let mut c = Coalesced::new(Slow {
                per_call,
                ..Default::default()
            });
            let parts = [
                bytes(40, 1),
                bytes(3000, 2),
                bytes(2000, 3),
                bytes(10, 4),
                bytes(9000, 5),
            ];
            for p in &parts {
                c.write_all(p).await.unwrap();
            }
            c.shutdown().await.unwrap();
            assert_eq!(c.io.out, parts.concat(), "{per_call} bytes a call");
            assert!(c.held.is_empty());
        }
    }
}
