//! One `POST /v1/events` through the edge's handlers natively, over the
//! in-memory ports (src/fakes.rs), for counting its instructions:
//!
//!   cargo build --release -p sluice-edge --features fakes --example request_cost
//!   valgrind --tool=callgrind --toggle-collect='request_cost::measured' \
//!     target/release/examples/request_cost 1000
//!
//! The first request (a key-cache miss) runs outside the measured part;
//! `measured` then answers N more (cache hits), each as the worker's fetch
//! entry does: the door, the answer's JSON, and the work after the answer
//! (packing is before it, the queue send after). It checks each answer is a
//! 202 and that every request reached the queue.

use std::cell::RefCell;

use futures_executor::block_on;
use serde_json::json;
use sluice_edge::auth::KeyCache;
use sluice_edge::config::Config;
use sluice_edge::fakes::{Backend, Clock, Keys, Log, Queue, Request};
use sluice_edge::forward::Outcome;
use sluice_edge::handlers::{self, Edge};
use sluice_edge::report::{Reporter, Windows};

const KEY: &str = "sk_0123456789abcdef0123456789abcdef";

struct World {
    config: Config,
    keys: Keys,
    queue: Queue,
    clock: Clock,
    log: Log,
    cache: RefCell<KeyCache>,
    windows: RefCell<Windows>,
    backend: Backend<fn(&str) -> Outcome>,
}

fn landed(_: &str) -> Outcome {
    Outcome::Landed
}

/// The bench's 1-event request body (bench/src/edge.rs `events(1)`).
fn request() -> Request {
    let body = json!([{"event": "page_view", "user_id": "u0", "properties": {"path": "/pricing", "ref": "ad", "plan": "pro", "amount": 12.5, "step": 0}}]);
    let mut req = Request::json(&body)
        .with("Authorization", &format!("Bearer {KEY}"))
        .with("CF-Connecting-IP", "203.0.113.7")
        .with("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36");
    req.cf = json!({"country": "DE", "city": "Berlin", "colo": "FRA", "region": "Berlin", "timezone": "Europe/Berlin", "asn": 3320});
    req
}

/// One request as `lib.rs`'s fetch entry answers it; its status.
async fn one(world: &World, req: &Request) -> u16 {
    let edge = Edge {
        config: &world.config,
        keys: &world.keys,
        queue: &world.queue,
        clock: &world.clock,
        log: &world.log,
        cache: &world.cache,
        unsent: Default::default(),
    };
    let mut answer = edge.fetch("POST", "/v1/events", req).await;
    let after = edge.after(&mut answer);
    let body = answer.body.as_ref().map(|b| b.to_string());
    std::hint::black_box(body);
    if !after.is_empty() {
        let reporter = Reporter {
            queue: &world.queue,
            backend: Some(&world.backend),
            clock: &world.clock,
            log: &world.log,
            windows: &world.windows,
        };
        handlers::after(&reporter, after).await;
    }
    answer.status
}

#[inline(never)]
fn measured(world: &World, req: &Request, n: usize) -> usize {
    let mut accepted = 0;
    for _ in 0..n {
        if block_on(one(world, req)) == 202 {
            accepted += 1;
        }
    }
    accepted
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let config = Config::from_lookup(|_| None);
    let cache = RefCell::new(KeyCache::new(
        config.key_cache_positive_ms,
        config.key_cache_negative_ms,
    ));
    let world = World {
        keys: Keys::with_active(KEY, 7),
        queue: Queue::default(),
        clock: Clock::default(),
        log: Log::default(),
        cache,
        windows: RefCell::default(),
        backend: Backend::new(landed),
        config,
    };
    let req = request();
    assert_eq!(block_on(one(&world, &req)), 202, "the warm-up request");
    let accepted = measured(&world, &req, n);
    let sent = world.queue.sent.borrow().len();
    assert_eq!(accepted, n, "every request answered 202");
    assert_eq!(sent, n + 1, "every request queued");
    println!("{n} requests answered 202 and queued");
}
