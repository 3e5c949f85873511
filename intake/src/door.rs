//! The public API's doors — `POST /v1/events`, the Segment-compatible
//! endpoints and their settings, `/healthz`, CORS preflight — as one plain
//! async function over ports. The edge runs it over Workers KV and the
//! queue; the backend's direct ingest runs it over the catalog and its
//! group-commit writer. Both doors therefore check a request in the same
//! order and answer it with the same status and error code.
#![allow(async_fn_in_trait)]

use protocol::{Acceptance, Envelope};
use serde_json::{json, Value};

use crate::error::{Door as Api, Error};
use crate::{events, segment, Limits};

/// An incoming HTTP request, as the runtime hands it over.
pub trait Request {
    fn header(&self, name: &str) -> Option<String>;
    /// The URL's query string, without the `?`.
    fn query(&self) -> Option<String>;
    /// The scheme (`https`) and host (with its port, if any) clients reach
    /// this door at: the browser SDK's settings point back there.
    fn scheme_and_host(&self) -> (String, String);
    /// Where the request came from, as far as this door can tell.
    fn client(&self) -> Client;
    /// The whole body, or its first `limit + 1` bytes when it is longer
    /// (enough to refuse it as too large); a read that fails or ends short
    /// of `Content-Length` is [`Error::IncompleteBody`].
    async fn body(&self, limit: usize) -> Result<Vec<u8>, Error>;
}

pub use crate::enrich::Client;
use crate::enrich::{Enrichment, Policy};

/// A key the door admitted: its environment and that environment's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub env_id: u32,
    pub policy: Policy,
}

/// A key the door refused: why, and the key's environment when the key
/// itself is good (over its rate limit), so the refusal can be counted there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub error: Error,
    pub env_id: Option<u32>,
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Self {
            error,
            env_id: None,
        }
    }
}

/// The API keys, and the per-key rate limit.
pub trait Keys {
    /// The environment an active key writes to and its policy, if the key
    /// is within its rate limit: [`Error::InvalidKey`],
    /// [`Error::RateLimited`] (with the environment) or
    /// [`Error::KeyStoreUnavailable`] otherwise.
    async fn admit(&self, key: &str) -> Result<Admitted, Refused>;
    /// Whether the key is active (no rate limit: the settings read).
    async fn active(&self, key: &str) -> Result<bool, Error>;
}

/// Where accepted events go: the edge's queue, the backend's shards.
pub trait Sink {
    /// Events made ready to hand over (packed into queue messages, say).
    type Pending;
    /// Checks the sink can take events now and prepares them; fails before
    /// anything is answered (a missing queue binding, too many in flight).
    fn prepare(&self, env_id: u32, envelopes: Vec<Envelope>) -> Result<Self::Pending, Error>;
    /// Hands the events over for good: queued, or committed.
    async fn commit(&self, pending: Self::Pending) -> Result<(), Error>;
    /// Whether `/v1/events` may answer before [`Sink::commit`] (a queue
    /// behind the door keeps what it answered for), unless the client
    /// asks `Prefer: wait`.
    fn answers_early(&self) -> bool;
}

/// Time and randomness.
pub trait Clock {
    fn now_ms(&self) -> i64;
    /// Ten random bytes for a UUIDv7.
    fn random10(&self) -> [u8; 10];
}

/// Structured logs (one JSON line each).
pub trait Log {
    fn info(&self, event: &str, fields: Value);
    fn error(&self, event: &str, fields: Value);
}

/// Which origins may call the API from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    Any,
    List(Vec<String>),
}

impl AllowedOrigins {
    /// `*`, or a comma-separated list of exact origins (`https://app.example.com`).
    pub fn parse(text: &str) -> Self {
        let list: Vec<String> = text
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if list.iter().any(|o| o == "*") {
            Self::Any
        } else {
            Self::List(list)
        }
    }

    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::List(list) => list.iter().any(|o| o == origin),
        }
    }
}

/// What a door is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub limits: Limits,
    pub allowed_origins: AllowedOrigins,
}

/// What to answer, and what to hand to the sink after answering.
#[derive(Debug)]
pub struct Response<P> {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Value>,
    /// Events answered for but not yet committed: pass them to
    /// [`Sink::commit`] once the answer is out.
    pub deferred: Option<P>,
    /// What the request did, for the delivery ledger.
    pub tally: Option<Tally>,
}

/// What one request at `/v1/events` or the Segment API did, for its
/// environment's delivery ledger: the events accepted, and those refused
/// under one reason code (counted per event where the body could be read
/// as events, as 1 where it could not). Only requests whose environment is
/// known have one: an unknown key's requests are counted by the runtime,
/// globally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub env_id: u32,
    pub received_at: i64,
    pub accepted: u64,
    pub rejected: Option<(&'static str, u64)>,
    /// Events accepted but not stored, by reason (bots, where the
    /// environment drops them): counted in `accepted` too.
    pub dropped: Option<(&'static str, u64)>,
    /// The refused request, for the debugger (the runtime bounds how many it keeps).
    pub sample: Option<protocol::Sample>,
    /// The acceptance every accepted envelope carries (see [`accept`]).
    pub acceptance: Option<Acceptance>,
}

/// 32 lowercase hex digits from the clock's randomness: an acceptance's or
/// a report's id.
pub fn random_id(clock: &impl Clock) -> String {
    let (a, b) = (clock.random10(), clock.random10());
    let mut id = [0u8; 16];
    id[..10].copy_from_slice(&a);
    id[10..].copy_from_slice(&b[..6]);
    crate::credentials::hex(&id)
}

/// Stamps every envelope of a request with the request's acceptance: a new
/// id from `clock` and the number accepted. The first envelope to reach
/// the backend tells the ledger the whole count.
pub fn accept(envelopes: &mut [Envelope], clock: &impl Clock) -> Acceptance {
    let acceptance = Acceptance {
        id: random_id(clock),
        n: u32::try_from(envelopes.len()).unwrap_or(u32::MAX),
    };
    for e in envelopes.iter_mut() {
        e.acceptance = Some(acceptance.clone());
    }
    acceptance
}

/// What a door learned of a request on its way, for its [`Tally`].
#[derive(Default)]
struct Seen {
    env_id: Option<u32>,
    /// Events in the body, once it could be read as events.
    events: Option<u64>,
    /// The body as far as it was decoded.
    body: Option<Vec<u8>>,
    accepted: u64,
    acceptance: Option<Acceptance>,
    /// Bot events accepted and dropped.
    dropped_bots: u64,
    /// The environment's address policy, for the sample of a refused body.
    ip_policy: crate::enrich::IpPolicy,
    /// Events refused while the rest were accepted (Segment), and why the first was.
    partly_rejected: Option<(u64, String)>,
}

impl Seen {
    fn tally<T>(self, received_at: i64, result: &Result<T, Error>) -> Option<Tally> {
        let env_id = self.env_id?;
        let sample = |code: &str, message: &str| {
            let body = String::from_utf8_lossy(self.body.as_deref().unwrap_or_default());
            let body = crate::enrich::scrub(&body, self.ip_policy);
            protocol::Sample::new(received_at, code, message, body.as_bytes())
        };
        let invalid = Error::InvalidEvents(Vec::new()).code();
        Some(match result {
            Ok(_) => Tally {
                env_id,
                received_at,
                accepted: self.accepted,
                rejected: self.partly_rejected.as_ref().map(|(n, _)| (invalid, *n)),
                dropped: (self.dropped_bots > 0)
                    .then_some((crate::enrich::DROPPED_BOT, self.dropped_bots)),
                sample: self
                    .partly_rejected
                    .as_ref()
                    .map(|(_, reason)| sample(invalid, reason)),
                acceptance: self.acceptance.clone(),
            },
            Err(e) => Tally {
                env_id,
                received_at,
                accepted: 0,
                rejected: Some((e.code(), self.events.unwrap_or(1).max(1))),
                dropped: None,
                sample: Some(sample(e.code(), &e.body().message)),
                acceptance: None,
            },
        })
    }
}

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

/// The route of a public request, or the error it gets.
pub fn route(method: &str, path: &str) -> Result<Route, Error> {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    match (path, method) {
        ("/v1/events", "POST") => Ok(Route::Events),
        ("/v1/events", "OPTIONS") => Ok(Route::Preflight),
        ("/v1/events", _) => Err(Error::MethodNotAllowed {
            allow: EVENTS_ALLOW,
        }),
        ("/healthz", "GET" | "HEAD") => Ok(Route::Health),
        ("/healthz", _) => Err(Error::MethodNotAllowed {
            allow: HEALTH_ALLOW,
        }),
        (p, m) => {
            if let Some(endpoint) = segment::endpoint(p) {
                return match m {
                    "POST" => Ok(Route::Segment(endpoint)),
                    "OPTIONS" => Ok(Route::Preflight),
                    _ => Err(Error::MethodNotAllowed {
                        allow: EVENTS_ALLOW,
                    }),
                };
            }
            if let Some(key) = segment::settings_key(p) {
                return match m {
                    "GET" | "HEAD" => Ok(Route::SegmentSettings(key.to_owned())),
                    "OPTIONS" => Ok(Route::Preflight),
                    _ => Err(Error::MethodNotAllowed {
                        allow: HEALTH_ALLOW,
                    }),
                };
            }
            Err(Error::NotFound)
        }
    }
}

/// Whether `path` is one of the public API's (what [`route`] knows).
pub fn is_public_path(path: &str) -> bool {
    !matches!(route("GET", path), Err(Error::NotFound))
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

/// Longest user agent an event keeps.
pub const MAX_USER_AGENT_CHARS: usize = 512;

/// The doors with the ports they use.
pub struct Doors<'a, K, S, C, L> {
    pub settings: &'a Settings,
    pub keys: &'a K,
    pub sink: &'a S,
    pub clock: &'a C,
    pub log: &'a L,
}

type Answer<P> = Result<(u16, Option<Value>, Option<P>), Error>;

impl<K: Keys, S: Sink, C: Clock, L: Log> Doors<'_, K, S, C, L> {
    /// Route, run the door, and turn an error into its status, headers and body.
    pub async fn fetch(
        &self,
        method: &str,
        path: &str,
        req: &impl Request,
    ) -> Response<S::Pending> {
        let route = route(method, path);
        let preflight = route == Ok(Route::Preflight);
        let api = match route {
            Ok(Route::Segment(_) | Route::SegmentSettings(_)) => Api::Segment,
            _ => Api::Events,
        };
        let received_at = self.clock.now_ms();
        let mut seen = Seen::default();
        let result = match route {
            Ok(Route::Events) => self.events(req, received_at, &mut seen).await,
            Ok(Route::Segment(endpoint)) => {
                self.segment(req, endpoint, received_at, &mut seen).await
            }
            Ok(Route::SegmentSettings(key)) => self.settings(req, &key).await,
            Ok(Route::Health) => Ok((200, Some(json!({"status": "ok"})), None)),
            Ok(Route::Preflight) => Ok((204, None, None)),
            Err(e) => Err(e),
        };
        let tally = seen.tally(received_at, &result);
        let origin = req.header("Origin");
        let mut headers =
            cors_headers(origin.as_deref(), &self.settings.allowed_origins, preflight);
        match result {
            Ok((status, body, deferred)) => Response {
                status,
                headers,
                body,
                deferred,
                tally,
            },
            Err(e) => {
                if e.status() >= 500 {
                    self.log.error(
                        "request_failed",
                        json!({"error": e.code(), "detail": format!("{e:?}")}),
                    );
                }
                headers.extend(e.headers());
                Response {
                    status: e.status_at(api),
                    headers,
                    body: serde_json::to_value(e.body()).ok(),
                    deferred: None,
                    tally,
                }
            }
        }
    }

    /// `POST /v1/events`: 202 once the events are valid, handed to the sink
    /// after the answer where it allows that, before it otherwise (or with
    /// `Prefer: wait`).
    async fn events(
        &self,
        req: &impl Request,
        received_at: i64,
        seen: &mut Seen,
    ) -> Answer<S::Pending> {
        let limits = &self.settings.limits;
        let query = req.query();
        let key = crate::credentials::extract_key(
            req.header("Authorization").as_deref(),
            query_param(query.as_deref(), "key").as_deref(),
        )?;
        let admitted = self.admit(&key, seen).await?;
        let env_id = admitted.env_id;
        events::check_content_type(req.header("Content-Type").as_deref())?;
        events::check_content_length(req.header("Content-Length").as_deref(), limits)?;
        let wait = wants_wait(
            req.header("Prefer").as_deref(),
            query_param(query.as_deref(), "wait").as_deref(),
        );
        let meta = events::Meta {
            env_id,
            received_at,
            user_agent: user_agent(req),
            enrichment: Enrichment::new(req.client(), admitted.policy),
        };
        let raw = req.body(limits.max_body_bytes).await?;
        let encoding = req.header("Content-Encoding");
        let body = events::decode_body(raw, encoding.as_deref(), limits.max_body_bytes)?;
        let body = seen.body.insert(body);
        let payload = events::shape(body)?;
        seen.events = Some(payload.events.len() as u64);
        events::check_limits(&payload, limits)?;
        let mut envelopes = events::build(payload, &meta, || self.clock.random10())?;
        let accepted = envelopes.len();
        let dropped = crate::enrich::drop_bots(&mut envelopes, admitted.policy);
        let body = Some(json!({ "accepted": accepted }));
        let answer = if envelopes.is_empty() {
            (202, body, None)
        } else {
            seen.acceptance = Some(accept(&mut envelopes, self.clock));
            let pending = self.sink.prepare(env_id, envelopes)?;
            if wait || !self.sink.answers_early() {
                self.sink.commit(pending).await?;
                (202, body, None)
            } else {
                (202, body, Some(pending))
            }
        };
        seen.accepted = accepted as u64;
        seen.dropped_bots = dropped;
        Ok(answer)
    }

    /// [`Keys::admit`], noting the environment for the tally even when the
    /// key is refused (over its rate limit).
    async fn admit(&self, key: &str, seen: &mut Seen) -> Result<Admitted, Error> {
        match self.keys.admit(key).await {
            Ok(admitted) => {
                seen.env_id = Some(admitted.env_id);
                seen.ip_policy = admitted.policy.ip;
                Ok(admitted)
            }
            Err(refused) => {
                seen.env_id = refused.env_id;
                Err(refused.error)
            }
        }
    }

    /// The Segment-compatible endpoints (see [`segment`]): 200 once the
    /// valid messages are handed over (the SDKs retry 5xx, and messageIds
    /// make a retry land once). A request is counted for its environment
    /// once its write key is read: a body that cannot be parsed has none.
    async fn segment(
        &self,
        req: &impl Request,
        endpoint: segment::Endpoint,
        received_at: i64,
        seen: &mut Seen,
    ) -> Answer<S::Pending> {
        segment::check_content_length(req.header("Content-Length").as_deref())?;
        let raw = req.body(segment::MAX_REQUEST_BYTES).await?;
        let encoding = req.header("Content-Encoding");
        let body = events::decode_body(raw, encoding.as_deref(), segment::MAX_REQUEST_BYTES)?;
        let request = segment::parse(&body, endpoint)?;
        let key = segment::write_key(
            req.header("Authorization").as_deref(),
            request.write_key.as_deref(),
        )?;
        seen.body = Some(body);
        seen.events = Some(request.messages.len() as u64);
        let admitted = self.admit(&key, seen).await?;
        let env_id = admitted.env_id;
        let meta = events::Meta {
            env_id,
            received_at,
            user_agent: user_agent(req),
            enrichment: Enrichment::new(req.client(), admitted.policy),
        };
        let outcome = match segment::build(request, &meta, || self.clock.random10()) {
            Ok(outcome) => outcome,
            Err(e) => {
                self.log.info(
                    "segment_messages_rejected",
                    json!({"env_id": env_id, "accepted": 0, "error": e.code()}),
                );
                return Err(e);
            }
        };
        if outcome.rejected_count > 0 {
            self.log.info(
                "segment_messages_rejected",
                json!({"env_id": env_id, "accepted": outcome.envelopes.len(), "rejected": outcome.rejected_count,
                       "first": outcome.rejected.first().map(|d| d.reason.clone())}),
            );
        }
        let body = outcome.body();
        let accepted = outcome.envelopes.len() as u64;
        let mut envelopes = outcome.envelopes;
        let dropped = crate::enrich::drop_bots(&mut envelopes, admitted.policy);
        if !envelopes.is_empty() {
            seen.acceptance = Some(accept(&mut envelopes, self.clock));
            let pending = self.sink.prepare(env_id, envelopes)?;
            self.sink.commit(pending).await?;
        }
        seen.accepted = accepted;
        seen.dropped_bots = dropped;
        if outcome.rejected_count > 0 {
            let reason = outcome.rejected.first().map_or(String::new(), |d| {
                format!("message {}: {}", d.index, d.reason)
            });
            seen.partly_rejected = Some((outcome.rejected_count as u64, reason));
        }
        Ok((200, Some(body), None))
    }

    /// `GET /v1/projects/{writeKey}/settings`: the browser SDK's settings,
    /// pointing back to this door; 404 for an unknown or revoked key.
    async fn settings(&self, req: &impl Request, key: &str) -> Answer<S::Pending> {
        let key = segment::write_key(None, Some(key)).map_err(|_| Error::NotFound)?;
        if !self.keys.active(&key).await? {
            return Err(Error::NotFound);
        }
        let (scheme, host) = req.scheme_and_host();
        Ok((200, Some(segment::settings(&key, &scheme, &host)), None))
    }
}

fn user_agent(req: &impl Request) -> Option<String> {
    req.header("User-Agent")
        .map(|ua| crate::text::prefix(&ua, MAX_USER_AGENT_CHARS).to_owned())
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
            Err(Error::MethodNotAllowed {
                allow: "POST, OPTIONS"
            })
        );
        assert_eq!(
            route("POST", "/healthz"),
            Err(Error::MethodNotAllowed { allow: "GET, HEAD" })
        );
        assert_eq!(route("GET", "/"), Err(Error::NotFound));
        assert_eq!(route("POST", "/v1/eventsx"), Err(Error::NotFound));
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
            Err(Error::MethodNotAllowed {
                allow: "POST, OPTIONS"
            })
        );
        assert_eq!(
            route("GET", "/v1/projects/sk_1/settings"),
            Ok(Route::SegmentSettings("sk_1".into()))
        );
        assert_eq!(
            route("POST", "/v1/projects/sk_1/settings"),
            Err(Error::MethodNotAllowed { allow: "GET, HEAD" })
        );
        assert!(is_public_path("/v1/i"));
        assert!(is_public_path("/v1/events"));
        assert!(!is_public_path("/v1/ingest"));
        assert!(!is_public_path("/v1/stats/summary"));
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
        assert_eq!(
            AllowedOrigins::parse(" https://a.example/, https://b.example"),
            AllowedOrigins::List(vec!["https://a.example".into(), "https://b.example".into()])
        );
        assert_eq!(
            AllowedOrigins::parse("https://a.example,*"),
            AllowedOrigins::Any
        );
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
