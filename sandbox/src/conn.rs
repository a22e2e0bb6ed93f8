//! The TCP connections of the sandbox's HTTP servers (Kubernetes API, yb-masters, `ELBv2`) and
//! how an injected fault acts on them: a connection a handler can reset (TCP RST), close without
//! an answer, or cut after the first bytes of its answer ([`FaultyListener`], [`Conn`]); and
//! [`act_out`], the fault kinds every HTTP system shows the same way. Above the estate, below the
//! servers.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::faults::FaultKind;

const OPEN: u8 = 0;
/// Closed without an answer (FIN).
const CLOSED: u8 = 1;
/// Reset (RST) without an answer.
const RESET: u8 = 2;
/// The next write passes its first bytes only, then the connection fails.
const CUT: u8 = 3;
/// Cut: every further read and write fails.
const CUT_DONE: u8 = 4;

/// A handler's hold on its connection (axum connect info of a [`FaultyListener`]).
#[derive(Clone, Debug)]
pub struct Conn(Arc<AtomicU8>);

impl Conn {
    /// Closes the connection without writing the answer.
    pub fn close(&self) {
        self.0.store(CLOSED, Ordering::SeqCst);
    }

    /// Resets the connection (TCP RST) without writing the answer.
    pub fn reset(&self) {
        self.0.store(RESET, Ordering::SeqCst);
    }

    /// Lets the answer's first bytes through, then breaks the connection.
    pub fn cut(&self) {
        self.0.store(CUT, Ordering::SeqCst);
    }
}

fn broken() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "sandbox fault: connection broken",
    )
}

/// A TCP connection that a [`Conn`] can break.
pub struct FaultyStream {
    inner: TcpStream,
    state: Arc<AtomicU8>,
}

impl FaultyStream {
    fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.state() != OPEN && me.state() != CUT {
            return Poll::Ready(Err(broken()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        match me.state() {
            OPEN => Pin::new(&mut me.inner).poll_write(cx, buf),
            CUT => {
                let first = (buf.len() / 2).clamp(1, 64).min(buf.len());
                let r = Pin::new(&mut me.inner).poll_write(cx, &buf[..first]);
                if matches!(r, Poll::Ready(Ok(_))) {
                    me.state.store(CUT_DONE, Ordering::SeqCst);
                }
                r
            }
            RESET => {
                let _ = me.inner.set_zero_linger();
                Poll::Ready(Err(broken()))
            }
            _ => Poll::Ready(Err(broken())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match me.state() {
            OPEN | CUT => Pin::new(&mut me.inner).poll_flush(cx),
            RESET => {
                let _ = me.inner.set_zero_linger();
                Poll::Ready(Err(broken()))
            }
            _ => Poll::Ready(Err(broken())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections a handler can break ([`Conn`]).
pub struct FaultyListener(pub TcpListener);

impl axum::serve::Listener for FaultyListener {
    type Io = FaultyStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    return (
                        FaultyStream {
                            inner,
                            state: Arc::new(AtomicU8::new(OPEN)),
                        },
                        addr,
                    );
                }
                Err(e) => {
                    tracing::warn!("sandbox: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, FaultyListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, FaultyListener>) -> Self {
        Conn(stream.io().state.clone())
    }
}

/// Serves `app` on `listener` with a [`Conn`] for each request (`ConnectInfo<Conn>`).
pub fn serve(
    listener: TcpListener,
    app: axum::Router,
) -> impl Future<Output = io::Result<()>> + Send {
    let service = app.into_make_service_with_connect_info::<Conn>();
    std::future::IntoFuture::into_future(axum::serve(FaultyListener(listener), service))
}

/// Acts out the fault kinds every HTTP system shows the same way; the system itself answers
/// `Status`, `Throttle` (and ignores `Exit`). `Some(answer)`: answer that instead (for a broken
/// connection nothing reaches the client); `None`: carry out the request (after a delay, or to
/// be cut mid-answer).
pub async fn act_out(kind: &FaultKind, conn: &Conn) -> Option<Response> {
    match kind {
        FaultKind::Refused => {
            conn.reset();
            Some(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        FaultKind::Drop => {
            conn.close();
            Some(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        FaultKind::Timeout => std::future::pending().await,
        FaultKind::Cut => {
            conn.cut();
            None
        }
        FaultKind::WrongAnswer => Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><head><title>502 Bad Gateway</title></head>\
                 <body><h1>Bad Gateway</h1><p>upstream sent an invalid answer</p></body></html>\n",
            )
                .into_response(),
        ),
        FaultKind::Delay(ms) => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            None
        }
        FaultKind::Status(_) | FaultKind::Throttle | FaultKind::Exit(..) => None,
    }
}
