//! HTTP: routes, the ingest-token extractor, body decoding.

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use protocol::Envelope;
use serde_json::json;

pub use crate::auth::{bearer, IngestAuth};
use crate::{error::Error, ingest, stats, AppState};

/// Every route of the backend, on `state`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/ingest",
            post(ingest_batch).route_layer(middleware::from_fn_with_state(
                state.clone(),
                count_ingest_requests,
            )),
        )
        .route("/v1/ingest/reports", post(ingest_reports))
        .route("/v1/stats/summary", get(stats::summary))
        .route("/v1/stats/delivery", get(stats::delivery))
        .route("/v1/stats/series", get(stats::series))
        .route("/v1/stats/stream", get(stats::stream))
        .route("/v1/stats/tail", get(stats::tail))
        .route("/v1/export", get(crate::export::export))
        .route(
            "/dashboard",
            get(|| async { asset("text/html; charset=utf-8", DASHBOARD_HTML) }),
        )
        .route(
            "/dashboard/",
            get(|| async { asset("text/html; charset=utf-8", DASHBOARD_HTML) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(crate::public::fallback)
        .method_not_allowed_fallback(|| async {
            json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            every_response,
        ))
        .with_state(state)
}

const DASHBOARD_HTML: &str = include_str!("../dashboard/index.html");
const DASHBOARD_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/dashboard.js"));
const DASHBOARD_CSS: &str = include_str!(concat!(env!("OUT_DIR"), "/dashboard.css"));

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// The in-flight gauge, and the one place `Retry-After` is set: on every
/// 503, and on a 207 (some environments must be sent again), from
/// `SLUICE_RETRY_AFTER_SECS` — unless the public API's door set its own
/// (`intake::Error::headers`, the same at the edge).
async fn every_response(State(state): State<AppState>, request: Request, next: Next) -> Response {
    state.metrics.in_flight.inc();
    let mut response = next.run(request).await;
    state.metrics.in_flight.dec();
    let status = response.status();
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::MULTI_STATUS {
        response
            .headers_mut()
            .entry(header::RETRY_AFTER)
            .or_insert_with(|| HeaderValue::from(state.config.retry_after_secs));
    }
    response
}

/// `sluice_ingest_requests_total{status}`: every answer of `/v1/ingest`,
/// refusals by the token check included.
async fn count_ingest_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

/// Ready while the process serves: a catalog outage does not take a backend
/// out of its load balancer (ingest goes on with the last snapshot), it
/// shows as `"catalog": "stale"` with the snapshot's age.
async fn readyz(State(state): State<AppState>) -> Response {
    let snapshot = state.catalog.snapshot();
    let catalog = if state.catalog.is_fresh(&snapshot) {
        "fresh"
    } else {
        "stale"
    };
    Json(json!({
        "status": "ready",
        "catalog": catalog,
        "catalog_age_seconds": snapshot.age().as_secs_f64(),
        "catalog_max_age_seconds": state.catalog.max_age().as_secs_f64(),
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .catalog_snapshot_age
        .set(state.catalog.snapshot().age().as_secs_f64());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /openapi.json`: the description of every route, with this
/// process's limits (`crate::openapi`).
async fn openapi(State(state): State<AppState>) -> Response {
    match crate::openapi::backend(&state.config).to_json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => Error::Internal(format!("openapi: {e}")).into_response(),
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Error> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("<invalid>"))
        .unwrap_or("");
    let mime = value.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(Error::UnsupportedContentType(value.to_string()))
    }
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, Error> {
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(false),
        Some(v) => match v.to_str().map(|s| s.trim().to_ascii_lowercase()) {
            Ok(s) if s == "gzip" || s == "x-gzip" => Ok(true),
            Ok(s) if s.is_empty() || s == "identity" => Ok(false),
            Ok(s) => Err(Error::UnsupportedEncoding(s)),
            Err(_) => Err(Error::UnsupportedEncoding("<invalid>".into())),
        },
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            Error::BodyTooLarge(limit)
        } else {
            Error::BadBody(e.to_string())
        }
    })
}

/// Inflate with a hard cap (`intake::body::gunzip`), so a small gzip bomb
/// cannot allocate past `limit`.
pub fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    intake::body::gunzip(compressed, limit).map_err(|e| match e {
        intake::Error::BodyTooLarge(max) => Error::BodyTooLarge(max),
        other => Error::BadGzip(other.to_string()),
    })
}

/// Largest plain body `/v1/ingest` decodes on the async worker that
/// serves it (~1 µs of CPU per envelope: a 500-envelope batch of ~150 KB
/// takes ~0.5 ms); larger or gzipped bodies go to the blocking pool.
const INLINE_DECODE_BYTES: usize = 256 * 1024;

/// A body that is not JSON is malformed; JSON of the wrong shape, invalid.
fn shape_error(e: serde_json::Error) -> Error {
    match e.classify() {
        serde_json::error::Category::Data => Error::InvalidBatch(e.to_string()),
        _ => Error::MalformedJson(e.to_string()),
    }
}

/// Decode and validate a batch: all-or-nothing, with every invalid envelope listed.
/// Envelopes are objects (`protocol::object`), never the sequence form.
pub fn decode_batch(bytes: &[u8], max_events: usize) -> Result<Vec<Envelope>, Error> {
    // One UTF-8 check of the whole body: `from_slice` checks every string on its own.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Error::MalformedJson(format!("the body is not UTF-8: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let envelopes: Vec<Envelope> = protocol::object::vec(&mut de)
        .and_then(|envelopes| de.end().map(|()| envelopes))
        .map_err(shape_error)?;
    if envelopes.is_empty() {
        return Err(Error::EmptyBatch);
    }
    if envelopes.len() > max_events {
        return Err(Error::TooManyEnvelopes {
            got: envelopes.len(),
            max: max_events,
        });
    }
    let invalid: Vec<_> = envelopes
        .iter()
        .enumerate()
        .filter_map(|(index, e)| {
            e.validate()
                .err()
                .map(|reason| json!({"index": index, "id": e.id, "reason": reason.to_string()}))
        })
        .collect();
    if !invalid.is_empty() {
        return Err(Error::InvalidEnvelopes(invalid));
    }
    Ok(envelopes)
}

/// `POST /v1/ingest`: 200 when everything landed; 207 when some
/// environments landed and `retry` lists the ids that did not; 503 with
/// `Retry-After` when nothing landed.
async fn ingest_batch(
    State(state): State<AppState>,
    _auth: IngestAuth,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        check_content_type(&headers)?;
        let gzip = is_gzip(&headers)?;
        let limit = state.config.max_body_bytes;
        let max_events = state.config.max_batch_events;
        let raw = read_body(body, limit).await?;
        let mut envelopes = if !gzip && raw.len() <= INLINE_DECODE_BYTES {
            // A sub-batch of the edge's size: decoded where it is used, so
            // its allocations are freed by the thread that made them.
            decode_batch(&raw, max_events)?
        } else {
            // Inflating and parsing megabytes is CPU work: keep it off the async workers.
            tokio::task::spawn_blocking(move || {
                if gzip {
                    decode_batch(&gunzip(&raw, limit)?, max_events)
                } else {
                    decode_batch(&raw, max_events)
                }
            })
            .await
            .map_err(|e| Error::Internal(format!("decoder task failed: {e}")))??
        };
        let snapshot = ingest::route(&state, &envelopes).await?;
        Ok::<_, Error>(ingest::land(&state, &snapshot, &mut envelopes).await)
    }
    .await;

    match result {
        Ok(outcome) => {
            let status = if outcome.retry.is_empty() {
                StatusCode::OK
            } else if outcome.environments.is_empty() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::MULTI_STATUS
            };
            (status, Json(outcome)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// `POST /v1/ingest/reports`: the doors' reports and the dead letters
/// (`protocol::Reports`), recorded in the delivery ledger. 200 with what was
/// recorded; 422 for a body no retry can fix; 503 when a shard did not
/// take it (retry: it is idempotent).
async fn ingest_reports(
    State(state): State<AppState>,
    _auth: IngestAuth,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        check_content_type(&headers)?;
        let raw = read_body(body, state.config.max_body_bytes).await?;
        let protocol::object::Object(reports) =
            serde_json::from_slice::<protocol::object::Object<protocol::Reports>>(&raw)
                .map_err(shape_error)?;
        ingest::report(&state, &reports).await
    }
    .await;
    match result {
        Ok(done) => Json(done).into_response(),
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_bearer_token_comes_from_the_authorization_header() {
        assert_eq!(bearer(&with_auth("bearer abc")), Some("abc"));
        assert_eq!(bearer(&with_auth("Basic abc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
        // Bytes past ASCII (U+00A0 as UTF-8) are not text to the header API.
        let mut odd = HeaderMap::new();
        let value = HeaderValue::from_bytes("Bearer abc\u{a0}".as_bytes()).unwrap();
        odd.insert(header::AUTHORIZATION, value);
        assert_eq!(bearer(&odd), None);
    }

    fn batch(n: usize) -> Vec<u8> {
        let envelopes: Vec<_> = (0..n)
            .map(|i| json!({"id": format!("id-{i}"), "env_id": 1, "name": "x", "timestamp": 0, "received_at": 0}))
            .collect();
        serde_json::to_vec(&envelopes).expect("json")
    }

    #[test]
    fn decode_batch_takes_up_to_the_limit() {
        assert_eq!(decode_batch(&batch(3), 3).map(|b| b.len()).ok(), Some(3));
        assert!(matches!(
            decode_batch(&batch(4), 3),
            Err(Error::TooManyEnvelopes { got: 4, max: 3 })
        ));
        assert!(matches!(decode_batch(b"[]", 3), Err(Error::EmptyBatch)));
    }

    #[test]
    fn decode_batch_tells_syntax_from_shape() {
        assert!(matches!(
            decode_batch(b"[{", 3),
            Err(Error::MalformedJson(_))
        ));
        assert!(matches!(
            decode_batch(b"\xff", 3),
            Err(Error::MalformedJson(_))
        ));
        assert!(matches!(
            decode_batch(b"{}", 3),
            Err(Error::InvalidBatch(_))
        ));
        assert!(matches!(
            decode_batch(
                br#"[{"id": 1, "env_id": 1, "name": "x", "timestamp": 0, "received_at": 0}]"#,
                3
            ),
            Err(Error::InvalidBatch(_))
        ));
    }

    #[test]
    fn decode_batch_refuses_envelopes_in_the_sequence_form() {
        let sequence = br#"[["a", 1, "ok", 0, 0]]"#;
        assert!(
            serde_json::from_slice::<Vec<Envelope>>(sequence).is_ok(),
            "serde's derived reader takes it"
        );
        let Err(Error::InvalidBatch(message)) = decode_batch(sequence, 3) else {
            panic!("the sequence form is refused");
        };
        assert!(message.contains("expected a JSON object"), "{message}");
        let acceptance =
            br#"[{"id": "a", "env_id": 1, "name": "ok", "timestamp": 0, "received_at": 0,
            "acceptance": ["00112233445566778899aabbccddeeff", 1]}]"#;
        assert!(matches!(
            decode_batch(acceptance, 3),
            Err(Error::InvalidBatch(_))
        ));
        let object = br#"[{"id": "a", "env_id": 1, "name": "ok", "timestamp": 0, "received_at": 0,
            "acceptance": {"id": "00112233445566778899aabbccddeeff", "n": 1}}]"#;
        assert_eq!(
            decode_batch(object, 3)
                .ok()
                .and_then(|b| b[0].acceptance.clone())
                .map(|a| a.n),
            Some(1)
        );
        assert!(matches!(
            decode_batch(b"[] x", 3),
            Err(Error::MalformedJson(_))
        ));
    }

    #[test]
    fn decode_batch_lists_every_invalid_envelope() {
        let body = br#"[{"id": "a", "env_id": 1, "name": "ok", "timestamp": 0, "received_at": 0},
            {"id": "b", "env_id": 1, "name": "", "timestamp": 0, "received_at": 0},
            {"id": "c", "env_id": 1, "name": "ok", "timestamp": -1, "received_at": 0}]"#;
        let Err(Error::InvalidEnvelopes(list)) = decode_batch(body, 10) else {
            panic!("the batch is refused");
        };
        let indexes: Vec<_> = list.iter().map(|e| e["index"].clone()).collect();
        assert_eq!(indexes, vec![json!(1), json!(2)]);
        assert_eq!(list[0]["id"], "b");
    }

    #[test]
    fn gunzip_caps_the_inflated_size() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &[b'a'; 4096]).expect("gzip");
        let compressed = encoder.finish().expect("gzip");
        assert_eq!(gunzip(&compressed, 4096).map(|b| b.len()).ok(), Some(4096));
        assert!(matches!(
            gunzip(&compressed, 4095),
            Err(Error::BodyTooLarge(4095))
        ));
        assert!(matches!(gunzip(b"plain", 4096), Err(Error::BadGzip(_))));
    }

    #[test]
    fn content_types_and_encodings() {
        let with = |name: header::HeaderName, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_str(value).expect("header"));
            headers
        };
        assert!(check_content_type(&with(
            header::CONTENT_TYPE,
            "application/json ; charset=utf-8"
        ))
        .is_ok());
        assert!(check_content_type(&with(header::CONTENT_TYPE, "application/jsonx")).is_err());
        assert!(check_content_type(&HeaderMap::new()).is_err());
        assert_eq!(
            is_gzip(&with(header::CONTENT_ENCODING, " GZIP ")).ok(),
            Some(true)
        );
        assert_eq!(
            is_gzip(&with(header::CONTENT_ENCODING, "")).ok(),
            Some(false)
        );
        assert_eq!(is_gzip(&HeaderMap::new()).ok(), Some(false));
        assert!(matches!(
            is_gzip(&with(header::CONTENT_ENCODING, "deflate")),
            Err(Error::UnsupportedEncoding(e)) if e == "deflate"
        ));
    }
}
