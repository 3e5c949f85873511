//! Routing, CORS and the small request facts the handlers need.

use crate::config::AllowedOrigins;
use crate::error::EdgeError;
use intake::segment;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Events,
    Health,
    Preflight,
    /// A Segment-compatible endpoint (`/v1/track`, `/v1/t`, `/v1/batch`, ...).
    Segment(segment::Endpoint),
    /// `GET /v1/projects/{writeKey}/settings`, for the browser SDK.
    SegmentSettings(String),
}

const EVENTS_ALLOW: &str = "POST, OPTIONS";
const HEALTH_ALLOW: &str = "GET, HEAD";

pub fn route(method: &str, path: &str) -> Result<Route, EdgeError> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    match (path, method) {
        ("/v1/events", "POST") => Ok(Route::Events),
        ("/v1/events", "OPTIONS") => Ok(Route::Preflight),
        ("/v1/events", _) => Err(EdgeError::MethodNotAllowed {
            allow: EVENTS_ALLOW,
        }),
        ("/healthz", "GET" | "HEAD") => Ok(Route::Health),
        ("/healthz", _) => Err(EdgeError::MethodNotAllowed {
            allow: HEALTH_ALLOW,
        }),
        (p, m) => {
            if let Some(endpoint) = segment::endpoint(p) {
                return match m {
                    "POST" => Ok(Route::Segment(endpoint)),
                    "OPTIONS" => Ok(Route::Preflight),
                    _ => Err(EdgeError::MethodNotAllowed {
                        allow: EVENTS_ALLOW,
                    }),
                };
            }
            if let Some(key) = segment::settings_key(p) {
                return match m {
                    "GET" | "HEAD" => Ok(Route::SegmentSettings(key.to_owned())),
                    "OPTIONS" => Ok(Route::Preflight),
                    _ => Err(EdgeError::MethodNotAllowed {
                        allow: HEALTH_ALLOW,
                    }),
                };
            }
            Err(EdgeError::NotFound)
        }
    }
}

/// CORS headers for a response to `origin`; none when the origin is absent
/// or not allowed (the browser then blocks the response, as it should).
pub fn cors_headers(
    origin: Option<&str>,
    allowed: &AllowedOrigins,
    preflight: bool,
) -> Vec<(&'static str, String)> {
    let Some(origin) = origin.filter(|o| allowed.allows(o)) else {
        return Vec::new();
    };
    let mut headers = vec![
        ("Access-Control-Allow-Origin", origin.to_owned()),
        ("Vary", "Origin".to_owned()),
    ];
    if preflight {
        headers.extend([
            ("Access-Control-Allow-Methods", EVENTS_ALLOW.to_owned()),
            (
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type, Content-Encoding, Prefer, X-Retry-Count".to_owned(),
            ),
            ("Access-Control-Max-Age", "86400".to_owned()),
        ]);
    }
    headers
}

/// First value of `name` in a URL query string (without the `?`).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `Prefer: wait` (any token of the header) or `?wait=1`/`?wait=true`.
pub fn wants_wait(prefer: Option<&str>, wait_param: Option<&str>) -> bool {
    let header = prefer.is_some_and(|p| {
        p.split(',').any(|t| {
            t.split([';', '='])
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("wait")
        })
    });
    let param = matches!(wait_param, Some("1" | "true" | "yes"));
    header || param
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("POST", "/v1/events"), Ok(Route::Events));
        assert_eq!(route("POST", "/v1/events/"), Ok(Route::Events));
        assert_eq!(route("OPTIONS", "/v1/events"), Ok(Route::Preflight));
        assert_eq!(route("GET", "/healthz"), Ok(Route::Health));
        assert_eq!(route("HEAD", "/healthz"), Ok(Route::Health));
        assert_eq!(
            route("GET", "/v1/events"),
            Err(EdgeError::MethodNotAllowed {
                allow: "POST, OPTIONS"
            })
        );
        assert_eq!(
            route("POST", "/healthz"),
            Err(EdgeError::MethodNotAllowed { allow: "GET, HEAD" })
        );
        assert_eq!(route("GET", "/"), Err(EdgeError::NotFound));
        assert_eq!(route("POST", "/v1/eventsx"), Err(EdgeError::NotFound));
        assert_eq!(
            route("POST", "/v1/t"),
            Ok(Route::Segment(segment::Endpoint::Single(
                protocol::EventType::Track
            )))
        );
        assert_eq!(
            route("POST", "/v1/batch/"),
            Ok(Route::Segment(segment::Endpoint::Batch))
        );
        assert_eq!(route("OPTIONS", "/v1/b"), Ok(Route::Preflight));
        assert_eq!(
            route("GET", "/v1/batch"),
            Err(EdgeError::MethodNotAllowed {
                allow: "POST, OPTIONS"
            })
        );
        assert_eq!(
            route("GET", "/v1/projects/sk_1/settings"),
            Ok(Route::SegmentSettings("sk_1".into()))
        );
        assert_eq!(
            route("POST", "/v1/projects/sk_1/settings"),
            Err(EdgeError::MethodNotAllowed { allow: "GET, HEAD" })
        );
    }

    #[test]
    fn cors() {
        let list = AllowedOrigins::List(vec!["https://app.example".into()]);
        assert!(cors_headers(None, &list, false).is_empty());
        assert!(cors_headers(Some("https://evil.example"), &list, true).is_empty());
        let h = cors_headers(Some("https://app.example"), &list, false);
        assert_eq!(
            h[0],
            (
                "Access-Control-Allow-Origin",
                "https://app.example".to_owned()
            )
        );
        assert_eq!(h.len(), 2);
        let h = cors_headers(Some("https://any.example"), &AllowedOrigins::Any, true);
        assert!(h
            .iter()
            .any(|(k, v)| *k == "Access-Control-Allow-Headers" && v.contains("Authorization")));
        assert!(h
            .iter()
            .any(|(k, v)| *k == "Access-Control-Allow-Methods" && v.contains("POST")));
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("key=sk_1&wait=1"), "key").as_deref(),
            Some("sk_1")
        );
        assert_eq!(
            query_param(Some("key=a%2Bb"), "key").as_deref(),
            Some("a+b")
        );
        assert_eq!(query_param(Some("x=1"), "key"), None);
        assert_eq!(query_param(None, "key"), None);
    }

    #[test]
    fn wait_preference() {
        assert!(wants_wait(Some("wait"), None));
        assert!(wants_wait(Some("respond-async, Wait=10"), None));
        assert!(wants_wait(None, Some("1")));
        assert!(wants_wait(None, Some("true")));
        assert!(!wants_wait(Some("return=minimal"), Some("0")));
        assert!(!wants_wait(None, None));
    }
}
