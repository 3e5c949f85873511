//! Runtime glue (wasm32 only): KV, queues, the backend, randomness, logs.
//! No decisions here; those live in the plain modules.

use std::time::Duration;

use futures_util::future::{select, Either};
use js_sys::{Object, Reflect, Uint8Array};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use worker::{
    console_error, console_log, Delay, Env, Fetch, Headers, Method, Queue, QueueContentType,
    RawMessageBuilder, Request, RequestInit,
};

use crate::auth::{self, KeyCache, Lookup};
use crate::config::{self, Config};
use crate::error::EdgeError;
use crate::forward::Outcome;
use crate::ingest;
use crate::log;
use crate::pack;

/// How often a queue `sendBatch` is tried, and the pause before each retry.
const QUEUE_SEND_BACKOFF_MS: [u64; 3] = [0, 100, 400];
const BACKEND_TIMEOUT: Duration = Duration::from_secs(30);

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = crypto, js_name = getRandomValues, catch)]
    fn get_random_values(buf: &Uint8Array) -> Result<JsValue, JsValue>;

    /// A queue message as the runtime hands it over, `attempts` included
    /// (the `worker` crate's `Message` does not expose it).
    #[wasm_bindgen(extends = Object)]
    pub type QueueMessage;
    #[wasm_bindgen(method, getter)]
    pub fn id(this: &QueueMessage) -> JsValue;
    #[wasm_bindgen(method, getter)]
    pub fn body(this: &QueueMessage) -> JsValue;
    #[wasm_bindgen(method, getter)]
    pub fn attempts(this: &QueueMessage) -> JsValue;
    #[wasm_bindgen(method, catch)]
    fn ack(this: &QueueMessage) -> Result<(), JsValue>;
    #[wasm_bindgen(method, catch)]
    fn retry(this: &QueueMessage, options: &JsValue) -> Result<(), JsValue>;
}

thread_local! {
    static KEY_CACHE: std::cell::RefCell<KeyCache> = std::cell::RefCell::new(
        KeyCache::new(config::DEFAULT_POSITIVE_TTL_MS, config::DEFAULT_NEGATIVE_TTL_MS),
    );
}

pub fn info(event: &str, fields: Value) {
    console_log!("{}", log::line("info", event, fields));
}

pub fn error(event: &str, fields: Value) {
    console_error!("{}", log::line("error", event, fields));
}

pub fn now_ms() -> i64 {
    js_sys::Date::now() as i64
}

pub fn config(env: &Env) -> Config {
    Config::from_lookup(|name| env.var(name).ok().map(|v| v.to_string()))
}

/// Ten random bytes for a UUIDv7, from `crypto.getRandomValues`.
pub fn random10() -> [u8; 10] {
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

/// A string property of `request.cf`, if the runtime set one.
pub fn cf_field(req: &Request, name: &str) -> Option<String> {
    let cf = Reflect::get(req.inner(), &JsValue::from_str("cf")).ok()?;
    if cf.is_undefined() || cf.is_null() {
        return None;
    }
    Reflect::get(&cf, &JsValue::from_str(name))
        .ok()?
        .as_string()
}

/// The request body, read from the runtime's own `Request`: the `worker`
/// crate's `bytes()` swaps the runtime's error for a fixed text. A read the
/// runtime fails (the client closed before the body was complete), or one
/// that ends short of `Content-Length`, becomes the error `error.rs` says.
pub async fn read_body(req: &Request) -> Result<Vec<u8>, EdgeError> {
    let content_length = req.headers().get("Content-Length").ok().flatten();
    let declared = ingest::declared_length(content_length.as_deref());
    let failed = |e: JsValue| {
        let reason = js_reason(&e);
        info(
            "request_body_unreadable",
            json!({"error": reason, "declared_bytes": declared}),
        );
        EdgeError::body_read_failed(&reason, declared)
    };
    let promise = req.inner().array_buffer().map_err(&failed)?;
    let buffer = JsFuture::from(promise).await.map_err(&failed)?;
    let bytes = Uint8Array::new(&buffer).to_vec();
    ingest::check_complete(bytes.len(), declared)?;
    Ok(bytes)
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

/// The environment `key` writes to, if the key is active and within its rate
/// limit. The KV lookup and the limiter run side by side.
pub async fn admit(env: &Env, key: &str, config: &Config) -> Result<u32, EdgeError> {
    let hash = auth::hash_key(key);
    let (lookup, within_limit) = futures_util::future::join(
        authenticate(env, &hash, config),
        within_rate_limit(env, &hash),
    )
    .await;
    auth::admit(
        lookup?,
        within_limit,
        now_ms().max(0) as u64,
        config.rate_limit_period_seconds,
    )
}

/// The limiter's answer for a key hash. No binding means no limit, and a
/// failing limiter lets the request through: it must not stop ingest.
async fn within_rate_limit(env: &Env, key_hash: &str) -> bool {
    let Ok(limiter) = env.rate_limiter(config::KEY_RATE_LIMIT) else {
        return true;
    };
    match limiter.limit(key_hash.to_owned()).await {
        Ok(outcome) => outcome.success,
        Err(e) => {
            error("rate_limit_failed", json!({"error": e.to_string()}));
            true
        }
    }
}

/// The record of the key with this hash, from the isolate cache or KV.
pub async fn authenticate(env: &Env, hash: &str, config: &Config) -> Result<Lookup, EdgeError> {
    let now = now_ms().max(0) as u64;
    let cached = KEY_CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        cache.set_ttls(config.key_cache_positive_ms, config.key_cache_negative_ms);
        cache.get(hash, now)
    });
    if let Some(lookup) = cached {
        return Ok(lookup);
    }
    let kv = env
        .kv(config::KEYS_KV)
        .map_err(|e| EdgeError::Internal(e.to_string()))?;
    let value = kv.get(hash).text().await.map_err(|e| {
        error("key_lookup_failed", json!({"error": e.to_string()}));
        EdgeError::KeyStoreUnavailable
    })?;
    let (lookup, problem) = auth::interpret(value.as_deref());
    if let Some(problem) = problem {
        error(
            "key_record_malformed",
            json!({"key_hash": hash, "error": problem}),
        );
    }
    KEY_CACHE.with(|c| c.borrow_mut().put(hash.to_owned(), lookup.clone(), now));
    Ok(lookup)
}

/// Sends every batch, each with a short bounded retry; returns how many
/// envelopes could not be queued (and logs them loudly).
pub async fn enqueue(queue: &Queue, batches: Vec<Vec<pack::Message>>, env_id: u32) -> usize {
    let mut lost = 0;
    for batch in batches {
        let envelopes: usize = batch.iter().map(|m| m.envelopes).sum();
        let mut last_error = String::new();
        let mut sent = false;
        for pause in QUEUE_SEND_BACKOFF_MS {
            if pause > 0 {
                Delay::from(Duration::from_millis(pause)).await;
            }
            let raw: Vec<_> = batch
                .iter()
                .map(|m| {
                    RawMessageBuilder::new(JsValue::from_str(&m.body))
                        .build_with_content_type(QueueContentType::Text)
                })
                .collect();
            match queue.send_raw_batch(raw).await {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        if !sent {
            lost += envelopes;
            error(
                "queue_send_failed",
                json!({"env_id": env_id, "lost_events": envelopes, "messages": batch.len(), "error": last_error}),
            );
        }
    }
    lost
}

/// One request to the backend's `POST /v1/ingest`.
pub async fn post_ingest(url: &str, token: &str, body: &str) -> Outcome {
    let unavailable = |why: String| {
        error("backend_unreachable", json!({"error": why}));
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
    let request = match Request::new_with_init(url, &init) {
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

impl QueueMessage {
    pub fn id_text(&self) -> String {
        self.id().as_string().unwrap_or_default()
    }

    /// Delivery attempts, starting at 1.
    pub fn attempt_count(&self) -> u32 {
        self.attempts()
            .as_f64()
            .map(|a| a.max(1.0) as u32)
            .unwrap_or(1)
    }

    /// The body as text: ours are strings; anything else is JSON-stringified.
    pub fn body_text(&self) -> String {
        let body = self.body();
        if let Some(text) = body.as_string() {
            return text;
        }
        js_sys::JSON::stringify(&body)
            .map(String::from)
            .unwrap_or_default()
    }

    pub fn acknowledge(&self) {
        if let Err(e) = self.ack() {
            error(
                "queue_ack_failed",
                json!({"message_id": self.id_text(), "error": format!("{e:?}")}),
            );
        }
    }

    pub fn retry_in(&self, delay_seconds: u32) {
        let options = Object::new();
        let _ = Reflect::set(
            &options,
            &"delaySeconds".into(),
            &JsValue::from(delay_seconds),
        );
        if let Err(e) = self.retry(&options) {
            error(
                "queue_retry_failed",
                json!({"message_id": self.id_text(), "error": format!("{e:?}")}),
            );
        }
    }
}
