//! The ports (`ports.rs`) for workerd: KV, queues, the rate limiter, the
//! backend over fetch, time, randomness and logs. No decisions here; those
//! live in the plain modules.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use js_sys::{Object, Reflect, Uint8Array};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use worker::worker_sys::web_sys;
use worker::{
    console_error, console_log, kv::KvStore, Delay, Env, Fetch, Headers, Method, Queue,
    QueueContentType, RawMessageBuilder, RequestInit,
};

use crate::auth::KeyCache;
use crate::config::{self, Config};
use crate::error::EdgeError;
use crate::forward::Outcome;
use crate::log;
use crate::ports;
use crate::report::Windows;
use intake::events;

const BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues, catch)]
    fn get_random_values(buf: &Uint8Array) -> Result<JsValue, JsValue>;

    /// A queue message as the runtime hands it over, `attempts` included
    /// (the `worker` crate's `Message` does not expose it).
    #[wasm_bindgen(extends = Object)]
    pub type QueueMessage;
    #[wasm_bindgen(method, getter, js_name = id)]
    fn id_js(this: &QueueMessage) -> JsValue;
    #[wasm_bindgen(method, getter, js_name = body)]
    fn body_js(this: &QueueMessage) -> JsValue;
    #[wasm_bindgen(method, getter, js_name = attempts)]
    fn attempts_js(this: &QueueMessage) -> JsValue;
    #[wasm_bindgen(method, catch, js_name = ack)]
    fn ack_js(this: &QueueMessage) -> Result<(), JsValue>;
    #[wasm_bindgen(method, catch, js_name = retry)]
    fn retry_js(this: &QueueMessage, options: &JsValue) -> Result<(), JsValue>;
}

thread_local! {
    static REPORT_WINDOWS: Rc<RefCell<Windows>> = Rc::new(RefCell::new(Windows::default()));
    static KEY_CACHE: Rc<RefCell<KeyCache>> = Rc::new(RefCell::new(
        KeyCache::new(config::DEFAULT_POSITIVE_TTL_MS, config::DEFAULT_NEGATIVE_TTL_MS),
    ));
}

/// The isolate's report windows (`report.rs`).
pub fn report_windows() -> Rc<RefCell<Windows>> {
    REPORT_WINDOWS.with(Rc::clone)
}

/// The isolate's key cache (it lives as long as the isolate).
pub fn key_cache() -> Rc<RefCell<KeyCache>> {
    KEY_CACHE.with(Rc::clone)
}

thread_local! {
    static CONFIG: std::cell::OnceCell<Rc<Config>> = const { std::cell::OnceCell::new() };
}

/// The Worker's vars, read once per isolate: an isolate runs one version of
/// one Worker, whose vars do not change under it. (Reading the ~15 vars
/// through `env.var` was ~4% of a request's CPU in the profile: BENCHMARKS.md.)
pub fn config(env: &Env) -> Rc<Config> {
    CONFIG.with(|cell| {
        cell.get_or_init(|| {
            Rc::new(Config::from_lookup(|name| {
                env.var(name).ok().map(|v| v.to_string())
            }))
        })
        .clone()
    })
}

/// Time, randomness and logs of the Workers runtime.
pub struct Runtime;

impl intake::door::Clock for Runtime {
    fn now_ms(&self) -> i64 {
        js_sys::Date::now() as i64
    }

    /// From `crypto.getRandomValues`.
    fn random10(&self) -> [u8; 10] {
        let buf = Uint8Array::new_with_length(10);
        let mut out = [0u8; 10];
        if get_random_values(&buf).is_ok() {
            buf.copy_to(&mut out);
        } else {
            for byte in out.iter_mut() {
                *byte = (js_sys::Math::random() * 256.0) as u8;
            }
        }
        out
    }
}

impl ports::Clock for Runtime {
    async fn sleep_ms(&self, ms: u64) {
        Delay::from(Duration::from_millis(ms)).await;
    }
}

impl ports::Log for Runtime {
    fn info(&self, event: &str, fields: Value) {
        console_log!("{}", log::line("info", event, fields));
    }

    fn error(&self, event: &str, fields: Value) {
        console_error!("{}", log::line("error", event, fields));
    }
}

fn log_error(event: &str, fields: Value) {
    ports::Log::error(&Runtime, event, fields);
}

/// An incoming request of the runtime, read as the door asks (its URL once).
pub struct Incoming<'a> {
    request: &'a web_sys::Request,
    url: String,
}

impl<'a> Incoming<'a> {
    pub fn new(request: &'a web_sys::Request) -> Self {
        Self {
            url: request.url(),
            request,
        }
    }

    /// The path of the runtime's serialized URL: after the host, up to the
    /// query or fragment (its `?` and `#` are the first ones: a serialized
    /// path has them percent-encoded). `/` when it has none.
    pub fn path(&self) -> &str {
        let after_scheme = self.url.find("://").map_or(0, |i| i + 3);
        let rest = &self.url[after_scheme..];
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        match path.find(['?', '#']) {
            Some(end) => &path[..end],
            None if path.is_empty() => "/",
            None => path,
        }
    }
}

impl ports::Request for Incoming<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.request.headers().get(name).ok().flatten()
    }

    /// Cut from the serialized URL, where the first `?` starts the query
    /// and a `#` ends it, without parsing the whole URL again.
    fn query(&self) -> Option<String> {
        let (_, rest) = self.url.split_once('?')?;
        Some(rest.split('#').next().unwrap_or(rest).to_owned())
    }

    fn scheme_and_host(&self) -> (String, String) {
        let Ok(url) = worker::Url::parse(&self.url) else {
            return (String::new(), String::new());
        };
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_owned(),
        };
        (url.scheme().trim_end_matches(':').to_owned(), host)
    }

    /// Location, colo and Bot Management from `request.cf`, the address
    /// from `CF-Connecting-IP` (the environment's policy decides what of it
    /// an event keeps: `intake::enrich`).
    fn client(&self) -> ports::Client {
        ports::Client::from_cf(&self.cf(), self.header("CF-Connecting-IP"))
    }

    /// Read from the runtime's own `Request`: the `worker` crate's `bytes()`
    /// swaps the runtime's error for a fixed text. A read the runtime fails
    /// (the client closed before the body was complete), or one that ends
    /// short of `Content-Length`, becomes the error `error.rs` says.
    /// The runtime holds the whole body already, so `limit` is not needed.
    async fn body(&self, _limit: usize) -> Result<Vec<u8>, EdgeError> {
        let content_length = self.header("Content-Length");
        let declared = events::declared_length(content_length.as_deref());
        let failed = |e: JsValue| {
            let reason = js_reason(&e);
            ports::Log::info(
                &Runtime,
                "request_body_unreadable",
                json!({"error": reason, "declared_bytes": declared}),
            );
            EdgeError::body_read_failed(&reason, declared)
        };
        let promise = self.request.array_buffer().map_err(&failed)?;
        let buffer = JsFuture::from(promise).await.map_err(&failed)?;
        let bytes = Uint8Array::new(&buffer).to_vec();
        events::check_complete(bytes.len(), declared)?;
        Ok(bytes)
    }
}

impl Incoming<'_> {
    /// `request.cf` as JSON (its values are not all text: `asn` is a
    /// number, `botManagement` an object), or null when the runtime set none.
    fn cf(&self) -> serde_json::Value {
        let Ok(cf) = Reflect::get(self.request, &JsValue::from_str("cf")) else {
            return serde_json::Value::Null;
        };
        if cf.is_undefined() || cf.is_null() {
            return serde_json::Value::Null;
        }
        js_sys::JSON::stringify(&cf)
            .ok()
            .and_then(|text| text.as_string())
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// The runtime's `Response` for an answer of the door: its status and
/// headers, and its body as JSON text. A response the runtime refuses to
/// build is logged and answered 500.
pub fn response(status: u16, headers: &[(&'static str, String)], body: Option<&Value>) -> JsValue {
    let build = |status: u16, body: Option<String>| -> Result<web_sys::Response, JsValue> {
        let init = web_sys::ResponseInit::new();
        init.set_status(status);
        let all = web_sys::Headers::new()?;
        for (name, value) in headers {
            all.set(name, value)?;
        }
        if body.is_some() {
            all.set("content-type", "application/json")?;
        }
        init.set_headers(&all);
        web_sys::Response::new_with_opt_str_and_init(body.as_deref(), &init)
    };
    match build(status, body.map(Value::to_string)) {
        Ok(response) => response.into(),
        Err(e) => {
            log_error(
                "response_unbuildable",
                json!({"status": status, "error": js_reason(&e)}),
            );
            let refusal = EdgeError::Internal("response unbuildable".into());
            build(
                refusal.status(),
                serde_json::to_string(&refusal.body()).ok(),
            )
            .map(JsValue::from)
            .unwrap_or(JsValue::UNDEFINED)
        }
    }
}

/// `name: message` of a thrown JS error, else its text.
fn js_reason(e: &JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(err) => format!(
            "{}: {}",
            String::from(err.name()),
            String::from(err.message())
        ),
        None => e.as_string().unwrap_or_else(|| format!("{e:?}")),
    }
}

/// API keys in KV and the per-key rate limiter.
pub struct Keys<'a>(pub &'a Env);

impl ports::KeyStore for Keys<'_> {
    async fn get(&self, key_hash: &str) -> Result<Option<String>, EdgeError> {
        let kv = self
            .0
            .kv(config::KEYS_KV)
            .map_err(|e| EdgeError::Internal(e.to_string()))?;
        kv.get(key_hash).text().await.map_err(|e| {
            log_error("key_lookup_failed", json!({"error": e.to_string()}));
            EdgeError::KeyStoreUnavailable
        })
    }

    async fn within_rate_limit(&self, key_hash: &str) -> bool {
        let Ok(limiter) = self.0.rate_limiter(config::KEY_RATE_LIMIT) else {
            return true;
        };
        match limiter.limit(key_hash.to_owned()).await {
            Ok(outcome) => outcome.success,
            Err(e) => {
                log_error("rate_limit_failed", json!({"error": e.to_string()}));
                true
            }
        }
    }
}

/// A queue binding (the events queue, or the dead-letter queue); the
/// binding's absence is kept as an error to report when it is used.
pub struct Outbox(Result<Queue, String>);

impl Outbox {
    pub fn new(env: &Env, binding: &str) -> Self {
        Self(env.queue(binding).map_err(|e| e.to_string()))
    }

    async fn send_texts(&self, bodies: &[&str]) -> Result<(), String> {
        let queue = self.0.as_ref().map_err(Clone::clone)?;
        let raw: Vec<_> = bodies
            .iter()
            .map(|body| {
                RawMessageBuilder::new(JsValue::from_str(body))
                    .build_with_content_type(QueueContentType::Text)
            })
            .collect();
        queue.send_raw_batch(raw).await.map_err(|e| e.to_string())
    }
}

impl ports::EventQueue for Outbox {
    fn ready(&self) -> Result<(), EdgeError> {
        self.0
            .as_ref()
            .map(|_| ())
            .map_err(|e| EdgeError::Internal(e.clone()))
    }

    async fn send_batch(&self, bodies: &[String]) -> Result<(), String> {
        let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
        self.send_texts(&bodies).await
    }
}

impl ports::DeadLetterQueue for Outbox {
    async fn send(&self, text: &str) -> Result<(), String> {
        let queue = self.0.as_ref().map_err(Clone::clone)?;
        let raw = RawMessageBuilder::new(JsValue::from_str(text))
            .build_with_content_type(QueueContentType::Text);
        queue.send_raw(raw).await.map_err(|e| e.to_string())
    }
}

/// The dead-letter store (KV).
pub struct DeadLetterKv(pub KvStore);

impl ports::DeadLetterStore for DeadLetterKv {
    async fn put(&self, key: &str, value: &str, ttl_seconds: Option<u64>) -> Result<(), String> {
        let mut put = self.0.put(key, value).map_err(|e| e.to_string())?;
        if let Some(ttl) = ttl_seconds {
            put = put.expiration_ttl(ttl);
        }
        put.execute().await.map_err(|e| e.to_string())
    }

    async fn retention_days(&self, env_id: u32) -> Result<Option<u32>, String> {
        let text = self
            .0
            .get(&crate::deadletter::retention_key(env_id))
            .text()
            .await
            .map_err(|e| e.to_string())?;
        Ok(text.and_then(|t| t.trim().parse().ok()))
    }
}

/// The backend's ingest API (`/v1/ingest`, `/v1/ingest/reports`), over fetch.
pub struct IngestApi {
    /// `BACKEND_URL`, without a trailing slash.
    pub base: String,
    pub token: String,
}

impl IngestApi {
    /// `None` when the `INGEST_TOKEN` secret is missing.
    pub fn new(env: &Env, config: &Config) -> Option<Self> {
        let token = env.secret(config::INGEST_TOKEN).ok()?;
        Some(Self {
            base: config.backend_url.clone(),
            token: token.to_string(),
        })
    }
}

impl ports::Backend for IngestApi {
    async fn ingest(&self, body: &str) -> Outcome {
        post_ingest(&format!("{}/v1/ingest", self.base), &self.token, body).await
    }

    async fn report(&self, body: &str) -> Outcome {
        post_ingest(
            &format!("{}/v1/ingest/reports", self.base),
            &self.token,
            body,
        )
        .await
    }
}

async fn post_ingest(url: &str, token: &str, body: &str) -> Outcome {
    let unavailable = |why: String| {
        log_error("backend_unreachable", json!({"error": why}));
        Outcome::Unavailable {
            retry_after: None,
            status: None,
        }
    };
    let headers = Headers::new();
    if headers
        .set("Authorization", &format!("Bearer {token}"))
        .is_err()
        || headers.set("Content-Type", "application/json").is_err()
    {
        return unavailable("could not build headers".into());
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(JsValue::from_str(body)));
    let request = match worker::Request::new_with_init(url, &init) {
        Ok(r) => r,
        Err(e) => return unavailable(e.to_string()),
    };
    let fetch = Fetch::Request(request);
    let send = Box::pin(fetch.send());
    let timeout = Box::pin(Delay::from(BACKEND_TIMEOUT));
    let mut response = match select(send, timeout).await {
        Either::Left((Ok(r), _)) => r,
        Either::Left((Err(e), _)) => return unavailable(e.to_string()),
        Either::Right(_) => return unavailable("timed out".into()),
    };
    let status = response.status_code();
    let retry_after = response.headers().get("Retry-After").ok().flatten();
    let text = response.text().await.unwrap_or_default();
    crate::forward::classify(status, retry_after.as_deref(), &text)
}

impl ports::Message for QueueMessage {
    fn id(&self) -> String {
        self.id_js().as_string().unwrap_or_default()
    }

    fn attempts(&self) -> u32 {
        self.attempts_js()
            .as_f64()
            .map(|a| a.max(1.0) as u32)
            .unwrap_or(1)
    }

    /// Ours are strings; anything else is JSON-stringified.
    fn body(&self) -> String {
        let body = self.body_js();
        if let Some(text) = body.as_string() {
            return text;
        }
        js_sys::JSON::stringify(&body)
            .map(String::from)
            .unwrap_or_default()
    }

    fn ack(&self) {
        if let Err(e) = self.ack_js() {
            log_error(
                "queue_ack_failed",
                json!({"message_id": ports::Message::id(self), "error": format!("{e:?}")}),
            );
        }
    }

    fn retry(&self, delay_seconds: u32) {
        let options = Object::new();
        let _ = Reflect::set(
            &options,
            &"delaySeconds".into(),
            &JsValue::from(delay_seconds),
        );
        if let Err(e) = self.retry_js(&options) {
            log_error(
                "queue_retry_failed",
                json!({"message_id": ports::Message::id(self), "error": format!("{e:?}")}),
            );
        }
    }
}
