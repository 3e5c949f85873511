//! Sluice edge worker. Everything that decides lives in the plain modules
//! below and tests natively against the ports (`ports.rs`): `handlers` (the
//! HTTP doors) and `consumer` (the queues). The wasm32-only entry points
//! here bind them to the Workers runtime through `bindings`.

pub mod auth;
pub mod config;
pub mod consumer;
pub mod deadletter;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod forward;
pub mod handlers;
pub mod log;
pub mod pack;
pub mod ports;
pub mod report;

#[cfg(target_arch = "wasm32")]
mod bindings;

#[cfg(target_arch = "wasm32")]
mod entry {
    use wasm_bindgen::prelude::*;
    use worker::{event, Context, Env, Request, Response, Result};

    use crate::bindings::{self as rt, Incoming, Outbox, QueueMessage, Runtime};
    use crate::config;
    use crate::consumer::{self, Forwarder};
    use crate::handlers::{self, Edge};
    use crate::report::Reporter;

    #[event(start)]
    fn start() {
        console_error_panic_hook::set_once();
    }

    #[event(fetch)]
    async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
        let config = rt::config(&env);
        let (keys, queue, cache) = (
            rt::Keys(&env),
            Outbox::new(&env, config::EVENTS_QUEUE),
            rt::key_cache(),
        );
        let edge = Edge {
            config: &config,
            keys: &keys,
            queue: &queue,
            clock: &Runtime,
            log: &Runtime,
            cache: &cache,
            unsent: Default::default(),
        };
        let mut answer = edge
            .fetch(req.method().as_ref(), &req.path(), &Incoming(&req))
            .await;
        let after = edge.after(&mut answer);
        if !after.is_empty() {
            let backend = rt::IngestApi::new(&env, &config);
            let windows = rt::report_windows();
            ctx.wait_until(async move {
                let reporter = Reporter {
                    queue: &queue,
                    backend: backend.as_ref(),
                    clock: &Runtime,
                    log: &Runtime,
                    windows: &windows,
                };
                handlers::after(&reporter, after).await;
            });
        }
        let mut builder = Response::builder().with_status(answer.status);
        for (name, value) in answer.headers {
            builder = builder.with_header(name, &value)?;
        }
        match answer.body {
            Some(body) => builder.from_json(&body),
            None => Ok(builder.empty()),
        }
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
                let fields = serde_json::json!({"queue": queue_name, "error": format!("{e:?}")});
                return crate::ports::Log::error(&Runtime, "queue_batch_unreadable", fields);
            }
        };
        if config.is_dead_letter_queue(&queue_name) {
            let store = env.kv(config::DEAD_LETTERS_KV).ok().map(rt::DeadLetterKv);
            let backend = rt::IngestApi::new(&env, &config);
            consumer::store_dead_letters(
                &messages,
                store.as_ref(),
                backend.as_ref(),
                &Runtime,
                &Runtime,
            )
            .await;
        } else {
            let backend = rt::IngestApi::new(&env, &config);
            let dead_letters = Outbox::new(&env, config::DLQ_QUEUE);
            let forwarder = Forwarder {
                config: &config,
                backend: backend.as_ref(),
                dead_letters: &dead_letters,
                log: &Runtime,
            };
            forwarder.consume(&queue_name, &messages).await;
        }
    }
}
