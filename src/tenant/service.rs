//! The service and its response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response, Uri, uri::PathAndQuery};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    layer::{Decision, ResolvedTenant, Shared},
    rejection::TenantRejection,
    store::{StoreError, TenantStore},
    strategy::StrategyKind,
};
use crate::{body::ResponseBody, log_safe::Escaped};

/// The service built by [`TenantLayer`](super::TenantLayer).
///
/// Bypass routes and rejections found without a lookup (400, 403) are answered without
/// allocating; a request that needs a store lookup boxes one future (the lookup, then the
/// inner call), since the lookup is async and must finish before the inner service runs.
pub struct TenantResolver<S, St> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for TenantResolver<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for TenantResolver<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantResolver")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St> TenantResolver<S, St> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<St>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the wrapper.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn resolution(strategy: &'static str, outcome: &'static str) {
    metrics::counter!(
        "rampart_tenant_resolutions_total",
        "strategy" => strategy,
        "outcome" => outcome
    )
    .increment(1);
}

impl<St> Shared<St> {
    fn reject(&self, r: &TenantRejection) -> Response<Bytes> {
        resolution(
            r.strategy().map_or("none", StrategyKind::as_str),
            r.kind().as_str(),
        );
        tracing::debug!(rejection = %Escaped(&r.to_string()), strategy = ?r.strategy(), "tenant rejected");
        let mut res = self.responder.respond(r);
        res.extensions_mut().insert(r.clone());
        res
    }
}

/// `/t/acme/orders?x=1` → `/orders?x=1` (cut is the length of `/t/acme`).
fn strip_path(uri: &Uri, cut: usize) -> Option<Uri> {
    let rest = uri.path().get(cut..)?;
    let rest = if rest.is_empty() { "/" } else { rest };
    let pq = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

type LookupFuture<F> = Pin<Box<dyn Future<Output = Result<F, Response<Bytes>>> + Send>>;

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for TenantResolver<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    St: TenantStore,
    ReqBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let (id, kind, strip) = match self.shared.decide(&req) {
            Decision::Pass(why) => {
                resolution("none", why);
                return ResponseFuture::inner(self.inner.call(req));
            }
            Decision::Reject(r) => return ResponseFuture::reject(self.shared.reject(&r)),
            Decision::Lookup { id, kind, strip } => (id, kind, strip),
        };
        if let Some(cut) = strip {
            match strip_path(req.uri(), cut) {
                Some(uri) => *req.uri_mut() = uri,
                None => {
                    let r = TenantRejection::invalid(kind, super::id::InvalidTenantId::Charset);
                    return ResponseFuture::reject(self.shared.reject(&r));
                }
            }
        }
        let shared = Arc::clone(&self.shared);
        // Take the service that was driven to readiness; leave a clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::lookup(Box::pin(async move {
            let started = Instant::now();
            let found = tokio::time::timeout(shared.lookup_timeout, shared.store.lookup(&id))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::new(format!(
                        "tenant store lookup timed out after {:?}",
                        shared.lookup_timeout
                    )))
                });
            metrics::histogram!("rampart_tenant_store_lookup_seconds")
                .record(started.elapsed().as_secs_f64());
            match found {
                Ok(Some(value)) => {
                    resolution(kind.as_str(), "resolved");
                    req.extensions_mut()
                        .insert(ResolvedTenant::new(id, value, kind));
                    Ok(inner.call(req))
                }
                Ok(None) => Err(shared.reject(&TenantRejection::unknown(kind, id))),
                Err(e) => {
                    tracing::warn!(error = ?e, tenant = ?id, "tenant store lookup failed");
                    Err(shared.reject(&TenantRejection::store(kind, id, e)))
                }
            }
        }))
    }
}

pin_project! {
    /// The response future of [`TenantResolver`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] fut: F },
        Lookup { fut: LookupFuture<F> },
        Reject { res: Option<Response<Bytes>> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tenant::ResponseFuture")
    }
}

impl<F> ResponseFuture<F> {
    fn inner(fut: F) -> Self {
        Self {
            state: State::Inner { fut },
        }
    }

    fn lookup(fut: LookupFuture<F>) -> Self {
        Self {
            state: State::Lookup { fut },
        }
    }

    fn reject(res: Response<Bytes>) -> Self {
        Self {
            state: State::Reject { res: Some(res) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut } => {
                    let res = ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(res.map(ResponseBody::new)));
                }
                StateProj::Lookup { fut } => match ready!(fut.as_mut().poll(cx)) {
                    Ok(fut) => this.state.set(State::Inner { fut }),
                    Err(res) => return Poll::Ready(Ok(res.map(ResponseBody::full))),
                },
                StateProj::Reject { res } => {
                    let res = res.take().expect("polled after completion");
                    return Poll::Ready(Ok(res.map(ResponseBody::full)));
                }
            }
        }
    }
}
