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
    use worker::worker_sys::web_sys;
    use worker::{event, Context, Env};

    use crate::bindings::{self as rt, Incoming, Outbox, QueueMessage, Runtime};
    use crate::config;
    use crate::consumer::{self, Forwarder};
    use crate::handlers::{self, Edge};
    use crate::report::Reporter;

    #[event(start)]
    fn start() {
        console_error_panic_hook::set_once();
    }

    /// The fetch entry point, written out by hand rather than with
    /// `#[event(fetch)]`: the `worker` crate's `Request` reads the method,
    /// URL, headers and `request.cf` of every request up front, and its
    /// `Response` builder copies the answer once more; this reads what the
    /// door asks for, straight from the runtime's objects (BENCHMARKS.md:
    /// CPU per event — edge). It never rejects.
    #[wasm_bindgen]
    pub fn fetch(
        req: web_sys::Request,
        env: Env,
        ctx: worker::worker_sys::Context,
    ) -> js_sys::Promise {
        let ctx = Context::new(ctx);
        wasm_bindgen_futures::future_to_promise(async move {
            let response = answer(req, env, ctx).await;
            Ok(response)
        })
    }

    async fn answer(req: web_sys::Request, env: Env, ctx: Context) -> JsValue {
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
        let incoming = Incoming::new(&req);
        let mut answer = edge.fetch(&req.method(), incoming.path(), &incoming).await;
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
        rt::response(answer.status, &answer.headers, answer.body.as_ref())
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
