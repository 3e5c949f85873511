//! Sluice edge worker. Everything that decides lives in the plain modules
//! below and tests natively; the wasm32-only entry points bind them to the
//! Workers runtime.

pub mod auth;
pub mod config;
pub mod deadletter;
pub mod error;
pub mod forward;
pub mod http;
pub mod ingest;
pub mod json;
pub mod log;
pub mod pack;
pub mod segment;
pub mod text;

#[cfg(target_arch = "wasm32")]
mod bindings;

#[cfg(target_arch = "wasm32")]
mod entry {
    use std::collections::BTreeMap;

    use protocol::Envelope;
    use serde_json::{json, Value};
    use wasm_bindgen::prelude::*;
    use worker::{
        event, Context, Env, QueueContentType, RawMessageBuilder, Request, Response, Result,
    };

    use crate::auth::{self, Lookup};
    use crate::bindings::{self as rt, QueueMessage};
    use crate::config::{self, Config};
    use crate::error::EdgeError;
    use crate::forward::{self, Decision, Outcome};
    use crate::http::{self, Route};
    use crate::{deadletter, ingest, pack, segment};

    #[event(start)]
    fn start() {
        console_error_panic_hook::set_once();
    }

    #[event(fetch)]
    async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
        let config = rt::config(&env);
        let origin = req.headers().get("Origin").ok().flatten();
        let route = http::route(req.method().as_ref(), &req.path());
        let preflight = route == Ok(Route::Preflight);
        let is_segment = matches!(route, Ok(Route::Segment(_) | Route::SegmentSettings(_)));
        let result = match route {
            Ok(Route::Events) => events(req, &env, &ctx, &config).await,
            Ok(Route::Segment(endpoint)) => segment_api(req, endpoint, &env, &config).await,
            Ok(Route::SegmentSettings(key)) => segment_settings(&req, &key, &env, &config).await,
            Ok(Route::Health) => Ok((200, Some(json!({"status": "ok"})))),
            Ok(Route::Preflight) => Ok((204, None)),
            Err(e) => Err(e),
        };
        let mut headers = http::cors_headers(origin.as_deref(), &config.allowed_origins, preflight);
        let (status, body) = match result {
            Ok(ok) => ok,
            Err(e) => {
                if e.status() >= 500 {
                    rt::error(
                        "request_failed",
                        json!({"error": e.code(), "detail": format!("{e:?}")}),
                    );
                }
                headers.extend(e.headers());
                let status = if is_segment {
                    segment::status(&e)
                } else {
                    e.status()
                };
                (status, serde_json::to_value(e.body()).ok())
            }
        };
        let mut builder = Response::builder().with_status(status);
        for (name, value) in headers {
            builder = builder.with_header(name, &value)?;
        }
        match body {
            Some(body) => builder.from_json(&body),
            None => Ok(builder.empty()),
        }
    }

    /// `POST /v1/events`: 202 once the events are valid; queued in the background,
    /// or before answering with `Prefer: wait`.
    async fn events(
        req: Request,
        env: &Env,
        ctx: &Context,
        config: &Config,
    ) -> std::result::Result<(u16, Option<Value>), EdgeError> {
        let internal = |e: worker::Error| EdgeError::Internal(e.to_string());
        let header = |name: &str| req.headers().get(name).ok().flatten();
        let url = req.url().map_err(internal)?;
        let key = auth::extract_key(
            header("Authorization").as_deref(),
            http::query_param(url.query(), "key").as_deref(),
        )?;
        let env_id = rt::admit(env, &key, config).await?;
        ingest::check_content_type(header("Content-Type").as_deref())?;
        ingest::check_content_length(header("Content-Length").as_deref(), &config.limits)?;
        let wait = http::wants_wait(
            header("Prefer").as_deref(),
            http::query_param(url.query(), "wait").as_deref(),
        );
        let meta = ingest::Meta {
            env_id,
            received_at: rt::now_ms(),
            country: rt::cf_field(&req, "country"),
            colo: rt::cf_field(&req, "colo"),
            user_agent: header("User-Agent").map(|ua| ua.chars().take(512).collect()),
            ip: None,
        };
        let encoding = header("Content-Encoding");
        let raw = rt::read_body(&req).await?;
        let body = ingest::decode_body(raw, encoding.as_deref(), config.limits.max_body_bytes)?;
        let payload = ingest::parse(&body, &config.limits)?;
        let envelopes = ingest::build(payload, &meta, rt::random10)?;
        let accepted = envelopes.len();
        let messages =
            pack::messages(&envelopes).map_err(|e| EdgeError::Internal(e.to_string()))?;
        let batches = pack::batches(messages);
        let queue = env.queue(config::EVENTS_QUEUE).map_err(internal)?;
        if wait {
            if rt::enqueue(&queue, batches, env_id).await > 0 {
                return Err(EdgeError::QueueUnavailable);
            }
        } else {
            ctx.wait_until(async move {
                rt::enqueue(&queue, batches, env_id).await;
            });
        }
        Ok((202, Some(json!({"accepted": accepted}))))
    }

    /// The Segment-compatible endpoints (see `segment.rs`): 200 once the valid
    /// messages are queued (the SDKs retry 5xx, and messageIds make a retry land once).
    async fn segment_api(
        req: Request,
        endpoint: segment::Endpoint,
        env: &Env,
        config: &Config,
    ) -> std::result::Result<(u16, Option<Value>), EdgeError> {
        let internal = |e: worker::Error| EdgeError::Internal(e.to_string());
        let header = |name: &str| req.headers().get(name).ok().flatten();
        segment::check_content_length(header("Content-Length").as_deref())?;
        let authorization = header("Authorization");
        let encoding = header("Content-Encoding");
        let received_at = rt::now_ms();
        let ua = header("User-Agent").map(|ua| ua.chars().take(512).collect());
        let ip = header("CF-Connecting-IP");
        let raw = rt::read_body(&req).await?;
        let body = ingest::decode_body(raw, encoding.as_deref(), segment::MAX_REQUEST_BYTES)?;
        let request = segment::parse(&body, endpoint)?;
        let key = segment::write_key(authorization.as_deref(), request.write_key.as_deref())?;
        let env_id = rt::admit(env, &key, config).await?;
        let meta = ingest::Meta {
            env_id,
            received_at,
            country: rt::cf_field(&req, "country"),
            colo: rt::cf_field(&req, "colo"),
            user_agent: ua,
            ip,
        };
        let outcome = match segment::build(request, &meta, rt::random10) {
            Ok(outcome) => outcome,
            Err(e) => {
                rt::info(
                    "segment_messages_rejected",
                    json!({"env_id": env_id, "accepted": 0, "error": e.code()}),
                );
                return Err(e);
            }
        };
        if outcome.rejected_count > 0 {
            rt::info(
                "segment_messages_rejected",
                json!({"env_id": env_id, "accepted": outcome.envelopes.len(), "rejected": outcome.rejected_count,
                       "first": outcome.rejected.first().map(|d| d.reason.clone())}),
            );
        }
        let messages =
            pack::messages(&outcome.envelopes).map_err(|e| EdgeError::Internal(e.to_string()))?;
        let queue = env.queue(config::EVENTS_QUEUE).map_err(internal)?;
        if rt::enqueue(&queue, pack::batches(messages), env_id).await > 0 {
            return Err(EdgeError::QueueUnavailable);
        }
        Ok((200, Some(outcome.body())))
    }

    /// `GET /v1/projects/{writeKey}/settings`: the browser SDK's settings,
    /// sending back to this edge; 404 for an unknown or revoked key.
    async fn segment_settings(
        req: &Request,
        key: &str,
        env: &Env,
        config: &Config,
    ) -> std::result::Result<(u16, Option<Value>), EdgeError> {
        let url = req.url().map_err(|e| EdgeError::Internal(e.to_string()))?;
        let key = segment::write_key(None, Some(key)).map_err(|_| EdgeError::NotFound)?;
        let Lookup::Active { .. } = rt::authenticate(env, &auth::hash_key(&key), config).await?
        else {
            return Err(EdgeError::NotFound);
        };
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_owned(),
        };
        let protocol = url.scheme().trim_end_matches(':').to_owned();
        Ok((200, Some(segment::settings(&key, &protocol, &host))))
    }

    /// The queue entry point, written out by hand rather than with
    /// `#[event(queue)]`: the `worker` crate's messages hide `attempts`, which
    /// the backoff needs. It never rejects: a rejected promise resets the isolate.
    #[wasm_bindgen]
    pub fn queue(batch: worker::worker_sys::MessageBatch, env: Env) -> js_sys::Promise {
        wasm_bindgen_futures::future_to_promise(async move {
            consume(batch, env).await;
            Ok(JsValue::UNDEFINED)
        })
    }

    async fn consume(batch: worker::worker_sys::MessageBatch, env: Env) {
        let config = rt::config(&env);
        let queue_name = batch.queue().map(String::from).unwrap_or_default();
        let messages: Vec<QueueMessage> = match batch.messages() {
            Ok(array) => array.iter().map(JsCast::unchecked_into).collect(),
            Err(e) => {
                return rt::error(
                    "queue_batch_unreadable",
                    json!({"queue": queue_name, "error": format!("{e:?}")}),
                )
            }
        };
        if config.is_dead_letter_queue(&queue_name) {
            store_dead_letters(&messages, &env).await;
        } else {
            forward_events(&queue_name, &messages, &env, &config).await;
        }
    }

    async fn forward_events(
        queue_name: &str,
        messages: &[QueueMessage],
        env: &Env,
        config: &Config,
    ) {
        let mut decoded: Vec<(usize, Vec<Envelope>)> = Vec::new();
        let mut attempts = BTreeMap::new();
        for (i, message) in messages.iter().enumerate() {
            let body = message.body_text();
            match forward::decode(&body) {
                Ok(envelopes) => {
                    attempts.insert(i, message.attempt_count());
                    decoded.push((i, envelopes));
                }
                Err(reason) => dead_letter(env, config, queue_name, message, &reason, &body).await,
            }
        }
        if decoded.is_empty() {
            return;
        }
        let token = match env.secret(config::INGEST_TOKEN) {
            Ok(token) => token.to_string(),
            Err(_) => {
                rt::error("ingest_token_missing", json!({"messages": decoded.len()}));
                for (i, _) in &decoded {
                    messages[*i].retry_in(forward::UNAUTHORIZED_BACKOFF_SECONDS);
                }
                return;
            }
        };
        let url = format!("{}/v1/ingest", config.backend_url);
        let all: Vec<(usize, &[Envelope])> =
            decoded.iter().map(|(i, e)| (*i, e.as_slice())).collect();
        let mut decisions = round(&all, &attempts, false, &url, &token, config).await;
        let isolated: Vec<(usize, &[Envelope])> = all
            .iter()
            .filter(|(i, _)| decisions.get(i) == Some(&Decision::Isolate))
            .copied()
            .collect();
        if !isolated.is_empty() {
            decisions.extend(round(&isolated, &attempts, true, &url, &token, config).await);
        }
        for (i, decision) in decisions {
            let message = &messages[i];
            match decision {
                Decision::Ack => message.acknowledge(),
                Decision::Retry { delay_seconds } => {
                    rt::info(
                        "message_retry",
                        json!({"message_id": message.id_text(), "attempts": message.attempt_count(), "delay_seconds": delay_seconds}),
                    );
                    message.retry_in(delay_seconds);
                }
                Decision::DeadLetter { reason } => {
                    dead_letter(
                        env,
                        config,
                        queue_name,
                        message,
                        &reason,
                        &message.body_text(),
                    )
                    .await;
                }
                Decision::Isolate => message.retry_in(config.backoff.base_seconds),
            }
        }
    }

    /// Sends one round of sub-batches, at most `forward_concurrency` at a time.
    async fn round(
        messages: &[(usize, &[Envelope])],
        attempts: &BTreeMap<usize, u32>,
        isolate: bool,
        url: &str,
        token: &str,
        config: &Config,
    ) -> BTreeMap<usize, Decision> {
        let groups = match forward::group(
            messages,
            config.forward_batch_size,
            config.forward_batch_bytes,
            isolate,
        ) {
            Ok(groups) => groups,
            Err(e) => {
                rt::error("forward_grouping_failed", json!({"error": e.to_string()}));
                return messages
                    .iter()
                    .map(|(i, _)| {
                        (
                            *i,
                            Decision::Retry {
                                delay_seconds: config.backoff.base_seconds,
                            },
                        )
                    })
                    .collect();
            }
        };
        let bodies: Vec<&str> = groups.iter().map(|g| g.body.as_str()).collect();
        let outcomes = forward::run_bounded(bodies, config.forward_concurrency, |body| {
            rt::post_ingest(url, token, body)
        })
        .await;
        for (group, outcome) in groups.iter().zip(&outcomes) {
            if *outcome != Outcome::Landed {
                rt::error(
                    "forward_incomplete",
                    json!({"envelopes": group.envelopes.len(), "outcome": format!("{outcome:?}")}),
                );
            }
        }
        let results: Vec<_> = groups.into_iter().zip(outcomes).collect();
        let scope: BTreeMap<usize, u32> = messages
            .iter()
            .map(|(i, _)| (*i, attempts.get(i).copied().unwrap_or(1)))
            .collect();
        forward::decide(&scope, &results, &config.backoff)
    }

    async fn dead_letter(
        env: &Env,
        config: &Config,
        queue_name: &str,
        message: &QueueMessage,
        reason: &str,
        body: &str,
    ) {
        let text = deadletter::poison_message(reason, queue_name, &message.id_text(), body);
        let sent = match env.queue(config::DLQ_QUEUE) {
            Ok(dlq) => {
                let raw = RawMessageBuilder::new(JsValue::from_str(&text))
                    .build_with_content_type(QueueContentType::Text);
                dlq.send_raw(raw).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) => {
                rt::error(
                    "message_dead_lettered",
                    json!({"message_id": message.id_text(), "reason": reason}),
                );
                message.acknowledge();
            }
            Err(e) => {
                // Retried; past max_retries the queue moves it to the DLQ itself.
                rt::error(
                    "dead_letter_send_failed",
                    json!({"message_id": message.id_text(), "reason": reason, "error": e}),
                );
                message.retry_in(config.backoff.delay(message.attempt_count(), None, false));
            }
        }
    }

    /// DLQ consumer: keep every dead letter in KV for an operator (see edge/README.md).
    async fn store_dead_letters(messages: &[QueueMessage], env: &Env) {
        let kv = match env.kv(config::DEAD_LETTERS_KV) {
            Ok(kv) => kv,
            Err(e) => {
                rt::error("dead_letter_store_missing", json!({"error": e.to_string()}));
                for message in messages {
                    message.retry_in(60);
                }
                return;
            }
        };
        for message in messages {
            let record = deadletter::record(
                &message.id_text(),
                message.attempt_count(),
                rt::now_ms(),
                &message.body_text(),
            );
            let key = deadletter::storage_key(&record);
            let stored = async {
                let value = serde_json::to_string(&record).map_err(|e| e.to_string())?;
                kv.put(&key, value)
                    .map_err(|e| e.to_string())?
                    .execute()
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match stored {
                Ok(()) => {
                    rt::error(
                        "dead_letter_stored",
                        json!({"key": key, "reason": record.reason}),
                    );
                    message.acknowledge();
                }
                Err(e) => {
                    rt::error("dead_letter_store_failed", json!({"key": key, "error": e}));
                    message.retry_in(30);
                }
            }
        }
    }
}
