//! In-memory implementations of the ports, for the native tests of the
//! handlers and consumers.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::error::EdgeError;
use crate::forward::Outcome;
use crate::ports;

pub const NOW: i64 = 1_700_000_000_000;

/// A request: headers (names matched case-insensitively), query, body.
#[derive(Default)]
pub struct Request {
    pub headers: Vec<(String, String)>,
    pub query: Option<String>,
    pub body: Vec<u8>,
    /// `request.cf`, as the runtime would hand it over.
    pub cf: Value,
    /// The body read fails with this error.
    pub body_error: Option<EdgeError>,
}

impl Request {
    pub fn json(body: &Value) -> Self {
        Self::default()
            .with("Content-Type", "application/json")
            .with_body(body.to_string().into_bytes())
    }

    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }
}

impl ports::Request for Request {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    fn query(&self) -> Option<String> {
        self.query.clone()
    }

    fn scheme_and_host(&self) -> (String, String) {
        ("https".into(), "edge.example:8443".into())
    }

    fn client(&self) -> ports::Client {
        ports::Client::from_cf(&self.cf, self.header("CF-Connecting-IP"))
    }

    async fn body(&self, _limit: usize) -> Result<Vec<u8>, EdgeError> {
        match &self.body_error {
            Some(e) => Err(e.clone()),
            None => Ok(self.body.clone()),
        }
    }
}

/// Key records by hash, a limiter answer, and how often the store was read.
#[derive(Default)]
pub struct Keys {
    pub records: HashMap<String, String>,
    pub over_limit: bool,
    pub unavailable: bool,
    pub reads: Cell<usize>,
}

impl Keys {
    pub fn with_active(key: &str, env_id: u32) -> Self {
        let mut keys = Self::default();
        keys.records.insert(
            intake::credentials::key_hash(key),
            format!(r#"{{"env_id":{env_id},"name":"test","status":"active"}}"#),
        );
        keys
    }
}

impl ports::KeyStore for Keys {
    async fn get(&self, key_hash: &str) -> Result<Option<String>, EdgeError> {
        self.reads.set(self.reads.get() + 1);
        if self.unavailable {
            return Err(EdgeError::KeyStoreUnavailable);
        }
        Ok(self.records.get(key_hash).cloned())
    }

    async fn within_rate_limit(&self, _key_hash: &str) -> bool {
        !self.over_limit
    }
}

/// A queue that records every `sendBatch` and fails the first `failures`.
#[derive(Default)]
pub struct Queue {
    pub missing: bool,
    pub failures: Cell<usize>,
    pub attempts: Cell<usize>,
    pub sent: RefCell<Vec<Vec<String>>>,
}

impl ports::EventQueue for Queue {
    fn ready(&self) -> Result<(), EdgeError> {
        if self.missing {
            Err(EdgeError::Internal("no queue binding".into()))
        } else {
            Ok(())
        }
    }

    async fn send_batch(&self, bodies: &[String]) -> Result<(), String> {
        self.attempts.set(self.attempts.get() + 1);
        if self.failures.get() > 0 {
            self.failures.set(self.failures.get() - 1);
            return Err("queue says no".into());
        }
        self.sent.borrow_mut().push(bodies.to_vec());
        Ok(())
    }
}

impl ports::DeadLetterQueue for Queue {
    async fn send(&self, text: &str) -> Result<(), String> {
        ports::EventQueue::send_batch(self, &[text.to_owned()]).await
    }
}

impl Queue {
    /// Envelopes in everything sent so far.
    pub fn envelopes(&self) -> usize {
        self.sent
            .borrow()
            .iter()
            .flatten()
            .map(|body| {
                serde_json::from_str::<Vec<Value>>(body)
                    .map(|v| v.len())
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// A backend answering from a script: each request, to `/v1/ingest`
/// (`bodies`) or `/v1/ingest/reports` (`reports`), gets `answer(body)`.
pub struct Backend<F: Fn(&str) -> Outcome> {
    pub answer: F,
    pub bodies: RefCell<Vec<String>>,
    pub reports: RefCell<Vec<String>>,
}

impl<F: Fn(&str) -> Outcome> Backend<F> {
    pub fn new(answer: F) -> Self {
        Self {
            answer,
            bodies: RefCell::new(Vec::new()),
            reports: RefCell::new(Vec::new()),
        }
    }

    /// Every report posted, decoded.
    pub fn posted_reports(&self) -> Vec<protocol::Reports> {
        self.reports
            .borrow()
            .iter()
            .map(|body| serde_json::from_str(body).expect("a Reports body"))
            .collect()
    }
}

impl<F: Fn(&str) -> Outcome> ports::Backend for Backend<F> {
    async fn ingest(&self, body: &str) -> Outcome {
        self.bodies.borrow_mut().push(body.to_owned());
        (self.answer)(body)
    }

    async fn report(&self, body: &str) -> Outcome {
        self.reports.borrow_mut().push(body.to_owned());
        (self.answer)(body)
    }
}

#[derive(Default)]
pub struct Store {
    pub fail: bool,
    /// (key, value, TTL in seconds) of every put.
    pub puts: RefCell<Vec<(String, String, Option<u64>)>>,
    /// Environments' retention records (days).
    pub retention: std::collections::HashMap<u32, u32>,
}

impl ports::DeadLetterStore for Store {
    async fn put(&self, key: &str, value: &str, ttl_seconds: Option<u64>) -> Result<(), String> {
        if self.fail {
            return Err("kv says no".into());
        }
        self.puts
            .borrow_mut()
            .push((key.to_owned(), value.to_owned(), ttl_seconds));
        Ok(())
    }

    async fn retention_days(&self, env_id: u32) -> Result<Option<u32>, String> {
        if self.fail {
            return Err("kv says no".into());
        }
        Ok(self.retention.get(&env_id).copied())
    }
}

/// A fixed clock whose sleeps are recorded and return at the next poll
/// (they yield once, so joined futures can run while one sleeps).
#[derive(Default)]
pub struct Clock {
    pub slept: RefCell<Vec<u64>>,
}

impl intake::door::Clock for Clock {
    fn now_ms(&self) -> i64 {
        NOW
    }

    fn random10(&self) -> [u8; 10] {
        [7; 10]
    }
}

impl ports::Clock for Clock {
    async fn sleep_ms(&self, ms: u64) {
        self.slept.borrow_mut().push(ms);
        YieldOnce(false).await;
    }
}

/// Pending once (waking itself at once), then ready.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Every log line, as (level, event).
#[derive(Default)]
pub struct Log {
    pub lines: RefCell<Vec<(&'static str, String)>>,
}

impl Log {
    pub fn has(&self, event: &str) -> bool {
        self.lines.borrow().iter().any(|(_, e)| e == event)
    }
}

impl ports::Log for Log {
    fn info(&self, event: &str, _fields: Value) {
        self.lines.borrow_mut().push(("info", event.to_owned()));
    }

    fn error(&self, event: &str, _fields: Value) {
        self.lines.borrow_mut().push(("error", event.to_owned()));
    }
}

/// What the consumer did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Acked,
    Retried(u32),
}

pub struct Message {
    pub id: String,
    pub attempts: u32,
    pub body: String,
    pub done: RefCell<VecDeque<Done>>,
}

impl Message {
    pub fn new(id: &str, attempts: u32, body: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            attempts,
            body: body.into(),
            done: RefCell::new(VecDeque::new()),
        }
    }

    /// The one thing done with it (a message is acked or retried once).
    pub fn outcome(&self) -> Option<Done> {
        let done = self.done.borrow();
        assert!(done.len() <= 1, "{} decided twice: {done:?}", self.id);
        done.front().cloned()
    }
}

impl ports::Message for Message {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn attempts(&self) -> u32 {
        self.attempts
    }

    fn body(&self) -> String {
        self.body.clone()
    }

    fn ack(&self) {
        self.done.borrow_mut().push_back(Done::Acked);
    }

    fn retry(&self, delay_seconds: u32) {
        self.done
            .borrow_mut()
            .push_back(Done::Retried(delay_seconds));
    }
}
