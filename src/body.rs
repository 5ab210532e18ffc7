//! The response body used by every layer that can answer on its own.
//!
//! A layer that short-circuits (a 429 from the rate limiter, a 403 from the tenant
//! resolver, a 204 from the CSP report receiver) sends a small buffered body of its own;
//! otherwise the inner service's body passes through untouched. [`ResponseBody`] is that
//! choice, with the variants kept private so they can change without breaking users.
//! A layer that buffered the inner body and met an error while reading it (the response
//! cache) hands back the bytes it read followed by that same error, exactly as the inner
//! body would have.

use std::{
    any::Any,
    fmt,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body or a small buffered body produced by a layer.
    ///
    /// # Example
    ///
    /// ```
    /// use http_body::Body as _;
    /// use tower_rampart::body::ResponseBody;
    ///
    /// let body: ResponseBody<String> = ResponseBody::full("{}");
    /// assert_eq!(body.size_hint().exact(), Some(2));
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Passthrough { #[pin] body: B },
        // A layer's own body; `None` once sent, or when empty. Boxed, so that the enum
        // fits in the inner body's niche: `ResponseBody<axum::body::Body>` is as small as
        // `axum::body::Body`, and a `Response` of it stays within 128 bytes, which the
        // compiler moves inline instead of calling `memcpy` (a measurable share of a
        // pass-through layer's cost).
        Own { own: Option<Box<Own>> },
    }
}

enum Own {
    /// A complete, non-empty body.
    Full(Bytes),
    /// The bytes read before the inner body failed, then its error.
    Failed(Failed),
}

/// What a failed inner body left: the bytes read, then its error (a `B::Error`, erased so
/// that `ResponseBody<B>` needs no `B: Body` bound; the mutex only makes the body `Sync`
/// without requiring a `Sync` error, it is never locked).
struct Failed {
    data: Option<Bytes>,
    error: Mutex<Option<Box<dyn Any + Send>>>,
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body; frames pass through unchanged.
    pub fn new(body: B) -> Self {
        Self {
            inner: Inner::Passthrough { body },
        }
    }

    /// A complete body of the given bytes, produced by a layer.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            inner: Inner::Own {
                own: (!data.is_empty()).then(|| Box::new(Own::Full(data))),
            },
        }
    }

    /// An empty body (for 204 and 304 answers).
    pub fn empty() -> Self {
        Self {
            inner: Inner::Own { own: None },
        }
    }

    /// A body yielding `data` (the bytes read from the inner body), then `error` (the
    /// inner body's error): what the inner service would have sent.
    pub(crate) fn failed(data: Bytes, error: B::Error) -> Self
    where
        B: Body,
        B::Error: Send + 'static,
    {
        Self {
            inner: Inner::Own {
                own: Some(Box::new(Own::Failed(Failed {
                    data: (!data.is_empty()).then_some(data),
                    error: Mutex::new(Some(Box::new(error))),
                }))),
            },
        }
    }
}

impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::new(B::default())
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Passthrough { .. } => f.write_str("ResponseBody::Passthrough"),
            Inner::Own { own } => match own.as_deref() {
                None => f
                    .debug_struct("ResponseBody::Full")
                    .field("len", &0)
                    .finish(),
                Some(Own::Full(data)) => f
                    .debug_struct("ResponseBody::Full")
                    .field("len", &data.len())
                    .finish(),
                Some(Own::Failed(failed)) => f
                    .debug_struct("ResponseBody::Failed")
                    .field("len", &failed.data.as_ref().map_or(0, Bytes::len))
                    .finish_non_exhaustive(),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().inner.project() {
            InnerProj::Passthrough { body } => body.poll_frame(cx),
            InnerProj::Own { own } => {
                let Some(current) = own.as_deref_mut() else {
                    return Poll::Ready(None);
                };
                let frame = match current {
                    Own::Full(data) => Some(Ok(Frame::data(std::mem::take(data)))),
                    Own::Failed(failed) => {
                        if let Some(d) = failed.data.take() {
                            return Poll::Ready(Some(Ok(Frame::data(d))));
                        }
                        // `failed` stores a `B::Error`, so the downcast cannot fail.
                        failed
                            .error
                            .get_mut()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .take()
                            .and_then(|e| e.downcast::<B::Error>().ok())
                            .map(|e| Err(*e))
                    }
                };
                // Sent (or failed): the stream ends here.
                *own = None;
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Passthrough { body } => body.is_end_stream(),
            Inner::Own { own } => own.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Passthrough { body } => body.size_hint(),
            Inner::Own { own } => match own.as_deref() {
                None => SizeHint::with_exact(0),
                Some(Own::Full(data)) => SizeHint::with_exact(data.len() as u64),
                Some(Own::Failed(failed)) => {
                    let mut hint = SizeHint::new();
                    hint.set_lower(failed.data.as_ref().map_or(0, |d| d.len() as u64));
                    hint
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn full_body_yields_its_bytes_once() {
        let body: ResponseBody<Full<Bytes>> = ResponseBody::full("hello");
        assert!(!body.is_end_stream());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
    }

    #[tokio::test]
    async fn empty_body_is_end_of_stream() {
        let body: ResponseBody<Full<Bytes>> = ResponseBody::empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn passthrough_keeps_inner_frames() {
        let body = ResponseBody::new(Full::new(Bytes::from_static(b"inner")));
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"inner");
        assert!(format!("{:?}", ResponseBody::<Full<Bytes>>::full("ab")).contains("len: 2"));
    }

    #[test]
    fn a_boxed_inner_body_is_wrapped_at_no_size_cost() {
        use std::mem::size_of;
        type Boxed = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;
        assert_eq!(size_of::<ResponseBody<Boxed>>(), size_of::<Boxed>());
        assert_eq!(size_of::<ResponseBody<axum::body::Body>>(), 16);
        // So a response of it stays within what the compiler moves inline.
        assert!(size_of::<http::Response<ResponseBody<axum::body::Body>>>() <= 128);
    }

    #[tokio::test]
    async fn failed_body_yields_the_bytes_read_then_the_error() {
        type Inner = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
        let err = std::io::Error::other("upstream reset");
        let mut body = ResponseBody::<Inner>::failed(Bytes::from_static(b"part"), err);
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().lower(), 4);
        assert_eq!(body.size_hint().exact(), None);
        assert!(format!("{body:?}").contains("Failed"));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "part");
        let e = body.frame().await.unwrap().unwrap_err();
        assert_eq!(e.to_string(), "upstream reset");
        assert!(
            body.frame().await.is_none(),
            "the stream ends after the error"
        );
        // Nothing read before the error: the error comes first.
        let mut body = ResponseBody::<Inner>::failed(Bytes::new(), std::io::Error::other("x"));
        assert!(body.frame().await.unwrap().is_err());
    }
}
