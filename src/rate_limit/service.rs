//! The middleware service and its response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    layer::{Limiter, Plan},
    response::Rendered,
};
use crate::body::ResponseBody;

/// The rate-limit middleware; build it with [`RateLimitLayer`](super::RateLimitLayer).
///
/// With the in-memory backend the decision is synchronous and the future is a plain
/// wrapper around the inner one. With Redis, the decision must run before the inner
/// call, so the service boxes **once** per limited request (the decision and the inner
/// call in one future); requests no policy applies to are never boxed.
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, limiter: Arc<Limiter>) -> Self {
        Self { inner, limiter }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policies", &self.limiter.policies.len())
            .finish_non_exhaustive()
    }
}

type BoxedResponse<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // One construction site for the common case, built where it ends up (a `Kind`
        // built first and then wrapped costs a copy of the inner future).
        let headers = match self.limiter.plan(&req) {
            Plan::Bypass => None,
            Plan::Allow(headers) => Some(headers),
            Plan::Reject(res) => {
                return ResponseFuture {
                    kind: Kind::Ready {
                        res: Some(Box::new(res.map(ResponseBody::full))),
                    },
                };
            }
            Plan::Counted(headers, deferred) => {
                let (mut inner, limiter) = self.take_ready();
                return ResponseFuture {
                    kind: Kind::Boxed {
                        fut: Box::pin(async move {
                            let res = inner.call(req).await?;
                            limiter.settle_in_memory(&deferred, res.status());
                            Ok(decorate(res, headers))
                        }),
                    },
                };
            }
            #[cfg(feature = "redis")]
            Plan::Remote(subjects, grpc) => {
                let (mut inner, limiter) = self.take_ready();
                return ResponseFuture {
                    kind: Kind::Boxed {
                        fut: Box::pin(async move {
                            match limiter.decide_remote(subjects, grpc).await {
                                Err(res) => Ok(res.map(ResponseBody::full)),
                                Ok((headers, deferred)) => {
                                    let res = inner.call(req).await?;
                                    if !deferred.is_empty() {
                                        // Counted before the answer leaves, so the next
                                        // request sees it; a status not counted costs
                                        // no round trip.
                                        limiter.settle(deferred, res.status()).await;
                                    }
                                    Ok(decorate(res, headers))
                                }
                            }
                        }),
                    },
                };
            }
        };
        ResponseFuture {
            kind: Kind::Inner {
                fut: self.inner.call(req),
                headers,
            },
        }
    }
}

impl<S: Clone> RateLimit<S> {
    /// The ready inner service, moved out for a boxed future (a clone takes its place:
    /// tower's "be careful when cloning inner services"), and the shared limiter.
    fn take_ready(&mut self) -> (S, Arc<Limiter>) {
        let clone = self.inner.clone();
        (
            std::mem::replace(&mut self.inner, clone),
            self.limiter.clone(),
        )
    }
}

fn decorate<B>(res: Response<B>, headers: Option<Rendered>) -> Response<ResponseBody<B>> {
    let mut res = res.map(ResponseBody::new);
    if let Some(headers) = headers {
        let map = res.headers_mut();
        map.reserve(headers.len());
        for (name, value) in headers {
            map.insert(name, value);
        }
    }
    res
}

pin_project! {
    /// The response future of [`RateLimit`].
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Inner { #[pin] fut: F, headers: Option<Rendered> },
        Ready { res: Option<Box<Response<ResponseBody<B>>>> },
        Boxed { fut: BoxedResponse<B, E> },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate_limit::ResponseFuture")
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut, headers } => {
                let res = ready!(fut.poll(cx))?;
                Poll::Ready(Ok(decorate(res, headers.take())))
            }
            KindProj::Ready { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(*res)),
                // Polled after completion: answer again rather than panic.
                None => Poll::Ready(Ok(Response::new(ResponseBody::full(Bytes::new())))),
            },
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}
