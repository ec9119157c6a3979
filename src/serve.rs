//! Serving a listener with every connection owned.
//!
//! The accept loop keeps each connection's task in a `JoinSet` owned by the serving future, and
//! runs hyper's HTTP/2 stream tasks on an executor whose tasks end with that future too. On
//! `stop` it stops accepting, asks every connection to finish gracefully (hyper-util's
//! `GracefulShutdown`: in-flight requests complete, idle connections close at once) and returns
//! once all are closed. Dropping or aborting the serving future ends every connection and stream
//! it started: nothing keeps running detached after the server is gone.
use std::{convert::Infallible, future::Future, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop` is cancelled, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> Result<(), Infallible> {
    let streams = StreamExecutor::default();
    // Cancelled when this future ends or is dropped: HTTP/2 stream tasks end with it.
    let _streams_end = streams.closed.clone().drop_guard();
    let mut builder = auto::Builder::new(streams.clone());
    // Hyper's request-header read timeout needs a timer.
    builder.http1().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "set_nodelay failed");
                    }
                    let service = TowerToHyperService::new(router.clone());
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "connection closed with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    // New connections are refused from here on.
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(open, "waiting for open connections to finish");
    }
    tokio::join!(graceful.shutdown(), async {
        while connections.join_next().await.is_some() {}
    });
    streams.tracker.close();
    streams.tracker.wait().await;
    Ok(())
}

/// Runs hyper's HTTP/2 stream tasks; every task ends when `closed` is cancelled.
#[derive(Debug, Clone, Default)]
struct StreamExecutor {
    tracker: TaskTracker,
    closed: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let closed = self.closed.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = future => {}
                () = closed.cancelled() => {}
            }
        });
    }
}
