use std::{
    collections::HashSet,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use proptest::prelude::*;
use tower::{ServiceExt as _, service_fn};
use tower_layer::Layer as _;

use super::*;

fn err(csp: &Csp) -> String {
    csp.validate().unwrap_err().to_string()
}

fn base() -> Csp {
    Csp::new().default_src([Source::SelfOrigin])
}

#[test]
fn rejects_every_invalid_input_with_a_helpful_message() {
    let cases: Vec<(Csp, &str)> = vec![
        (base().img_src([Source::host("a.example\r\n")]), "CR"),
        (base().img_src([Source::host("a.example\n")]), "LF"),
        (base().img_src([Source::host("a.example;")]), "`;`"),
        (base().img_src([Source::host("a.example,b")]), "`,`"),
        (base().report_uri("/r;x"), "`;`"),
        (
            base().img_src([Source::host("exa_mple.com")]),
            "not a valid host",
        ),
        (base().img_src([Source::host("a.example:8o")]), "port"),
        (
            base().img_src([Source::scheme("1https")]),
            "not a valid scheme",
        ),
        (base().img_src([Source::host("self")]), "unquoted keyword"),
        (
            base().script_src([Source::host("unsafe-inline")]),
            "unquoted keyword",
        ),
        (
            base().script_src([Source::host("nonce-abc")]),
            "unquoted keyword",
        ),
        (base().img_src([Source::Nonce]), "cannot use a nonce"),
        (
            base().script_src_attr([Source::Nonce]),
            "cannot use a nonce",
        ),
        (
            base().connect_src([Source::sha256_of("x")]),
            "cannot use a hash",
        ),
        (base().script_src([Source::sha256("abc")]), "32-byte"),
        (
            base().script_src([Source::StrictDynamic]),
            "'strict-dynamic' without a nonce or hash",
        ),
        (
            base().script_src([Source::StrictDynamic, Source::SelfOrigin]),
            "without a nonce",
        ),
        (
            base().style_src([Source::StrictDynamic, Source::Nonce]),
            "has no effect in `style-src`",
        ),
        (
            base().img_src([Source::UnsafeInline]),
            "has no effect in `img-src`",
        ),
        (
            base().img_src([Source::InlineSpeculationRules]),
            "has no effect in `img-src`",
        ),
        (
            base().img_src([Source::None, Source::SelfOrigin]),
            "combines 'none'",
        ),
        (base().img_src([]), "has no sources"),
        (
            Csp::new().script_src([Source::SelfOrigin]),
            "no default-src",
        ),
        (Csp::new(), "no directives"),
        (base().sandbox(["allow-everything"]), "unknown sandbox flag"),
        (base().trusted_types(["bad!name"]), "trusted-types token"),
        (base().trusted_types(["'none'", "a"]), "combines 'none'"),
        (base().report_to("bad!name"), "report-to takes one endpoint"),
        (base().report_uri("'/x'"), "not a URL"),
        (
            base().sources(Directive::Sandbox, [Source::SelfOrigin]),
            "does not take sources",
        ),
        (
            base()
                .upgrade_insecure_requests()
                .sources(Directive::UpgradeInsecureRequests, [Source::SelfOrigin]),
            "does not take sources",
        ),
    ];
    for (csp, needle) in cases {
        assert!(
            csp.validate().is_err(),
            "{csp:?} should be rejected ({needle})"
        );
        let msg = err(&csp);
        assert!(
            msg.contains(needle),
            "expected `{needle}` in `{msg}` for {csp:?}"
        );
    }
    let e = Csp::parse("default-src 'self'; require-trusted-types-for 'scriptx'").unwrap_err();
    assert!(e.to_string().contains("exactly 'script'"));
    // Allowed explicitly.
    assert!(
        Csp::new()
            .script_src([Source::SelfOrigin])
            .allow_missing_default_src()
            .validate()
            .is_ok()
    );
}

#[test]
fn everything_valid_is_accepted_and_rendered_in_order() {
    let csp = Csp::new()
        .report_uri("/csp-reports")
        .trusted_types(["default", "dompurify", "'allow-duplicates'"])
        .require_trusted_types_for_script()
        .sandbox(["allow-scripts", "allow-forms"])
        .upgrade_insecure_requests()
        .worker_src([Source::SelfOrigin, Source::scheme("blob")])
        .style_src_elem([Source::Nonce])
        .style_src([Source::SelfOrigin])
        .script_src_attr([Source::None])
        .style_src_attr([Source::UnsafeHashes, Source::sha256_of("color: red")])
        .script_src_elem([Source::Nonce])
        .script_src([
            Source::Nonce,
            Source::StrictDynamic,
            Source::WasmUnsafeEval,
            Source::UnsafeEval,
            Source::ReportSample,
            Source::InlineSpeculationRules,
            Source::sha384_of("a()"),
            Source::sha512_of("b()"),
        ])
        .object_src([Source::None])
        .media_src([Source::Wildcard])
        .manifest_src([Source::SelfOrigin])
        .img_src([Source::host("https://*.cdn.example:443/img/")])
        .frame_src([Source::host("youtube.com")])
        .frame_ancestors([Source::None])
        .form_action([Source::SelfOrigin])
        .font_src([Source::scheme("data:")])
        .connect_src([Source::host("wss://api.example")])
        .child_src([Source::SelfOrigin])
        .base_uri([Source::None])
        .default_src([Source::SelfOrigin])
        .report_to("csp");
    csp.validate().unwrap();
    let text = csp.to_string();
    let names: Vec<&str> = text
        .split("; ")
        .map(|d| d.split(' ').next().unwrap())
        .collect();
    let expected: Vec<&str> = Directive::all()
        .iter()
        .map(|d| d.name())
        .filter(|n| *n != "block-all-mixed-content")
        .collect();
    assert_eq!(names, expected);
    assert!(csp.uses_nonce());
    assert_eq!(csp.report_to_endpoint(), Some("csp"));
    assert_eq!(
        csp.ignored_in_report_only(),
        vec![Directive::Sandbox, Directive::UpgradeInsecureRequests]
    );
    assert_eq!(
        csp.sources_of(Directive::ObjectSrc),
        Some(&[Source::None][..])
    );
    assert_eq!(csp.tokens_of(Directive::Sandbox).unwrap().len(), 2);
    assert_eq!(Csp::parse(&text).unwrap(), csp);
    assert_eq!(text.parse::<Csp>().unwrap().to_string(), text);
}

#[test]
fn parse_round_trips_real_world_policies() {
    for policy in [
        "default-src 'self'; object-src 'none'; script-src 'self' https://cdn.example.com",
        "default-src 'none'; frame-ancestors 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; upgrade-insecure-requests",
        "base-uri 'none'; object-src 'none'; script-src 'nonce-{nonce}' 'strict-dynamic' https: 'unsafe-inline'; require-trusted-types-for 'script'",
        "default-src 'self'; sandbox; report-uri /a /b; report-to csp-endpoint",
        "default-src 'self'; block-all-mixed-content; trusted-types *",
    ] {
        let csp = Csp::parse(policy).unwrap();
        assert_eq!(csp.to_string(), policy);
    }
    // Normalisation: case, spacing, duplicates, order, a browser nonce.
    let csp = Csp::parse(
        "  SCRIPT-SRC 'SELF'  'self' 'nonce-rAnd0m+/==' ;; default-src 'self' ; script-src evil.example ",
    )
    .unwrap();
    assert_eq!(
        csp.to_string(),
        "default-src 'self'; script-src 'self' 'nonce-{nonce}'"
    );
    assert_eq!(
        csp.render_with_nonce("N"),
        "default-src 'self'; script-src 'self' 'nonce-N'"
    );
}

#[test]
fn parse_rejects_bad_strings() {
    for (policy, needle) in [
        ("default-src 'self', script-src 'none'", "several policies"),
        (
            "default-src 'self'; scripts-src 'none'",
            "unknown CSP directive `scripts-src`",
        ),
        ("default-src self", "unquoted keyword"),
        (
            "default-src 'self'; upgrade-insecure-requests now",
            "takes no value",
        ),
        ("script-src 'strict-dynamic'", "without a nonce"),
        (
            "default-src 'self'; img-src 'nonce-abc'",
            "cannot use a nonce",
        ),
    ] {
        let e = Csp::parse(policy).unwrap_err().to_string();
        assert!(e.contains(needle), "{policy}: {e}");
    }
    let e: Result<Csp, _> = serde_json::from_str("\"default-src nope nope;;\"");
    assert!(e.is_ok());
    let e: Result<Csp, _> = serde_json::from_str("\"default-src 'bad'\"");
    assert!(e.unwrap_err().to_string().contains("not a known keyword"));
}

fn arb_source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::SelfOrigin),
        Just(Source::UnsafeInline),
        Just(Source::Wildcard),
        Just(Source::ReportSample),
        "[a-z][a-z0-9+.-]{0,8}".prop_map(Source::scheme),
        "(https?://)?(\\*\\.)?[a-z0-9-]{1,10}(\\.[a-z]{2,5}){0,2}(:[0-9]{1,5})?(/[a-z0-9_]{0,6})?"
            .prop_map(Source::host),
        any::<Vec<u8>>().prop_map(Source::sha256_of),
    ]
    .prop_filter("not a keyword host", |s| s.check().is_ok())
}

fn arb_csp() -> impl Strategy<Value = Csp> {
    (
        proptest::collection::vec(arb_source(), 1..4),
        proptest::collection::vec(arb_source(), 0..4),
        proptest::collection::vec(arb_source(), 0..4),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of("[a-z][a-z0-9-]{0,10}"),
    )
        .prop_map(|(default, script, img, nonce, uir, report_to)| {
            let mut csp = Csp::new().default_src(default);
            if !script.is_empty() || nonce {
                let mut s = script;
                if nonce {
                    s.push(Source::Nonce);
                    s.push(Source::StrictDynamic);
                }
                csp = csp.script_src(s);
            }
            let img: Vec<Source> = img
                .into_iter()
                .filter(|s| {
                    !matches!(
                        s,
                        Source::Hash(..) | Source::UnsafeInline | Source::ReportSample
                    )
                })
                .collect();
            if !img.is_empty() {
                csp = csp.img_src(img);
            }
            if uir {
                csp = csp.upgrade_insecure_requests();
            }
            if let Some(r) = report_to {
                csp = csp.report_to(r);
            }
            csp
        })
}

proptest! {
    #[test]
    fn renderer_round_trips_through_parse(csp in arb_csp()) {
        prop_assert!(csp.validate().is_ok(), "{}", csp.validate().unwrap_err());
        let text = csp.to_string();
        let parsed = Csp::parse(&text).unwrap();
        prop_assert_eq!(&parsed, &csp);
        prop_assert_eq!(parsed.to_string(), text.clone());
        // Header-safe, and no directive twice.
        let nonce = CspNonce::generate();
        let rendered = csp.render_with_nonce(nonce.as_str());
        prop_assert!(http::HeaderValue::from_str(&rendered).is_ok());
        let names: Vec<&str> = rendered.split("; ").map(|d| d.split(' ').next().unwrap()).collect();
        let unique: HashSet<&&str> = names.iter().collect();
        prop_assert_eq!(unique.len(), names.len());
        prop_assert_eq!(rendered.matches(nonce.as_str()).count(), usize::from(csp.uses_nonce()));
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,200}") {
        let _ = Csp::parse(&s);
    }

    #[test]
    fn report_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_reports("application/csp-report", &body);
        let _ = parse_reports("application/reports+json", &body);
    }
}

async fn echo_nonce(req: Request<()>) -> Result<Response<String>, Infallible> {
    let nonce = req
        .extensions()
        .get::<CspNonce>()
        .map(ToString::to_string)
        .unwrap_or_default();
    Ok(Response::new(nonce))
}

#[tokio::test]
async fn ten_thousand_responses_carry_distinct_nonces_equal_to_the_handlers() {
    let layer = CspLayer::new(Csp::strict()).unwrap();
    let svc = layer.layer(service_fn(echo_nonce));
    let mut seen = HashSet::new();
    for _ in 0..10_000 {
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        let header = res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        let nonce = res.body().clone();
        assert_eq!(nonce.len(), 24);
        let expected = Csp::strict().render_with_nonce(&nonce);
        assert_eq!(header, expected);
        assert!(seen.insert(nonce), "nonce repeated");
    }
    assert_eq!(seen.len(), 10_000);
}

#[tokio::test]
async fn enforce_and_report_only_together_with_reporting_endpoints() {
    let layer = CspLayer::builder()
        .enforce(Csp::recommended())
        .report_only(
            Csp::strict()
                .remove(Directive::UpgradeInsecureRequests)
                .report_to("csp")
                .report_uri("/csp-reports"),
        )
        .reporting_endpoint("csp", "https://example.com/csp-reports")
        .reporting_endpoint("default", "/reports")
        .build()
        .unwrap();
    assert!(format!("{layer:?}").contains("needs_nonce: true"));
    let svc = layer.layer(service_fn(echo_nonce));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let h = res.headers();
    assert_eq!(h["content-security-policy"], Csp::recommended().to_string());
    let ro = h["content-security-policy-report-only"].to_str().unwrap();
    assert!(ro.contains(&format!("'nonce-{}'", res.body())));
    assert!(ro.ends_with("report-uri /csp-reports; report-to csp"));
    assert_eq!(
        h["reporting-endpoints"],
        "csp=\"https://example.com/csp-reports\", default=\"/reports\""
    );
}

#[tokio::test]
async fn existing_policy_is_kept_unless_overwrite() {
    let inner = service_fn(|_req: Request<()>| async {
        let mut res = Response::new(String::new());
        res.headers_mut().insert(
            "content-security-policy",
            "default-src 'none'".parse().unwrap(),
        );
        Ok::<_, Infallible>(res)
    });
    let keep = CspLayer::new(Csp::recommended()).unwrap().layer(inner);
    let res = keep.oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        res.headers()["content-security-policy"],
        "default-src 'none'"
    );
    let over = CspLayer::builder()
        .enforce(Csp::recommended())
        .overwrite(true)
        .build()
        .unwrap()
        .layer(inner);
    let res = over.oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        res.headers()["content-security-policy"],
        Csp::recommended().to_string()
    );
    // A policy without nonce draws none.
    let plain = CspLayer::new(Csp::recommended())
        .unwrap()
        .layer(service_fn(echo_nonce));
    assert_eq!(plain.oneshot(Request::new(())).await.unwrap().body(), "");
}

#[test]
fn layer_builder_rejects_bad_configuration() {
    for (builder, needle) in [
        (CspLayer::builder(), "has no policy"),
        (
            CspLayer::builder().enforce(base().report_to("csp")),
            "not declared",
        ),
        (
            CspLayer::builder().report_only(Csp::new()),
            "report-only CSP: the CSP has no directives",
        ),
        (
            CspLayer::builder()
                .enforce(base())
                .reporting_endpoint("Csp", "/r"),
            "lowercase",
        ),
        (
            CspLayer::builder()
                .enforce(base())
                .reporting_endpoint("csp", "http://x/r"),
            "https://",
        ),
        (
            CspLayer::builder()
                .enforce(base())
                .reporting_endpoint("csp", "/r x"),
            "without spaces",
        ),
        (
            CspLayer::builder()
                .enforce(base())
                .reporting_endpoint("a", "/r")
                .reporting_endpoint("a", "/s"),
            "declared twice",
        ),
    ] {
        let e = builder.build().unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    // Directives browsers ignore in report-only are accepted (with a tracing warning).
    assert!(
        CspLayer::builder()
            .report_only(
                base()
                    .sandbox(["allow-scripts"])
                    .upgrade_insecure_requests()
            )
            .build()
            .is_ok()
    );
}

// ---- report receiver ----

const CSP_REPORT: &str = r#"{"csp-report":{"document-uri":"https://example.com/page","referrer":"","violated-directive":"script-src-elem","effective-directive":"script-src-elem","original-policy":"default-src 'self'","disposition":"enforce","blocked-uri":"inline","line-number":12,"source-file":"https://example.com/page","status-code":200,"script-sample":"alert(1)"}}"#;

const REPORTS_JSON: &str = r#"[{"age":10,"type":"csp-violation","url":"https://example.com/","user_agent":"UA","body":{"blockedURL":"https://evil.example/x.js","documentURL":"https://example.com/","effectiveDirective":"script-src-elem","disposition":"report","lineNumber":3,"sourceFile":"https://example.com/app.js","sample":"","statusCode":200}},{"type":"deprecation","url":"https://example.com/","body":{"id":"x"}}]"#;

fn post(ct: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("/csp-reports")
        .header("content-type", ct)
        .body(Full::new(body.into()))
        .unwrap()
}

async fn answer(
    receiver: ReportReceiver,
    req: Request<Full<Bytes>>,
) -> (StatusCode, serde_json::Value, Option<ReportErrorKind>) {
    let res = receiver.oneshot(req).await.unwrap();
    let status = res.status();
    let kind = res.extensions().get::<ReportError>().map(ReportError::kind);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, json, kind)
}

#[tokio::test]
async fn receiver_accepts_both_formats() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let receiver =
        ReportReceiver::new().on_violation(move |v| sink.lock().unwrap().push(v.clone()));
    assert!(format!("{receiver:?}").contains("hook: true"));
    let (s, body, _) = answer(receiver.clone(), post("application/csp-report", CSP_REPORT)).await;
    assert_eq!((s, body), (StatusCode::NO_CONTENT, serde_json::Value::Null));
    let (s, _, _) = answer(
        receiver.clone(),
        post("application/reports+json; charset=utf-8", REPORTS_JSON),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = answer(receiver, post("application/json", CSP_REPORT)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "the deprecation report is skipped");
    assert_eq!(seen[0].format, ReportFormat::CspReport);
    assert_eq!(seen[0].blocked_uri.as_deref(), Some("inline"));
    assert_eq!(seen[0].line_number, Some(12));
    assert_eq!(seen[0].sample.as_deref(), Some("alert(1)"));
    assert_eq!(seen[1].format, ReportFormat::ReportsJson);
    assert_eq!(
        seen[1].blocked_uri.as_deref(),
        Some("https://evil.example/x.js")
    );
    assert_eq!(seen[1].disposition.as_deref(), Some("report"));
    assert_eq!(
        seen[1].source_file.as_deref(),
        Some("https://example.com/app.js")
    );
    assert_eq!(seen[2].format, ReportFormat::CspReport);
    assert_eq!(ReportFormat::ReportsJson.as_str(), "reports+json");
}

#[tokio::test]
async fn receiver_rejects_garbage_oversize_and_wrong_types() {
    let r = ReportReceiver::new();
    for (req, status, kind) in [
        (
            post("application/csp-report", "not json"),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post("application/csp-report", "{}"),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post(
                "application/csp-report",
                r#"{"csp-report":{"document-uri":"x"}}"#,
            ),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post(
                "application/csp-report",
                r#"{"csp-report":{"violated-directive":"x"}}"#,
            ),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post("application/reports+json", "{}"),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post("application/reports+json", "[]"),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post("application/reports+json", "[1]"),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post("application/reports+json", r#"[{"body":{}}]"#),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post("application/reports+json", r#"[{"type":"csp-violation"}]"#),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post(
                "application/reports+json",
                r#"[{"type":"csp-violation","body":{}}]"#,
            ),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post(
                "application/reports+json",
                r#"[{"type":"csp-violation","url":"u","body":{}}]"#,
            ),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post(
                "application/reports+json",
                format!("[{}]", vec![r#"{"type":"x","body":{}}"#; 101].join(",")),
            ),
            400,
            ReportErrorKind::Malformed,
        ),
        (
            post("text/plain", CSP_REPORT),
            415,
            ReportErrorKind::UnsupportedMediaType,
        ),
        (
            post("", CSP_REPORT),
            415,
            ReportErrorKind::UnsupportedMediaType,
        ),
        (
            post("application/csp-report", vec![b' '; 64 * 1024 + 1]),
            413,
            ReportErrorKind::PayloadTooLarge,
        ),
        (
            Request::get("/csp-reports")
                .body(Full::new(Bytes::new()))
                .unwrap(),
            405,
            ReportErrorKind::MethodNotAllowed,
        ),
    ] {
        let (s, json, k) = answer(r.clone(), req).await;
        assert_eq!(s.as_u16(), status, "{json}");
        assert_eq!(k, Some(kind));
        assert!(
            json["error"].is_string() && json["detail"].is_string(),
            "{json}"
        );
    }
}

#[tokio::test]
async fn receiver_caps_streamed_bodies_without_content_length() {
    let r = ReportReceiver::new().max_body_bytes(100);
    let chunks: Vec<Result<_, Infallible>> = (0..3)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'x'; 60]))))
        .collect();
    let req = Request::post("/r")
        .header("content-type", "application/csp-report")
        .body(VecBody(chunks.into_iter()))
        .unwrap();
    let res = r.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 413);
    // A body that fails while streaming is a 400.
    let failing = vec![Err::<http_body::Frame<Bytes>, _>(std::io::Error::other(
        "reset",
    ))];
    let req = Request::post("/r")
        .header("content-type", "application/csp-report")
        .body(VecBody(failing.into_iter()))
        .unwrap();
    let res = r.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 400);
    let e = parse_reports("text/html", b"").unwrap_err();
    assert!(e.to_string().starts_with("Unsupported media type"));
    assert!(e.detail().contains("application/csp-report"));
}

/// A body yielding frames from a vector, without a content length.
struct VecBody<E>(std::vec::IntoIter<Result<http_body::Frame<Bytes>, E>>);

impl<E> http_body::Body for VecBody<E> {
    type Data = Bytes;
    type Error = E;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, E>>> {
        std::task::Poll::Ready(self.0.next())
    }
}

impl<E> Unpin for VecBody<E> {}

#[test]
fn long_fields_are_truncated_on_a_char_boundary() {
    let long = "é".repeat(3000);
    let body =
        format!(r#"{{"csp-report":{{"document-uri":"{long}","violated-directive":"img-src"}}}}"#);
    let v = parse_reports("application/csp-report", body.as_bytes()).unwrap();
    assert!(v[0].document_uri.len() <= 2048);
    assert!(v[0].document_uri.chars().all(|c| c == 'é'));
}

#[test]
fn nonce_debug_and_display() {
    let n = CspNonce::generate();
    assert_eq!(format!("{n:?}"), format!("CspNonce({:?})", n.as_str()));
    assert_eq!(n.to_string(), n.as_str());
}

/// Counts WARN events (a minimal subscriber; no extra dependency).
#[derive(Default)]
struct WarnCounter(std::sync::atomic::AtomicUsize, Mutex<Vec<String>>);

impl tracing::Subscriber for WarnCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            struct V<'a>(&'a mut Vec<String>);
            impl tracing::field::Visit for V<'_> {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push(format!("{}={v:?}", f.name()));
                }
            }
            event.record(&mut V(&mut self.1.lock().unwrap()));
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn report_only_warns_about_ignored_directives() {
    let counter = Arc::new(WarnCounter::default());
    tracing::subscriber::with_default(counter.clone(), || {
        let _layer = CspLayer::builder()
            .enforce(
                base()
                    .sandbox(["allow-scripts"])
                    .upgrade_insecure_requests(),
            )
            .build()
            .unwrap();
    });
    assert_eq!(
        counter.0.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "enforced: no warning"
    );
    tracing::subscriber::with_default(counter.clone(), || {
        let _layer = CspLayer::builder()
            .report_only(
                base()
                    .sandbox(["allow-scripts"])
                    .upgrade_insecure_requests(),
            )
            .build()
            .unwrap();
    });
    assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    let fields = counter.1.lock().unwrap().join(" ");
    assert!(fields.contains("directive=\"sandbox\""), "{fields}");
    assert!(
        fields.contains("directive=\"upgrade-insecure-requests\""),
        "{fields}"
    );
}

#[tokio::test]
async fn receiver_emits_a_warning_per_violation() {
    let counter = Arc::new(WarnCounter::default());
    let _guard = tracing::subscriber::set_default(counter.clone());
    tracing::callsite::rebuild_interest_cache();
    let (s, _, _) = answer(
        ReportReceiver::new(),
        post("application/reports+json", REPORTS_JSON),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    let fields = counter.1.lock().unwrap().join(" ");
    assert!(
        fields.contains("effective_directive=script-src-elem"),
        "{fields}"
    );
}

#[test]
fn receiver_counts_accepted_and_rejected_reports() {
    let recorder = crate::test_util::TestRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        let r = ReportReceiver::new();
        let v = parse_reports("application/csp-report", CSP_REPORT.as_bytes()).unwrap();
        assert_eq!(r.accept(&v).status(), 204);
        let mut odd = v[0].clone();
        odd.effective_directive = "made-up-directive".into();
        let _ = r.accept(&[odd]);
        let e = parse_reports("text/plain", b"").unwrap_err();
        assert_eq!(r.reject(e).status(), 415);
    });
    assert_eq!(
        recorder.counter_lines(),
        vec![
            "rampart_csp_reports_total{format=csp-report,directive=script-src-elem} +1".to_owned(),
            "rampart_csp_reports_total{format=csp-report,directive=other} +1".to_owned(),
            "rampart_csp_reports_rejected_total{reason=unsupported-media-type} +1".to_owned(),
        ]
    );
}

#[tokio::test]
async fn rejection_strategy_is_swappable_and_keeps_the_typed_error() {
    let r = ReportReceiver::new().rejection(|err: &ReportError| {
        let mut res = Response::new(crate::body::ResponseBody::full(format!(
            "nope: {}",
            err.kind().status()
        )));
        *res.status_mut() = StatusCode::IM_A_TEAPOT;
        res
    });
    let res = r.oneshot(post("text/plain", "x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(
        res.extensions().get::<ReportError>().map(ReportError::kind),
        Some(ReportErrorKind::UnsupportedMediaType)
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"nope: 415 Unsupported Media Type");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn control_characters_in_a_report_yield_one_escaped_log_line() {
    use tracing_subscriber::prelude::*;
    let buf = LogBuffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone()),
    );
    let _g = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let forged =
        "https://example.com/\n2026-01-01T00:00:00Z  INFO admin logged in\u{1b}[2J\u{2028}x";
    let body = serde_json::json!({"csp-report": {
        "document-uri": forged,
        "effective-directive": "img-src\r\nFAKE",
        "violated-directive": "img-src",
        "blocked-uri": "inline",
    }})
    .to_string();
    let (s, _, _) = answer(ReportReceiver::new(), post("application/csp-report", body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.ends_with('\n'));
    for c in ['\r', '\u{1b}', '\u{2028}'] {
        assert!(!out.contains(c), "{c:?} reached the log: {out}");
    }
    assert!(
        out.contains("admin logged in"),
        "the text itself is kept: {out}"
    );
}
