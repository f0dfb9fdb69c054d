//! One connection: hyper serving HTTP/1.1 or h2c on the watched socket, with
//! the head deadline's timer, and closed when idle or at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use poem::Addr;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::ConnectionLimits;
use super::app::App;
use super::clock::{ConnectionClock, HeadTimer};
use super::raw_errors::Watched;

type ResponseBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// An accepted connection and what serving it takes.
pub(super) struct Connection {
    pub(super) stream: TcpStream,
    pub(super) local: SocketAddr,
    pub(super) remote: SocketAddr,
    pub(super) app: App,
    pub(super) limits: ConnectionLimits,
    pub(super) stopped: watch::Receiver<bool>,
}

impl Connection {
    pub(super) async fn serve(self, mut builder: auto::Builder<TokioExecutor>) {
        let Connection {
            stream,
            local,
            remote,
            app,
            limits,
            mut stopped,
        } = self;
        let clock = Arc::new(ConnectionClock::new(limits));
        builder.http1().timer(HeadTimer::new(clock.clone()));
        let io = TokioIo::new(Watched::new(stream, clock.clone()));
        let service_clock = clock.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let app = app.clone();
            let clock = service_clock.clone();
            clock.request_started();
            async move {
                let request = poem::Request::from((
                    request,
                    LocalAddr(Addr::SocketAddr(local)),
                    RemoteAddr(Addr::SocketAddr(remote)),
                    Scheme::HTTP,
                ));
                let response = app.answer(request).await;
                clock.request_finished();
                Ok::<_, Infallible>(hyper::Response::<ResponseBody>::from(response))
            }
        });
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let idle = tokio::select! {
            _ = connection.as_mut() => return,
            _ = stopped.wait_for(|stopped| *stopped) => false,
            () = clock.idle() => true,
        };
        connection.as_mut().graceful_shutdown();
        if idle {
            // An HTTP/2 graceful shutdown waits for the client to answer a
            // PING; a client that never does would keep the connection.
            tracing::debug!(%remote, "closing an idle connection");
            let _ = tokio::time::timeout(limits.header_read_timeout, connection).await;
        } else {
            // In-flight requests finish; `serve` bounds this by the grace period.
            let _ = connection.await;
        }
    }
}
