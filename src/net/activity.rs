//! Whether a connection is in use: how many requests are in flight on it, and
//! since when none has been. A request is in flight from the moment the
//! server takes it until its response body is done (an SDS or Workload API
//! stream is one request for its whole life), so a proxy's long-lived,
//! mostly silent stream keeps its connection, while a connection that never
//! sends a request, or sits idle between requests, is closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Instant;

use super::metrics::ShedReason;

#[derive(Debug, Clone, Copy)]
struct State {
    in_flight: usize,
    /// When the last request ended (or the connection opened).
    since: Instant,
    /// Whether any request has arrived yet.
    served: bool,
}

/// The activity of one connection.
pub(super) struct Activity {
    state: watch::Sender<State>,
}

/// One request in flight; dropped when its response body ends.
pub(super) struct InFlight(Arc<Activity>);

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self { state: watch::Sender::new(State { in_flight: 0, since: Instant::now(), served: false }) })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.state.send_modify(|s| {
            s.in_flight += 1;
            s.served = true;
        });
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `first` (before the
    /// first request) or `idle` (after it), with the bound that was reached.
    pub(super) async fn idle(&self, first: Duration, idle: Duration) -> ShedReason {
        let mut state = self.state.subscribe();
        loop {
            let s = *state.borrow_and_update();
            if s.in_flight > 0 {
                if state.changed().await.is_err() {
                    return ShedReason::Idle;
                }
                continue;
            }
            let (bound, reason) = if s.served { (idle, ShedReason::Idle) } else { (first, ShedReason::FirstRequest) };
            let at = s.since + bound;
            if Instant::now() >= at {
                return reason;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return reason },
                () = tokio::time::sleep_until(at) => {}
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.since = Instant::now();
        });
    }
}

/// A hyper service that marks each request in flight until its response
/// body is done.
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
    /// What the transport proved about the peer, put into every request's
    /// extensions (one per connection, rather than a router rebuilt with an
    /// extension layer for each).
    pub(super) peer: PeerFacts,
}

/// The peer facts of a connection.
#[derive(Debug, Clone)]
pub(super) enum PeerFacts {
    None,
    Tls(crate::attest::TlsPeer),
    Unix(crate::attest::UnixPeer),
}

impl<S, B, ReqBody> hyper::service::Service<Request<ReqBody>> for Tracked<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut request: Request<ReqBody>) -> Self::Future {
        match &self.peer {
            PeerFacts::None => {}
            PeerFacts::Tls(peer) => {
                request.extensions_mut().insert(peer.clone());
            }
            PeerFacts::Unix(peer) => {
                request.extensions_mut().insert(*peer);
            }
        }
        let in_flight = self.activity.begin();
        let response = self.inner.call(request);
        Box::pin(async move { Ok(response.await?.map(|inner| TrackedBody { inner, _in_flight: in_flight })) })
    }
}

/// A response body that holds its request in flight until it is dropped.
pub(super) struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_without_requests_is_idle_after_the_first_request_bound_and_later_after_the_idle_bound() {
        let (first, idle) = (Duration::from_millis(50), Duration::from_millis(150));
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(activity.idle(first, idle).await, ShedReason::FirstRequest);
        assert!(started.elapsed() >= first);

        let request = activity.begin();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle(first, idle).await }
        });
        tokio::time::sleep(idle * 3).await;
        assert!(!waiting.is_finished(), "a request in flight keeps the connection, however long");
        let ended = Instant::now();
        drop(request);
        assert_eq!(waiting.await.unwrap(), ShedReason::Idle);
        assert!(ended.elapsed() >= idle, "the idle bound runs from the end of the last request");
    }
}
