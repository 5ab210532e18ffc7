use std::{collections::BTreeMap, convert::Infallible};

use http::{HeaderMap, Request, Response};
use tower::{ServiceExt as _, service_fn};
use tower_layer::Layer as _;

use super::*;
use crate::client_ip::{ClientIpResolver, PeerAddr, TrustedProxies};

/// Every header of a response, as a sorted map.
fn headers_of(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect()
}

fn app_headers(
    pairs: &'static [(&'static str, &'static str)],
) -> impl Fn(Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>> + Clone {
    move |req: Request<()>| {
        let mut res = Response::new(
            req.extensions()
                .get::<crate_nonce::Nonce>()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
        for (k, v) in pairs {
            res.headers_mut().append(*k, v.parse().unwrap());
        }
        std::future::ready(Ok(res))
    }
}

#[cfg(feature = "csp")]
mod crate_nonce {
    pub(super) type Nonce = crate::csp::CspNonce;
}
#[cfg(not(feature = "csp"))]
mod crate_nonce {
    #[derive(Clone, Debug)]
    pub(super) struct Nonce;
    impl std::fmt::Display for Nonce {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            Ok(())
        }
    }
}

async fn run(layer: &SecurityHeadersLayer, req: Request<()>) -> Response<String> {
    layer
        .layer(service_fn(app_headers(&[
            ("server", "hyper"),
            ("x-powered-by", "rust"),
        ])))
        .oneshot(req)
        .await
        .unwrap()
}

fn https() -> Request<()> {
    Request::get("https://example.com/").body(()).unwrap()
}

const RECOMMENDED: [(&str, &str); 12] = [
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("origin-agent-cluster", "?1"),
    (
        "permissions-policy",
        "accelerometer=(), ambient-light-sensor=(), autoplay=(), bluetooth=(), browsing-topics=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), hid=(), idle-detection=(), magnetometer=(), microphone=(), midi=(), payment=(), serial=(), usb=(), xr-spatial-tracking=()",
    ),
    ("referrer-policy", "no-referrer"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("x-frame-options", "SAMEORIGIN"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
];

#[tokio::test]
async fn recommended_preset_sends_exactly_these_headers() {
    let layer = SecurityHeadersLayer::recommended().build().unwrap();
    let res = run(&layer, https()).await;
    #[allow(unused_mut)]
    let mut expected: BTreeMap<String, String> = RECOMMENDED
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    #[cfg(feature = "csp")]
    expected.insert(
        "content-security-policy".into(),
        "default-src 'self'; base-uri 'self'; font-src 'self' https: data:; form-action 'self'; frame-ancestors 'self'; img-src 'self' data:; object-src 'none'; script-src 'self'; script-src-attr 'none'; style-src 'self' https: 'unsafe-inline'; upgrade-insecure-requests".into(),
    );
    assert_eq!(headers_of(res.headers()), expected);
}

#[tokio::test]
async fn strict_preset_sends_exactly_these_headers() {
    let layer = SecurityHeadersLayer::strict().build().unwrap();
    let res = run(&layer, https()).await;
    let mut expected: BTreeMap<String, String> = RECOMMENDED
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    expected.insert("cross-origin-embedder-policy".into(), "require-corp".into());
    expected.insert("cache-control".into(), "no-store".into());
    expected.insert("x-frame-options".into(), "DENY".into());
    expected.insert(
        "strict-transport-security".into(),
        "max-age=63072000; includeSubDomains".into(),
    );
    #[cfg(feature = "csp")]
    expected.insert(
        "content-security-policy".into(),
        format!(
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'; script-src 'nonce-{n}' 'strict-dynamic'; style-src 'self' 'nonce-{n}'; upgrade-insecure-requests",
            n = res.body()
        ),
    );
    assert_eq!(headers_of(res.headers()), expected);
}

#[tokio::test]
async fn hsts_only_over_https_or_from_a_trusted_proxy() {
    let layer = SecurityHeadersLayer::recommended()
        .client_ip_resolver(ClientIpResolver::new(
            TrustedProxies::new(["10.0.0.0/8"]).unwrap(),
        ))
        .build()
        .unwrap();
    let hsts = |res: &Response<String>| res.headers().contains_key("strict-transport-security");
    // HTTPS request URI.
    assert!(hsts(&run(&layer, https()).await));
    // Plain HTTP.
    let plain = Request::get("http://example.com/").body(()).unwrap();
    assert!(!hsts(&run(&layer, plain).await));
    // Origin-form URI, no proxy: unknown scheme, no HSTS.
    assert!(!hsts(&run(&layer, Request::new(())).await));
    let by_forwarded = SecurityHeadersLayer::recommended()
        .client_ip_resolver(
            ClientIpResolver::new(TrustedProxies::new(["10.0.0.0/8"]).unwrap())
                .scheme_source(crate::client_ip::SchemeSource::Forwarded),
        )
        .build()
        .unwrap();
    for (layer, header, value) in [
        (&layer, "x-forwarded-proto", "https"),
        (&by_forwarded, "forwarded", "for=1.2.3.4;proto=https"),
    ] {
        // A trusted proxy says https, in the configured source.
        let req = Request::builder()
            .header(header, value)
            .extension(PeerAddr("10.1.2.3:5000".parse().unwrap()))
            .body(())
            .unwrap();
        assert!(hsts(&run(layer, req).await), "{header}");
        // An untrusted peer spoofing the same header.
        let req = Request::builder()
            .header(header, value)
            .extension(PeerAddr("198.51.100.7:5000".parse().unwrap()))
            .body(())
            .unwrap();
        assert!(!hsts(&run(layer, req).await), "{header} spoofed");
    }
    // A header other than the configured source is never read.
    let req = Request::builder()
        .header("forwarded", "proto=https")
        .extension(PeerAddr("10.1.2.3:5000".parse().unwrap()))
        .body(())
        .unwrap();
    assert!(!hsts(&run(&layer, req).await), "not the configured source");
    // A trusted proxy saying http over an https URI: http wins.
    let req = Request::get("http://example.com/")
        .header("x-forwarded-proto", "http")
        .extension(PeerAddr("10.1.2.3:5000".parse().unwrap()))
        .body(())
        .unwrap();
    assert!(!hsts(&run(&layer, req).await));
    // Forced.
    let always = SecurityHeadersLayer::recommended()
        .hsts_when(HstsWhen::Always)
        .build()
        .unwrap();
    assert!(hsts(&run(&always, Request::new(())).await));
    // Off.
    let off = SecurityHeadersLayer::recommended()
        .hsts(None)
        .build()
        .unwrap();
    assert!(!hsts(&run(&off, https()).await));
}

#[tokio::test]
async fn application_headers_win_unless_overwrite() {
    static APP: &[(&str, &str)] = &[
        ("x-frame-options", "ALLOW-FROM https://a.example"),
        ("referrer-policy", "origin"),
        ("strict-transport-security", "max-age=5"),
        ("cache-control", "public, max-age=60"),
        ("server", "kept?"),
    ];
    let keep = SecurityHeadersLayer::strict().build().unwrap();
    let svc = keep.layer(service_fn(app_headers(APP)));
    let res = svc.oneshot(https()).await.unwrap();
    let h = res.headers();
    assert_eq!(h["x-frame-options"], "ALLOW-FROM https://a.example");
    assert_eq!(h["referrer-policy"], "origin");
    assert_eq!(h["strict-transport-security"], "max-age=5");
    assert_eq!(h["cache-control"], "public, max-age=60");
    assert!(h.get("server").is_none(), "Server is always removed");

    let over = SecurityHeadersLayer::strict()
        .mode("X-Frame-Options", HeaderMode::Overwrite)
        .mode("strict-transport-security", HeaderMode::Overwrite)
        .mode("cache-control", HeaderMode::Overwrite)
        .keep_header("server")
        .build()
        .unwrap();
    let res = over
        .layer(service_fn(app_headers(APP)))
        .oneshot(https())
        .await
        .unwrap();
    let h = res.headers();
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "origin", "still set-if-absent");
    assert_eq!(
        h["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["server"], "kept?");

    let all = SecurityHeadersLayer::recommended()
        .default_mode(HeaderMode::Overwrite)
        .build()
        .unwrap();
    let res = all
        .layer(service_fn(app_headers(APP)))
        .oneshot(https())
        .await
        .unwrap();
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    assert_eq!(
        res.headers()["cache-control"],
        "public, max-age=60",
        "recommended sets no cache-control"
    );
}

#[tokio::test]
async fn every_header_can_be_changed_or_switched_off() {
    let layer = SecurityHeadersLayer::recommended()
        .cross_origin_opener_policy(CrossOriginOpenerPolicy::SameOriginAllowPopups)
        .cross_origin_resource_policy(CrossOriginResourcePolicy::CrossOrigin)
        .cross_origin_embedder_policy(CrossOriginEmbedderPolicy::Credentialless)
        .origin_agent_cluster(false)
        .referrer_policy(ReferrerPolicy::StrictOriginWhenCrossOrigin)
        .hsts(Hsts::new(63_072_000).preload(true))
        .content_type_options(false)
        .dns_prefetch_control(DnsPrefetchControl::On)
        .download_options(false)
        .frame_options(None)
        .permitted_cross_domain_policies(PermittedCrossDomainPolicies::MasterOnly)
        .xss_protection_disabled(false)
        .permissions_policy(PermissionsPolicy::new().allow_self(Feature::Fullscreen))
        .header("x-robots-tag", "noindex")
        .remove_header("x-runtime")
        .keep_header("X-Powered-By");
    #[cfg(feature = "csp")]
    let layer = layer.csp(None);
    let layer = layer.build().unwrap();
    assert!(format!("{layer:?}").contains("SecurityHeadersLayer"));
    let res = layer
        .layer(service_fn(app_headers(&[
            ("x-runtime", "12ms"),
            ("x-powered-by", "me"),
        ])))
        .oneshot(https())
        .await
        .unwrap();
    let expected: BTreeMap<String, String> = [
        ("cross-origin-opener-policy", "same-origin-allow-popups"),
        ("cross-origin-resource-policy", "cross-origin"),
        ("cross-origin-embedder-policy", "credentialless"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains; preload",
        ),
        ("x-dns-prefetch-control", "on"),
        ("x-permitted-cross-domain-policies", "master-only"),
        ("permissions-policy", "fullscreen=(self)"),
        ("x-robots-tag", "noindex"),
        ("x-powered-by", "me"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(headers_of(res.headers()), expected);
}

#[tokio::test]
async fn no_store_applies_to_chosen_paths_only() {
    let layer = SecurityHeadersLayer::strict()
        .no_store_paths(["/account/", "/api"])
        .build()
        .unwrap();
    for (path, no_store) in [
        ("/account", true),
        ("/account/settings", true),
        ("/api/v1/me", true),
        ("/apis", false),
        ("/", false),
        ("/static/app.js", false),
    ] {
        let req = Request::get(path).body(()).unwrap();
        let res = run(&layer, req).await;
        assert_eq!(
            res.headers().get("cache-control").is_some(),
            no_store,
            "{path}"
        );
    }
}

#[tokio::test]
async fn per_route_overrides_use_the_longest_prefix() {
    let layer = SecurityHeadersLayer::recommended()
        .route(
            "/docs",
            SecurityHeadersLayer::recommended().frame_options(None),
        )
        .route(
            "/docs/embed/",
            SecurityHeadersLayer::recommended().frame_options(FrameOptions::Deny),
        )
        .build()
        .unwrap();
    for (path, xfo) in [
        ("/", Some("SAMEORIGIN")),
        ("/docs", None),
        ("/docs/api", None),
        ("/docsx", Some("SAMEORIGIN")),
        ("/docs/embed", Some("DENY")),
        ("/docs/embed/x", Some("DENY")),
    ] {
        let res = run(&layer, Request::get(path).body(()).unwrap()).await;
        assert_eq!(
            res.headers()
                .get("x-frame-options")
                .map(|v| v.to_str().unwrap()),
            xfo,
            "{path}"
        );
    }
}

#[test]
fn build_rejects_invalid_configuration() {
    for (builder, needle) in [
        (
            SecurityHeadersLayer::recommended().hsts(Hsts::new(60)),
            "under one year",
        ),
        (
            SecurityHeadersLayer::recommended().permissions_policy(PermissionsPolicy::new()),
            "empty",
        ),
        (
            SecurityHeadersLayer::recommended().header("bad name", "x"),
            "not a valid header name",
        ),
        (
            SecurityHeadersLayer::recommended().header("x-a", "a\r\nb"),
            "not a valid header value",
        ),
        (
            SecurityHeadersLayer::recommended().header("X-Frame-Options", "DENY"),
            "typed setter",
        ),
        (
            SecurityHeadersLayer::recommended().remove_header("a b"),
            "not a valid header name",
        ),
        (
            SecurityHeadersLayer::recommended().mode("a b", HeaderMode::Overwrite),
            "not a valid header name",
        ),
        (
            SecurityHeadersLayer::recommended().no_store_paths(["account"]),
            "must start with `/`",
        ),
        (
            SecurityHeadersLayer::recommended().route("docs", SecurityHeadersLayer::recommended()),
            "must start with `/`",
        ),
        (
            SecurityHeadersLayer::recommended().route(
                "/docs",
                SecurityHeadersLayer::recommended()
                    .route("/x", SecurityHeadersLayer::recommended()),
            ),
            "routes of its own",
        ),
        (
            SecurityHeadersLayer::recommended()
                .route("/a", SecurityHeadersLayer::recommended())
                .route("/a", SecurityHeadersLayer::strict()),
            "declared twice",
        ),
        (
            SecurityHeadersLayer::recommended()
                .route("/a", SecurityHeadersLayer::recommended().hsts(Hsts::new(1))),
            "route `/a`: HSTS max-age 1",
        ),
    ] {
        let e = builder.build().unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[cfg(feature = "csp")]
mod with_csp {
    use std::collections::HashSet;

    use super::*;
    use crate::csp::{Csp, CspNonce, Directive, Source};

    #[tokio::test]
    async fn header_nonce_equals_handler_nonce_and_is_unique() {
        let layer = SecurityHeadersLayer::strict().build().unwrap();
        let svc = layer.layer(service_fn(app_headers(&[])));
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let res = svc.clone().oneshot(Request::new(())).await.unwrap();
            let nonce = res.body().clone();
            let csp = res.headers()["content-security-policy"].to_str().unwrap();
            assert_eq!(csp, Csp::strict().render_with_nonce(&nonce));
            assert!(seen.insert(nonce));
        }
    }

    #[tokio::test]
    async fn routes_get_their_own_policy_and_reporting() {
        let docs = Csp::new()
            .default_src([Source::SelfOrigin])
            .script_src([Source::SelfOrigin, Source::host("cdn.jsdelivr.net")])
            .style_src([Source::SelfOrigin, Source::UnsafeInline]);
        let layer = SecurityHeadersLayer::recommended()
            .csp(Csp::strict())
            .csp_report_only(
                Csp::strict()
                    .remove(Directive::UpgradeInsecureRequests)
                    .report_to("csp"),
            )
            .reporting_endpoint("csp", "/csp-reports")
            .route(
                "/docs",
                SecurityHeadersLayer::recommended().csp(docs.clone()),
            )
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(app_headers(&[])));
        let res = svc
            .clone()
            .oneshot(Request::get("/docs/api").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.headers()["content-security-policy"], docs.to_string());
        assert!(
            res.headers()
                .get("content-security-policy-report-only")
                .is_none()
        );
        assert!(res.headers().get("reporting-endpoints").is_none());
        assert_eq!(res.body(), "", "no nonce drawn for a policy without one");

        let res = svc
            .oneshot(Request::get("/").body(()).unwrap())
            .await
            .unwrap();
        let nonce = res.body();
        assert!(
            res.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains(nonce.as_str())
        );
        assert!(
            res.headers()["content-security-policy-report-only"]
                .to_str()
                .unwrap()
                .contains(nonce.as_str())
        );
        assert_eq!(res.headers()["reporting-endpoints"], "csp=\"/csp-reports\"");
        let _: Option<CspNonce> = None;
    }

    #[test]
    fn csp_errors_name_the_route() {
        let e = SecurityHeadersLayer::recommended()
            .route(
                "/x",
                SecurityHeadersLayer::recommended().csp(Csp::new().img_src([Source::Nonce])),
            )
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("route `/x`: CSP: "), "{e}");
        let e = SecurityHeadersLayer::recommended()
            .csp_report_only(Csp::recommended().report_to("nowhere"))
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("not declared"), "{e}");
    }

    #[tokio::test]
    async fn app_csp_is_kept_unless_overwrite() {
        static APP: &[(&str, &str)] = &[("content-security-policy", "default-src 'none'")];
        let keep = SecurityHeadersLayer::recommended().build().unwrap();
        let res = keep
            .layer(service_fn(app_headers(APP)))
            .oneshot(https())
            .await
            .unwrap();
        assert_eq!(
            res.headers()["content-security-policy"],
            "default-src 'none'"
        );
        let over = SecurityHeadersLayer::recommended()
            .mode("content-security-policy", HeaderMode::Overwrite)
            .build()
            .unwrap();
        let res = over
            .layer(service_fn(app_headers(APP)))
            .oneshot(https())
            .await
            .unwrap();
        assert_eq!(
            res.headers()["content-security-policy"],
            Csp::recommended().to_string()
        );
    }
}

#[cfg(all(feature = "csp", feature = "axum"))]
mod axum_extractor {
    use axum::{Router, body::Body, routing::get};

    use super::*;
    use crate::csp::CspNonce;

    #[tokio::test]
    async fn extractor_sees_the_header_nonce() {
        let app = Router::new()
            .route("/", get(|nonce: CspNonce| async move { nonce.to_string() }))
            .route(
                "/opt",
                get(|nonce: Option<CspNonce>| async move { format!("{}", nonce.is_some()) }),
            )
            .layer(SecurityHeadersLayer::strict().build().unwrap());
        let res = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let csp = res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert!(csp.contains(&format!("'nonce-{}'", std::str::from_utf8(&body).unwrap())));
        let res = app
            .oneshot(Request::get("/opt").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            &axum::body::to_bytes(res.into_body(), 64).await.unwrap()[..],
            b"true"
        );

        // Without the layer: 500 JSON for the plain extractor, None for the optional one.
        let bare = Router::new()
            .route("/", get(|nonce: CspNonce| async move { nonce.to_string() }))
            .route(
                "/opt",
                get(|nonce: Option<CspNonce>| async move { format!("{}", nonce.is_some()) }),
            );
        let res = bare
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
        assert_eq!(res.headers()["content-type"], "application/json");
        let res = bare
            .oneshot(Request::get("/opt").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            &axum::body::to_bytes(res.into_body(), 64).await.unwrap()[..],
            b"false"
        );
    }
}

/// Issue 17: only `Server` and `X-Powered-By` were removed; the other fingerprinting
/// headers of the OWASP secure-headers list reached the client.
#[tokio::test]
async fn owasp_fingerprinting_headers_are_removed() {
    const LEAKY: &[(&str, &str)] = &[
        ("x-aspnet-version", "4.0.30319"),
        ("x-aspnetmvc-version", "5.2"),
        ("x-runtime", "0.012"),
        ("x-version", "1.2.3"),
        ("x-generator", "Drupal 10"),
        ("x-drupal-cache", "HIT"),
        ("x-powered-cms", "Bitrix"),
        ("x-backend-server", "app-3.internal"),
        ("x-php-version", "8.3"),
        ("x-app-kept", "yes"),
    ];
    let layer = SecurityHeadersLayer::recommended().build().unwrap();
    let res = layer
        .layer(service_fn(app_headers(LEAKY)))
        .oneshot(https())
        .await
        .unwrap();
    for (name, _) in &LEAKY[..LEAKY.len() - 1] {
        assert!(!res.headers().contains_key(*name), "{name} leaked");
    }
    assert_eq!(res.headers()["x-app-kept"], "yes");
    // keep_header opts one back in.
    let layer = SecurityHeadersLayer::recommended()
        .keep_header("X-Runtime")
        .build()
        .unwrap();
    let res = layer
        .layer(service_fn(app_headers(LEAKY)))
        .oneshot(https())
        .await
        .unwrap();
    assert_eq!(res.headers()["x-runtime"], "0.012");
}

/// Issue 17: responses to signed-in users carried no `Cache-Control`.
#[tokio::test]
async fn credentialed_requests_get_no_store_unless_the_handler_chose() {
    let layer = SecurityHeadersLayer::recommended()
        .session_cookie("sid")
        .build()
        .unwrap();
    let call = |layer: &SecurityHeadersLayer,
                h: &'static [(&'static str, &'static str)],
                creds: Option<(&str, &str)>| {
        let mut req = https();
        if let Some((k, v)) = creds {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        layer.layer(service_fn(app_headers(h))).oneshot(req)
    };
    let cc = |res: &Response<String>| {
        res.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    for creds in [
        ("authorization", "Bearer abc"),
        ("cookie", "theme=dark; sid=s3cr3t"),
        ("cookie", "sid=s3cr3t"),
    ] {
        let res = call(&layer, &[], Some(creds)).await.unwrap();
        assert_eq!(cc(&res).as_deref(), Some("no-store"), "{creds:?}");
        // The handler's own Cache-Control is kept.
        let res = call(
            &layer,
            &[("cache-control", "private, max-age=60")],
            Some(creds),
        )
        .await
        .unwrap();
        assert_eq!(cc(&res).as_deref(), Some("private, max-age=60"));
    }
    // Anonymous, or another cookie (a name merely containing `sid`): untouched.
    for creds in [None, Some(("cookie", "theme=dark; xsid=1; sidx=2"))] {
        let res = call(&layer, &[], creds).await.unwrap();
        assert_eq!(cc(&res), None, "{creds:?}");
    }
    // Off.
    let off = SecurityHeadersLayer::recommended()
        .no_store_credentialed(false)
        .build()
        .unwrap();
    let res = call(&off, &[], Some(("authorization", "Bearer abc")))
        .await
        .unwrap();
    assert_eq!(cc(&res), None);
    assert!(
        SecurityHeadersLayer::recommended()
            .session_cookie("bad name;")
            .build()
            .is_err()
    );
}

#[test]
fn clear_site_data_renders_once_and_rejects_nothing() {
    let v = ClearSiteData::new([
        ClearSiteDataType::Cookies,
        ClearSiteDataType::Cookies,
        ClearSiteDataType::ExecutionContexts,
    ])
    .unwrap();
    assert_eq!(v.header_value(), r#""cookies", "executionContexts""#);
    assert!(ClearSiteData::new([]).is_err());
    let mut h = HeaderMap::new();
    ClearSiteData::all().apply(&mut h);
    assert_eq!(h["clear-site-data"], r#""*""#);
}
