//! The HTTP response cache layer.
//!
//! See [`ResponseCacheLayer`].

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt as _;
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

use super::{Cache, CacheOptions, Codec, Postcard, Ttl, cache::Snapshot, entry::unix_ms};
use crate::{
    body::ResponseBody,
    identity::IdentityReader,
    key::{digest, escape_part},
};

/// Tags a handler attaches to its response (as a response extension) so the cached
/// response can be invalidated with [`Cache::invalidate_tag`].
///
/// # Example
///
/// ```
/// use tower_rampart::cache::CacheTags;
///
/// let mut res = http::Response::new(());
/// res.extensions_mut().insert(CacheTags::new(["users", "user:7"]));
/// assert_eq!(res.extensions().get::<CacheTags>().unwrap().tags().len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheTags(Vec<String>);

impl CacheTags {
    /// Tags from names.
    pub fn new<I>(tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self(tags.into_iter().map(Into::into).collect())
    }

    /// The tag names.
    pub fn tags(&self) -> &[String] {
        &self.0
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    etag: String,
    /// When the response was stored (Unix milliseconds), for `Age` on hits.
    stored_at_ms: u64,
    /// The response's own `Age` when stored, in seconds.
    age: u64,
}

/// The `Cache-Control` directives of a response that decide whether and how long a
/// shared cache may store it (RFC 9111 §5.2.2).
#[derive(Debug, Default, PartialEq, Eq)]
struct Directives {
    /// `no-store`, `private` or `no-cache` (qualified or not), or an unreadable header.
    forbidden: bool,
    /// `max-age`: `Some(None)` when invalid or given twice with different values (the
    /// response is then stale, §4.2.1).
    max_age: Option<Option<u64>>,
    /// `s-maxage`, likewise.
    s_maxage: Option<Option<u64>>,
}

impl Directives {
    fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else {
                d.forbidden = true;
                continue;
            };
            for directive in value.split(',') {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
                let merge = |slot: &mut Option<Option<u64>>| {
                    let new = seconds();
                    *slot = match *slot {
                        None => Some(new),
                        Some(old) if old == new => Some(old),
                        Some(_) => Some(None),
                    };
                };
                if ["no-store", "private", "no-cache"]
                    .iter()
                    .any(|x| name.eq_ignore_ascii_case(x))
                {
                    d.forbidden = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    merge(&mut d.max_age);
                } else if name.eq_ignore_ascii_case("s-maxage") {
                    merge(&mut d.s_maxage);
                }
            }
        }
        d
    }
}

/// How long a shared cache may keep a response (RFC 9111 §4.2): its freshness lifetime
/// (`s-maxage`, else `max-age`, else `default`; at most `default`) less its current
/// `Age`, with that age; `None` when it must not be stored or is already stale.
fn freshness(
    headers: &HeaderMap,
    default: std::time::Duration,
) -> Option<(std::time::Duration, u64)> {
    let d = Directives::parse(headers);
    if d.forbidden {
        return None;
    }
    let lifetime = match d.s_maxage.or(d.max_age) {
        Some(secs) => std::time::Duration::from_secs(secs?).min(default),
        None => default,
    };
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let left = lifetime.checked_sub(std::time::Duration::from_secs(age))?;
    (!left.is_zero()).then_some((left, age))
}

/// Whether a response's CSP (enforced or report-only) names a nonce: its body is then
/// for this one response (CSP3 §7.1).
fn names_a_nonce(headers: &HeaderMap) -> bool {
    [
        header::CONTENT_SECURITY_POLICY,
        header::CONTENT_SECURITY_POLICY_REPORT_ONLY,
    ]
    .iter()
    .flat_map(|n| headers.get_all(n))
    .any(|v| contains(&v.as_bytes().to_ascii_lowercase(), b"'nonce-"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The nonce the CSP layer issued for this request, if any (`csp` feature).
#[cfg(feature = "csp")]
type RequestNonce = Option<crate::csp::CspNonce>;
#[cfg(not(feature = "csp"))]
type RequestNonce = Option<std::convert::Infallible>;

fn request_nonce(ext: &http::Extensions) -> RequestNonce {
    #[cfg(feature = "csp")]
    return ext.get::<crate::csp::CspNonce>().copied();
    #[cfg(not(feature = "csp"))]
    {
        let _ = ext;
        None
    }
}

/// Whether a response embeds the request's nonce (in its body or a header), or carries
/// a nonce in its extensions: such a page must never be replayed.
fn uses_nonce(nonce: &RequestNonce, parts: &http::response::Parts, body: &[u8]) -> bool {
    #[cfg(feature = "csp")]
    {
        if parts.extensions.get::<crate::csp::CspNonce>().is_some() {
            return true;
        }
        if let Some(n) = nonce {
            let n = n.as_str().as_bytes();
            return contains(body, n) || parts.headers.values().any(|v| contains(v.as_bytes(), n));
        }
    }
    let _ = (nonce, parts, body);
    false
}

/// Caches `GET`/`HEAD` 200 responses in a [`Cache`].
///
/// [`ResponseCacheLayer`] caches `GET` and `HEAD` `200 OK` responses in a [`Cache`],
/// keyed by tenant, method, scheme and authority (the URI's, else `Host`), path and
/// query, and the values of the request headers the layer varies on. A response is
/// stored only when all of these hold:
///
/// - the request has no `Cache-Control: no-store` and no credentials (no
///   `Authorization`, no `Cookie`, no user in the extensions), unless the layer caches
///   credentialed requests **keyed by the principal** ([`by_principal`](Self::by_principal))
///   or the route is declared [`public`](Self::public); a credentialed request is not
///   answered from the cache either;
/// - the response is `200`, has no `Set-Cookie`, no `Cache-Control: no-store`,
///   `private` or `no-cache`, is still fresh (RFC 9111 §4.2: `s-maxage`, else
///   `max-age`, else the layer's TTL, less its `Age`), and its `Vary` names only headers
///   the layer varies on (not `*`);
/// - it is not bound to a CSP nonce: no `'nonce-` in its `Content-Security-Policy`, and
///   (feature `csp`) neither its body nor its headers contain the [`CspNonce`] of the
///   request (the CSP layer outside this one), so a replayed page never carries another
///   response's nonce;
/// - its body has a known length no larger than the entry cap. Other bodies stream
///   through unchanged, never buffered.
///
/// A response is kept for its freshness lifetime less its age, at most the layer's TTL;
/// hits carry an `Age` header (RFC 9111 §5.1).
///
#[cfg_attr(feature = "csp", doc = "[`CspNonce`]: crate::csp::CspNonce")]
/// A body that fails while being read for storage is handed on as the inner service
/// sent it (the status and headers, the bytes read, then the body's own error) and is
/// not stored: the layer never answers a `5xx` of its own.
///
/// Stored responses carry a strong `ETag` (SHA-256 of the body, or the handler's own);
/// a request whose `If-None-Match` matches gets `304 Not Modified` (RFC 9110 §13.1.2).
/// Handlers attach tags with the [`CacheTags`] response extension; invalidating one of
/// them through the same [`Cache`] (and tenant) removes every response carrying it.
///
/// The lookup is asynchronous and must run before the inner service, so a cacheable
/// request's future is boxed once (inside [`ResponseFuture`]); other requests use an
/// unboxed pass-through.
///
/// # Example
///
/// ```
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use bytes::Bytes;
/// use tower::{ServiceExt, service_fn};
/// use tower_rampart::cache::{Cache, MemoryBackend, ResponseCacheLayer};
/// use tower_layer::Layer;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let cache = Cache::builder().build(MemoryBackend::new(8 << 20)).unwrap();
/// let svc = ResponseCacheLayer::new(cache).layer(service_fn(|_req: Request<()>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("hello"))))
/// }));
/// let res = svc.clone().oneshot(Request::get("/hello").body(()).unwrap()).await.unwrap();
/// let etag = res.headers()["etag"].clone();
/// let res = svc
///     .oneshot(Request::get("/hello").header("if-none-match", etag).body(()).unwrap())
///     .await
///     .unwrap();
/// assert_eq!(res.status(), 304);
/// # });
/// ```
#[derive(Debug)]
#[must_use]
pub struct ResponseCacheLayer<C = Postcard> {
    config: Arc<Config<C>>,
}

impl<C> Clone for ResponseCacheLayer<C> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
        }
    }
}

#[derive(Debug)]
struct Config<C> {
    cache: Cache<C>,
    identity: IdentityReader,
    ttl: Ttl,
    max_entry_bytes: usize,
    vary: Vec<HeaderName>,
    by_principal: bool,
    public: bool,
    tags: Vec<String>,
}

impl<C: Codec> ResponseCacheLayer<C> {
    /// A layer storing responses in `cache`.
    pub fn new(cache: Cache<C>) -> Self {
        Self {
            config: Arc::new(Config {
                cache,
                identity: IdentityReader::new(),
                ttl: Ttl::Short,
                max_entry_bytes: 1 << 20,
                vary: vec![
                    header::ACCEPT,
                    header::ACCEPT_ENCODING,
                    header::ACCEPT_LANGUAGE,
                ],
                by_principal: false,
                public: false,
                tags: Vec::new(),
            }),
        }
    }

    fn edit(self, f: impl FnOnce(&mut Config<C>)) -> Self {
        let mut config = Arc::try_unwrap(self.config).unwrap_or_else(|shared| Config {
            cache: shared.cache.clone(),
            identity: shared.identity,
            ttl: shared.ttl,
            max_entry_bytes: shared.max_entry_bytes,
            vary: shared.vary.clone(),
            by_principal: shared.by_principal,
            public: shared.public,
            tags: shared.tags.clone(),
        });
        f(&mut config);
        Self {
            config: Arc::new(config),
        }
    }

    /// How to read the tenant (the key's namespace) and the user from requests.
    ///
    /// By default, no type is known: every request is global and anonymous (requests
    /// with an `Authorization` header are still never cached).
    pub fn identity(self, reader: IdentityReader) -> Self {
        self.edit(|c| c.identity = reader)
    }

    /// How long responses are kept. By default, [`Ttl::Short`] (60 s).
    pub fn ttl(self, ttl: Ttl) -> Self {
        self.edit(|c| c.ttl = ttl)
    }

    /// The largest body stored, in bytes. By default, 1 MiB.
    pub fn max_entry_bytes(self, bytes: usize) -> Self {
        self.edit(|c| c.max_entry_bytes = bytes)
    }

    /// The request headers whose values are part of the key; a response whose `Vary`
    /// names another header is not stored. By default, `Accept`, `Accept-Encoding` and
    /// `Accept-Language`.
    pub fn vary_headers<I>(self, names: I) -> Self
    where
        I: IntoIterator<Item = HeaderName>,
    {
        let names: Vec<HeaderName> = names.into_iter().collect();
        self.edit(|c| c.vary = names)
    }

    /// Also cache authenticated requests, keyed by the user id read through
    /// [`identity`](Self::identity) (requests with credentials but no readable user are
    /// still never cached). By default, `false`: authenticated requests are never cached.
    pub fn by_principal(self, enabled: bool) -> Self {
        self.edit(|c| c.by_principal = enabled)
    }

    /// Declares the responses **public**: the same for every client whatever its
    /// credentials, so requests with `Cookie` or `Authorization` are answered from (and
    /// stored in) the one shared entry. Only for routes whose responses never depend on
    /// who asks. By default, `false`: a credentialed request is neither stored nor
    /// answered from the cache, unless keyed by [`by_principal`](Self::by_principal).
    pub fn public(self, public: bool) -> Self {
        self.edit(|c| c.public = public)
    }

    /// Declares the [`CacheTags`] the responses may carry, making their invalidation
    /// **race-free**: the tags' versions are read with the lookup, before the inner
    /// service runs, and the response is stored with them. A response computed from data
    /// read before a concurrent `invalidate_tag` is then stored already stale (the next
    /// request misses) instead of fresh until its TTL.
    ///
    /// Undeclared tags still work, versioned when the response is stored: an
    /// invalidation that lands while the inner service runs can then be lost for that
    /// one entry. By default, none declared.
    ///
    /// ```
    /// use tower_rampart::cache::{Cache, MemoryBackend, ResponseCacheLayer};
    ///
    /// let cache = Cache::builder().build(MemoryBackend::new(1 << 20)).unwrap();
    /// let layer = ResponseCacheLayer::new(cache).tags(["trial-balance"]);
    /// # let _ = layer;
    /// ```
    pub fn tags<I>(self, tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        // Stored escaped, as the cache keeps them: no per-request escaping.
        let tags: Vec<String> = tags.into_iter().map(|t| escape_part(&t.into())).collect();
        self.edit(|c| c.tags = tags)
    }
}

impl<S, C> Layer<S> for ResponseCacheLayer<C> {
    type Service = ResponseCache<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`ResponseCacheLayer`].
pub struct ResponseCache<S, C = Postcard> {
    inner: S,
    config: Arc<Config<C>>,
}

impl<S: Clone, C> Clone for ResponseCache<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for ResponseCache<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The future of [`ResponseCache`]: a pass-through, or one boxed lookup-then-call.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Passthrough { #[pin] fut: F },
        Cached { fut: BoxFuture<Result<Response<ResponseBody<B>>, E>> },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Passthrough { .. } => f.write_str("ResponseFuture::Passthrough"),
            Kind::Cached { .. } => f.write_str("ResponseFuture::Cached"),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { fut } => fut
                .poll(cx)
                .map(|r| r.map(|res| res.map(ResponseBody::new))),
            KindProj::Cached { fut } => fut.as_mut().poll(cx),
        }
    }
}

fn has_directive(headers: &HeaderMap, name: &HeaderName, directives: &[&str]) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|d| {
                let d = d.trim();
                let d = d.split('=').next().unwrap_or(d);
                directives.iter().any(|x| d.eq_ignore_ascii_case(x))
            })
        })
    })
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                let t = t.trim();
                // Weak comparison (RFC 9110 §13.1.2): W/"x" matches "x".
                t == "*" || t.trim_start_matches("W/") == etag.trim_start_matches("W/")
            })
        })
    })
}

/// Room for the stored headers and the `ETag` beside a body of `max_entry_bytes`.
const HEADER_ROOM: usize = 64 << 10;

impl<C: Codec> Config<C> {
    /// The largest stored entry this layer reads (inflated): its body cap plus room
    /// for headers. A larger one cannot be the layer's own and is deleted.
    fn max_stored_bytes(&self) -> usize {
        self.max_entry_bytes.saturating_add(HEADER_ROOM)
    }

    /// The cache handle and key for a request, or `None` when it must not be cached.
    ///
    /// A request with credentials (`Authorization`, `Cookie`, or a user in the
    /// extensions) is cached only keyed by its user ([`by_principal`]) or on a route
    /// declared [`public`]. The key holds the scheme and authority (the URI's, else the
    /// `Host` header), so hosts served by one service never share an entry.
    ///
    /// [`by_principal`]: ResponseCacheLayer::by_principal
    /// [`public`]: ResponseCacheLayer::public
    fn key_for<B>(&self, req: &Request<B>) -> Option<(Cache<C>, String)> {
        if !matches!(*req.method(), Method::GET | Method::HEAD)
            || has_directive(req.headers(), &header::CACHE_CONTROL, &["no-store"])
        {
            return None;
        }
        let ext = req.extensions();
        let user = self.identity.user_id(ext);
        let credentialed = user.is_some()
            || req.headers().contains_key(header::AUTHORIZATION)
            || req.headers().contains_key(header::COOKIE);
        let principal = match (credentialed, self.by_principal, user) {
            (false, _, _) => "",
            (true, true, Some(user)) => user,
            (true, _, _) if self.public => "",
            (true, _, _) => return None,
        };
        let uri = req.uri();
        let authority = uri
            .authority()
            .map(http::uri::Authority::as_str)
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut key = String::from("res");
        for part in [
            req.method().as_str(),
            uri.scheme_str().unwrap_or(""),
            &authority,
            uri.path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str),
            principal,
        ] {
            key.push(':');
            key.push_str(&escape_part(part));
        }
        for name in &self.vary {
            key.push(':');
            for v in req.headers().get_all(name) {
                key.push_str(&escape_part(&String::from_utf8_lossy(v.as_bytes())));
                key.push(',');
            }
        }
        Some((self.cache.for_request(&self.identity, ext), key))
    }

    /// How long the response may be stored (and its `Age`), or `None` when it must not
    /// be: not a `200`, `Set-Cookie`, a `Vary` naming a header outside the key (or
    /// `*`), a CSP naming a nonce, RFC 9111 directives, or a body of unknown or too
    /// large a size.
    fn storable<B: Body>(&self, res: &Response<B>) -> Option<(std::time::Duration, u64)> {
        let h = res.headers();
        let ok = res.status() == StatusCode::OK
            && !h.contains_key(header::SET_COOKIE)
            && !names_a_nonce(h)
            && h.get_all(header::VARY).iter().all(|v| {
                v.to_str().is_ok_and(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .all(|n| {
                            n != "*" && self.vary.iter().any(|x| x.as_str().eq_ignore_ascii_case(n))
                        })
                })
            })
            && res
                .body()
                .size_hint()
                .exact()
                .is_some_and(|n| usize::try_from(n).is_ok_and(|n| n <= self.max_entry_bytes));
        if !ok {
            return None;
        }
        freshness(h, self.cache.ttl_tiers().resolve(self.ttl))
    }
}

/// Reads a whole body: its bytes, or the bytes read before it failed and the error.
async fn buffer<B>(body: B) -> Result<Bytes, (Bytes, B::Error)>
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut chunks: Vec<Bytes> = Vec::new();
    let concat = |chunks: Vec<Bytes>| match <[Bytes; 1]>::try_from(chunks) {
        Ok([one]) => one,
        Err(chunks) => Bytes::from(chunks.concat()),
    };
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    chunks.push(data);
                }
            }
            Err(e) => return Err((concat(chunks), e)),
        }
    }
    Ok(concat(chunks))
}

fn replay<B>(stored: Stored, req_headers: &HeaderMap, head: bool) -> Response<ResponseBody<B>> {
    let not_modified = etag_matches(req_headers, &stored.etag);
    let mut res = if not_modified || head {
        Response::new(ResponseBody::empty())
    } else {
        Response::new(ResponseBody::full(stored.body))
    };
    if not_modified {
        *res.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let headers = res.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            if not_modified && n == header::CONTENT_LENGTH {
                continue;
            }
            headers.append(n, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&stored.etag) {
        headers.insert(header::ETAG, v);
    }
    // RFC 9111 §4.2.3: the age when stored plus the time resident in the cache.
    let resident = unix_ms().saturating_sub(stored.stored_at_ms) / 1000;
    headers.insert(
        header::AGE,
        HeaderValue::from(stored.age.saturating_add(resident)),
    );
    res
}

impl<S, C, ReqBody, ResBody> Service<Request<ReqBody>> for ResponseCache<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    C: Codec,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display + Send,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some((cache, key)) = self.config.key_for(&req) else {
            return ResponseFuture {
                kind: Kind::Passthrough {
                    fut: self.inner.call(req),
                },
            };
        };
        // The ready service goes into the future; a fresh clone stays here.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let fut = async move {
            let head = req.method() == Method::HEAD;
            let req_headers = req.headers().clone();
            let nonce = request_nonce(req.extensions());
            let skip_lookup = has_directive(req.headers(), &header::CACHE_CONTROL, &["no-cache"]);
            let (found, snapshot) = if skip_lookup && config.tags.is_empty() {
                (None, Snapshot::default())
            } else {
                cache
                    .get_with_snapshot::<Stored>(
                        &key,
                        &config.tags,
                        config.ttl,
                        !skip_lookup,
                        config.max_stored_bytes(),
                    )
                    .await
            };
            if !skip_lookup && let Some(stored) = found {
                return Ok(replay(stored, &req_headers, head));
            }
            let res = inner.call(req).await?;
            let Some((ttl, age)) = config.storable(&res) else {
                return Ok(res.map(ResponseBody::new));
            };
            let (mut parts, body) = res.into_parts();
            let bytes = match buffer(body).await {
                Ok(bytes) => bytes,
                Err((read, e)) => {
                    // Hand the failure on as the inner body would have; never cached.
                    tracing::warn!(error = %e, "response body failed while being cached");
                    return Ok(Response::from_parts(parts, ResponseBody::failed(read, e)));
                }
            };
            if uses_nonce(&nonce, &parts, &bytes) {
                return Ok(Response::from_parts(parts, ResponseBody::full(bytes)));
            }
            let etag = match parts
                .headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
            {
                Some(tag) => tag.to_owned(),
                None => {
                    let tag = format!("\"{}\"", digest(&bytes));
                    if let Ok(v) = HeaderValue::from_str(&tag) {
                        parts.headers.insert(header::ETAG, v);
                    }
                    tag
                }
            };
            let tags = parts
                .extensions
                .get::<CacheTags>()
                .cloned()
                .unwrap_or_default();
            let stored = Stored {
                headers: parts
                    .headers
                    .iter()
                    .filter(|(n, _)| *n != header::ETAG && *n != header::AGE)
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                body: bytes.to_vec(),
                etag: etag.clone(),
                stored_at_ms: unix_ms(),
                age,
            };
            let options = CacheOptions::new()
                .ttl(Ttl::Custom(ttl))
                .with_tags(tags.tags());
            cache.set_after(&key, &stored, &options, &snapshot).await;
            if etag_matches(&req_headers, &etag) {
                let mut res = Response::from_parts(parts, ResponseBody::empty());
                *res.status_mut() = StatusCode::NOT_MODIFIED;
                res.headers_mut().remove(header::CONTENT_LENGTH);
                return Ok(res);
            }
            let body = if head {
                ResponseBody::empty()
            } else {
                ResponseBody::full(bytes)
            };
            Ok(Response::from_parts(parts, body))
        };
        ResponseFuture {
            kind: Kind::Cached { fut: Box::pin(fut) },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn freshness_follows_rfc9111() {
        let f = |pairs: &[(&'static str, &'static str)]| freshness(&headers(pairs), MINUTE);
        let secs = |s| Some((Duration::from_secs(s), 0));
        assert_eq!(f(&[]), secs(60), "no directive: the layer's TTL");
        assert_eq!(f(&[("cache-control", "max-age=30")]), secs(30));
        assert_eq!(f(&[("cache-control", "max-age=3600")]), secs(60), "capped");
        assert_eq!(
            f(&[("cache-control", "max-age=\"30\"")]),
            secs(30),
            "quoted"
        );
        assert_eq!(
            f(&[
                ("cache-control", "max-age=50"),
                ("cache-control", "s-maxage=20")
            ]),
            secs(20),
            "s-maxage wins in a shared cache (§5.2.2.10), across header lines"
        );
        assert_eq!(
            f(&[("cache-control", "public, MAX-AGE=30, must-revalidate")]),
            secs(30)
        );
        assert_eq!(
            f(&[("cache-control", "max-age=30"), ("age", "12")]),
            Some((Duration::from_secs(18), 12)),
            "§4.2.3: stored for what is left"
        );
        for forbidden in [
            "no-store",
            "private",
            "No-Cache",
            "private=\"set-cookie\"",
            "no-cache=\"x\", max-age=60",
            "max-age=0",
            "max-age=-1",
            "max-age=1e3",
            "max-age=5, max-age=6",
            "s-maxage=0, max-age=60",
        ] {
            assert_eq!(f(&[("cache-control", forbidden)]), None, "{forbidden}");
        }
        assert_eq!(f(&[("cache-control", "max-age=5, max-age=5")]), secs(5));
        assert_eq!(
            f(&[("cache-control", "max-age=30"), ("age", "30")]),
            None,
            "stale"
        );
        assert_eq!(f(&[("age", "junk")]), secs(60), "an invalid Age is ignored");
    }

    #[test]
    fn nonce_in_a_csp_header_is_seen() {
        assert!(names_a_nonce(&headers(&[(
            "content-security-policy",
            "script-src 'NONCE-abc' 'strict-dynamic'"
        )])));
        assert!(names_a_nonce(&headers(&[(
            "content-security-policy-report-only",
            "script-src 'nonce-abc'"
        )])));
        assert!(!names_a_nonce(&headers(&[(
            "content-security-policy",
            "default-src 'self'"
        )])));
        assert!(!contains(b"abc", b""));
        assert!(contains(b"xxabcxx", b"abc"));
    }
}
