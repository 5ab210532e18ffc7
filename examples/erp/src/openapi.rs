//! OpenAPI: the document at `/api/schema/`, Swagger UI at `/api/docs/`, ReDoc at
//! `/api/redoc/`. Every asset is served by this server: Swagger UI from the
//! `utoipa-swagger-ui` crate (`vendored`), the ReDoc bundle from the `redoc` npm package
//! fetched once by `examples/erp/scripts/fetch-redoc.sh` (or `RAMPART_REDOC_JS`).

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_redoc::{Redoc, Servable};
use utoipa_swagger_ui::SwaggerUi;

use crate::{AppState, api, error::ApiError, health, metrics};

/// The OpenAPI document of the server.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rampart-erp",
        description = "The tower-rampart reference ERP: chart of accounts, double-entry journal, trial balance. \
                       Every error is JSON `{\"error\", \"detail\"}`. Responses under /api/v1/ carry `API-Version: 1`.",
    ),
    paths(
        api::token, api::me,
        api::list_accounts, api::create_account, api::get_account,
        api::list_entries, api::create_entry, api::get_entry, api::reverse_entry,
        api::trial_balance,
        health::health, health::live, health::ready, metrics::render,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerAuth, &LimitedOperations),
    tags(
        (name = "auth", description = "Tokens and the current user"),
        (name = "accounts", description = "Chart of accounts"),
        (name = "journal", description = "Double-entry journal"),
        (name = "reports", description = "Reports"),
        (name = "health", description = "Probes and metrics"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("POST /api/v1/auth/token"))
                    .build(),
            ),
        );
    }
}

/// What every `/api/v1/` operation shares, added to each: the rate limit (the `api`
/// policy, `login` for the token endpoint) may answer 429 with `Retry-After` and the
/// IETF `RateLimit` / `RateLimit-Policy` headers; the tenant layer reads the optional
/// `X-Tenant-ID` header and answers 400 (malformed id), 403 (not the user's tenant) and
/// 404 (unknown tenant); a body above the limit is a 413.
#[derive(Debug)]
struct LimitedOperations;

impl Modify for LimitedOperations {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            ContentBuilder, Ref, ResponseBuilder, header::HeaderBuilder, schema::Type,
        };
        let header = |description: &str, ty: Type| {
            HeaderBuilder::new()
                .schema(utoipa::openapi::ObjectBuilder::new().schema_type(ty))
                .description(Some(description))
                .build()
        };
        let limited = ResponseBuilder::new()
            .description("Rate limit exceeded")
            .header(
                "Retry-After",
                header("Seconds to wait before retrying", Type::Integer),
            )
            .header(
                "RateLimit",
                header("Remaining quota (IETF draft)", Type::String),
            )
            .header(
                "RateLimit-Policy",
                header("The quota (IETF draft)", Type::String),
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let tenant_header = utoipa::openapi::path::ParameterBuilder::new()
            .name(crate::tenant::TENANT_HEADER)
            .parameter_in(utoipa::openapi::path::ParameterIn::Header)
            .required(utoipa::openapi::Required::False)
            .description(Some(
                "The tenant (1-63 lower-case letters, digits and `-`); by default the subdomain of `{tenant}.localhost`, then the user's tenant",
            ))
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new().schema_type(Type::String),
            ))
            .build();
        let shared = [
            ("400", "Malformed request or tenant id"),
            ("403", "Tenant differs from the user's"),
            ("404", "Unknown tenant or resource"),
            ("413", "Body too large"),
        ];
        for (path, item) in &mut openapi.paths.paths {
            if !path.starts_with("/api/v1/") {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .entry("429".to_owned())
                    .or_insert_with(|| limited.clone().into());
                for (status, description) in shared {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
                let params = op.parameters.get_or_insert_with(Vec::new);
                if !params
                    .iter()
                    .any(|p| p.name.eq_ignore_ascii_case(crate::tenant::TENANT_HEADER))
                {
                    params.push(tenant_header.clone());
                }
            }
        }
    }
}

/// Where the ReDoc bundle is looked for when `RAMPART_REDOC_JS` is not set.
pub const REDOC_BUNDLE_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/vendor/redoc.standalone.js"
);

/// Reads the ReDoc bundle from `RAMPART_REDOC_JS` or [`REDOC_BUNDLE_PATH`].
pub fn load_redoc_bundle(env_path: Option<String>) -> Option<Bytes> {
    let path = env_path.unwrap_or_else(|| REDOC_BUNDLE_PATH.to_owned());
    match std::fs::read(&path) {
        Ok(b) => Some(localize_redoc(&b)),
        Err(e) => {
            tracing::warn!(
                path,
                error = %e,
                "ReDoc bundle not found: /api/redoc/ will not render; run examples/erp/scripts/fetch-redoc.sh"
            );
            None
        }
    }
}

/// The one asset the ReDoc bundle loads from a CDN (the "API docs by Redocly" logo).
const REDOC_CDN_LOGO: &str = "https://cdn.redoc.ly/redoc/logo-mini.svg";

/// Points the bundle's CDN logo at `/api/redoc/logo-mini.svg`, served by this server.
pub fn localize_redoc(bundle: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(bundle);
    Bytes::from(text.replace(REDOC_CDN_LOGO, "/api/redoc/logo-mini.svg"))
}

const REDOC_LOGO_SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\" width=\"16\" height=\"16\"><rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#8a2be2\"/></svg>";

/// The ReDoc page: no inline script (a strict `script-src 'self'` CSP allows it). The
/// spec is embedded as a JSON data block, which CSP does not treat as script.
const REDOC_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>rampart-erp API · ReDoc</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
</head>
<body>
  <div id="redoc-container"></div>
  <script type="application/json" id="redoc-spec">$spec</script>
  <script type="application/json" id="redoc-config">$config</script>
  <script src="/api/redoc/redoc.standalone.js"></script>
  <script src="/api/redoc/init.js"></script>
</body>
</html>
"#;

const REDOC_INIT_JS: &str = r"(function () {
  var el = document.getElementById('redoc-container');
  if (typeof Redoc === 'undefined') {
    el.textContent = 'The ReDoc bundle is not installed on this server: run examples/erp/scripts/fetch-redoc.sh (or use Swagger UI at /api/docs/).';
    return;
  }
  var spec = JSON.parse(document.getElementById('redoc-spec').textContent);
  var config = JSON.parse(document.getElementById('redoc-config').textContent);
  Redoc.init(spec, config, el);
})();
";

/// The documentation routes.
pub fn router() -> Router<AppState> {
    let doc = ApiDoc::openapi();
    Router::new()
        .merge(SwaggerUi::new("/api/docs").url("/api/schema/", doc.clone()))
        .merge(Redoc::with_url("/api/redoc/", doc).custom_html(REDOC_HTML))
        .route("/api/redoc/redoc.standalone.js", get(redoc_bundle))
        .route(
            "/api/redoc/init.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    REDOC_INIT_JS,
                )
            }),
        )
        .route(
            "/api/redoc/logo-mini.svg",
            get(|| async { ([(header::CONTENT_TYPE, "image/svg+xml")], REDOC_LOGO_SVG) }),
        )
}

async fn redoc_bundle(State(state): State<AppState>) -> Response {
    match state.redoc_bundle() {
        Some(b) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            b.clone(),
        )
            .into_response(),
        None => ApiError::not_found(
            "The ReDoc bundle is not installed: run examples/erp/scripts/fetch-redoc.sh (npm package `redoc`) or set RAMPART_REDOC_JS.",
        )
        .into_response(),
    }
}
