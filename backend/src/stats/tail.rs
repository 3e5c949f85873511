//! The live tail (`GET /v1/stats/tail`): an environment's events as they
//! are stored and its sampled refusals, for the dashboard's debugger.
//!
//! One poller per environment per process reads the primary shard every
//! [`POLL_INTERVAL`], whatever the number of viewers, into a bounded ring
//! of recent items ([`RING_ITEMS`], [`RING_AGE`], [`RING_BYTES`]) with ids
//! that only grow; a viewer holds only shared pointers into it.
//! Viewers read the ring after the last id they sent; nothing waits for a
//! viewer: the poller overwrites the ring, a viewer that fell out of it is
//! dropped (it reconnects with `Last-Event-ID` and is told of the gap), and
//! ingest never touches any of this (the poller reads the database).
//!
//! The cursor: rows are stamped with `stored_at` when their statement
//! starts and become visible at commit, a little later, so a row can appear
//! with a `stored_at` older than rows already read. Each poll re-reads the
//! keys of the last [`OVERLAP_MS`] before the newest stored time seen (an
//! index-only scan) and reads whole only the keys it has not seen. A row
//! that commits more than the overlap after its statement started is not
//! shown (nothing else is lost: it is stored and counted).

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};

use crate::query::Query;
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::{auth::ReadAuth, primary_shard};
use crate::{
    catalog::{Environment, Shard},
    error::Result,
    store::{RejectedSample, TailKey, TailStore},
    AppState,
};

/// How often an environment's poller reads its shard.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How far before the newest stored time seen each poll reads again (rows
/// commit after their `stored_at`).
pub const OVERLAP_MS: i64 = 3_000;
/// The shortest overlap a poll falls back to under load (see `Cursor::overlap_ms`).
pub const MIN_OVERLAP_MS: i64 = 250;
/// The ring buffer of an environment: at most this many items ...
pub const RING_ITEMS: usize = 10_000;
/// ... and none older than this (the window of a gapless reconnect).
pub const RING_AGE: Duration = Duration::from_secs(30);
/// ... and at most this many bytes of serialized items (events are up to
/// 64 KB each).
pub const RING_BYTES: usize = 32 << 20;
/// What one viewer is sent per second at most (burst: one second's worth);
/// the rest is counted in a `skipped` marker.
pub const VIEWER_RATE: f64 = 200.0;
/// A poller outlives its last viewer by this much, so that a reconnect
/// within it (`Last-Event-ID`) finds the ring still there.
pub const LINGER: Duration = Duration::from_secs(15);
/// Keys per read of the stored-time index.
const KEYS_PER_PAGE: u32 = 2_000;
/// New rows one poll reads at most; past it the next poll starts at once.
const NEW_ROWS_PER_POLL: usize = 10_000;
/// Pages one poll reads at most (overlap included).
const PAGES_PER_POLL: usize = 20;
/// Rows read whole per statement.
const ROWS_PER_READ: usize = 500;
/// Samples one poll reads at most (the doors sample a bounded number per minute).
const REJECTED_PER_POLL: u32 = 1_000;
/// A new viewer starts with at most this many recent items.
const BACKLOG: usize = 100;
/// Items a viewer takes from the ring at once.
const BATCH: usize = 1_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What an item is, for the filters.
#[derive(Debug, Clone)]
enum Kind {
    Event {
        name: String,
        user_id: Option<String>,
        anonymous_id: Option<String>,
    },
    Rejected,
}

/// One item of the tail, serialized once for every viewer.
#[derive(Debug)]
struct Item {
    id: u64,
    kind: Kind,
    data: String,
    added: Instant,
}

impl Item {
    fn event(&self) -> Event {
        let name = match self.kind {
            Kind::Event { .. } => "event",
            Kind::Rejected => "rejected",
        };
        Event::default()
            .id(self.id.to_string())
            .event(name)
            .data(&self.data)
    }
}

#[derive(Debug, Default)]
struct Ring {
    items: VecDeque<Arc<Item>>,
    /// The serialized size of `items`.
    bytes: usize,
    /// Items of this environment with an id up to this one may be missing
    /// (evicted, or from before the ring existed); after it, none is.
    floor: u64,
}

/// Why a viewer cannot go on from where it is.
struct Evicted;

/// One environment's ring, its newest id, and how many viewers read it.
struct Channel {
    ring: Mutex<Ring>,
    head: watch::Sender<u64>,
    viewers: AtomicUsize,
    /// When the last viewer left (for [`LINGER`]).
    left: Mutex<Instant>,
}

impl Channel {
    fn new(floor: u64) -> Self {
        Self {
            ring: Mutex::new(Ring {
                items: VecDeque::new(),
                bytes: 0,
                floor,
            }),
            head: watch::channel(floor).0,
            viewers: AtomicUsize::new(0),
            left: Mutex::new(Instant::now()),
        }
    }

    fn evict(ring: &mut Ring) {
        while let Some(front) = ring.items.front() {
            if ring.items.len() <= RING_ITEMS
                && ring.bytes <= RING_BYTES
                && front.added.elapsed() <= RING_AGE
            {
                break;
            }
            ring.floor = front.id;
            ring.bytes -= front.data.len();
            ring.items.pop_front();
        }
    }

    fn push(&self, items: Vec<Item>) {
        let mut ring = lock(&self.ring);
        let last = items.last().map(|i| i.id);
        ring.bytes += items.iter().map(|i| i.data.len()).sum::<usize>();
        ring.items.extend(items.into_iter().map(Arc::new));
        Self::evict(&mut ring);
        drop(ring);
        if let Some(last) = last {
            self.head.send_replace(last);
        }
    }

    /// Items after `pos`, at most `max`; `Evicted` when some are gone.
    fn after(&self, pos: u64, max: usize) -> std::result::Result<Vec<Arc<Item>>, Evicted> {
        let ring = lock(&self.ring);
        if pos < ring.floor {
            return Err(Evicted);
        }
        let start = ring.items.partition_point(|i| i.id <= pos);
        Ok(ring.items.range(start..).take(max).cloned().collect())
    }

    /// Where a viewer starts: after `last` when nothing of this
    /// environment after it is gone, else (`true`: a gap) with the recent
    /// backlog, like a new viewer.
    fn start(&self, last: Option<u64>, issued: u64) -> (u64, bool) {
        let ring = lock(&self.ring);
        if let Some(last) = last {
            if last >= ring.floor && last <= issued {
                return (last, false);
            }
        }
        let backlog = ring
            .items
            .len()
            .checked_sub(BACKLOG + 1)
            .map_or(ring.floor, |i| ring.items[i].id);
        (backlog, last.is_some())
    }
}

/// The live tail's pollers, one per environment with viewers, and the ids
/// they give items (one sequence per process, starting at its start time
/// in µs, so a restarted process does not reuse ids).
pub struct TailHub {
    channels: Mutex<HashMap<u32, Arc<Channel>>>,
    next_id: AtomicU64,
    polls: AtomicU64,
}

impl Default for TailHub {
    fn default() -> Self {
        let start = chrono::Utc::now().timestamp_micros().max(0) as u64;
        Self {
            channels: Mutex::default(),
            next_id: AtomicU64::new(start),
            polls: AtomicU64::new(0),
        }
    }
}

impl TailHub {
    /// Polls done by every tail poller of this process so far.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Environments with a running poller.
    pub fn pollers(&self) -> usize {
        lock(&self.channels).len()
    }

    /// The highest id issued so far.
    fn issued(&self) -> u64 {
        self.next_id.load(Ordering::SeqCst)
    }

    /// `n` new ids, the first of them returned.
    fn ids(&self, n: usize) -> u64 {
        self.next_id.fetch_add(n as u64, Ordering::SeqCst) + 1
    }
}

/// Where one environment's poller is: the newest stored time it read, and
/// the keys of the overlap before it.
#[derive(Debug)]
struct Cursor {
    newest: i64,
    /// How far before `newest` the next poll reads again: [`OVERLAP_MS`],
    /// halved (down to [`MIN_OVERLAP_MS`]) while a poll's pages hold only
    /// rows already seen — at thousands of events per second the full
    /// overlap would be more than a poll reads, and the tail would stop —
    /// and grown back while polls are not full.
    overlap_ms: i64,
    seen: HashMap<[u8; 16], i64>,
    rejected_newest: i64,
    rejected_seen: HashMap<([u8; 16], u16), i64>,
}

impl Cursor {
    fn new(now: i64) -> Self {
        Self {
            newest: now,
            overlap_ms: OVERLAP_MS,
            seen: HashMap::new(),
            rejected_newest: now,
            rejected_seen: HashMap::new(),
        }
    }
}

/// An item read, before it has an id.
enum Read {
    Event(i64, protocol::Envelope),
    Rejected(RejectedSample),
}

impl Read {
    fn stored_at(&self) -> i64 {
        match self {
            Read::Event(at, _) => *at,
            Read::Rejected(r) => r.stored_at,
        }
    }

    fn into_item(self, id: u64) -> Item {
        let (kind, data) = match self {
            Read::Event(stored_at, envelope) => {
                let data = json!({
                    "id": id,
                    "kind": "event",
                    "stored_at": stored_at,
                    "type": envelope.event_type.as_str(),
                    "event": envelope,
                });
                (
                    Kind::Event {
                        name: envelope.name,
                        user_id: envelope.user_id,
                        anonymous_id: envelope.anonymous_id,
                    },
                    data,
                )
            }
            Read::Rejected(sample) => {
                let mut data = serde_json::to_value(&sample).unwrap_or_default();
                data["id"] = json!(id);
                data["kind"] = json!("rejected");
                (Kind::Rejected, data)
            }
        };
        Item {
            id,
            kind,
            data: data.to_string(),
            added: Instant::now(),
        }
    }
}

/// One poll: what was stored since the cursor and not read yet, in stored
/// order, and whether the poll stopped at its bound with more to read.
async fn read(
    store: &dyn TailStore,
    shard: &Shard,
    env_id: u32,
    cursor: &mut Option<Cursor>,
) -> Result<(Vec<Read>, bool)> {
    let c = match cursor {
        Some(c) => c,
        None => cursor.insert(Cursor::new(store.clock(shard).await?)),
    };
    let since = c.newest - c.overlap_ms;
    let mut fresh: Vec<TailKey> = Vec::new();
    let mut after: Option<TailKey> = None;
    let mut more = false;
    let mut samples = Vec::new();
    for page_no in 0..PAGES_PER_POLL {
        // The first page and the refusals in one statement (an idle poll
        // costs one SELECT); further pages of keys alone.
        let page = if page_no == 0 {
            let (page, rejected) = store
                .changes(
                    shard,
                    env_id,
                    (since, KEYS_PER_PAGE),
                    (c.rejected_newest - OVERLAP_MS, REJECTED_PER_POLL),
                )
                .await?;
            samples = rejected;
            page
        } else {
            store
                .stored_keys(shard, env_id, since, after, KEYS_PER_PAGE)
                .await?
        };
        let full = page.len() == KEYS_PER_PAGE as usize;
        after = page.last().copied().or(after);
        for (at, key) in page {
            if c.seen.insert(key, at).is_none() {
                fresh.push((at, key));
            }
        }
        more = full;
        if !full || fresh.len() >= NEW_ROWS_PER_POLL {
            break;
        }
    }
    let mut found: HashMap<[u8; 16], protocol::Envelope> = HashMap::with_capacity(fresh.len());
    for chunk in fresh.chunks(ROWS_PER_READ) {
        let keys: Vec<[u8; 16]> = chunk.iter().map(|(_, k)| *k).collect();
        for envelope in store.events(shard, env_id, &keys).await? {
            found.insert(envelope.key(), envelope);
        }
    }
    let mut items: Vec<Read> = fresh
        .iter()
        .filter_map(|(at, key)| found.remove(key).map(|e| Read::Event(*at, e)))
        .collect();
    // Every key up to `after` was read (seen before or fresh).
    if let Some((newest, _)) = after {
        c.newest = c.newest.max(newest);
    }
    c.overlap_ms = if more && fresh.is_empty() {
        (c.overlap_ms / 2).max(MIN_OVERLAP_MS)
    } else if !more {
        (c.overlap_ms * 2).min(OVERLAP_MS)
    } else {
        c.overlap_ms
    };
    let keep_from = c.newest - OVERLAP_MS;
    c.seen.retain(|_, at| *at >= keep_from);

    for sample in samples {
        if c.rejected_seen
            .insert((sample.source, sample.seq), sample.stored_at)
            .is_none()
        {
            c.rejected_newest = c.rejected_newest.max(sample.stored_at);
            items.push(Read::Rejected(sample));
        }
    }
    let keep_from = c.rejected_newest - OVERLAP_MS;
    c.rejected_seen.retain(|_, at| *at >= keep_from);
    // Stable: events keep their (stored_at, key) order.
    items.sort_by_key(Read::stored_at);
    Ok((items, more))
}

/// Whether the poller of `channel` should stop; if so it is unregistered
/// (under the hub's lock, which subscribing takes too).
fn retire(state: &AppState, env_id: u32, channel: &Arc<Channel>) -> bool {
    if channel.viewers.load(Ordering::SeqCst) > 0 || lock(&channel.left).elapsed() < LINGER {
        return false;
    }
    let mut channels = lock(&state.tail.channels);
    if channel.viewers.load(Ordering::SeqCst) > 0 {
        return false;
    }
    if channels
        .get(&env_id)
        .is_some_and(|c| Arc::ptr_eq(c, channel))
    {
        channels.remove(&env_id);
    }
    true
}

async fn poll(state: AppState, env: Environment, channel: Arc<Channel>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor = None;
    loop {
        tick.tick().await;
        if retire(&state, env.id, &channel) {
            return;
        }
        let read = match primary_shard(&state, &env) {
            Ok(shard) => read(state.tail_store.as_ref(), &shard, env.id, &mut cursor).await,
            Err(e) => Err(e),
        };
        state.tail.polls.fetch_add(1, Ordering::Relaxed);
        state.metrics.tail_polls.inc();
        match read {
            Ok((reads, more)) => {
                let first = state.tail.ids(reads.len());
                let items: Vec<Item> = reads
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| r.into_item(first + i as u64))
                    .collect();
                channel.push(items);
                if more {
                    tick.reset_immediately();
                }
            }
            Err(error) => {
                // Evict by age even when nothing can be read.
                channel.push(Vec::new());
                tracing::warn!(env = %env.name, %error, "live tail read failed");
            }
        }
    }
}

/// The viewer's filters (`name=`, `user=`, `rejected=1`).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct TailParams {
    pub name: Option<String>,
    pub user: Option<String>,
    pub rejected: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Filter {
    name: Option<String>,
    user: Option<String>,
    rejected_only: bool,
}

impl Filter {
    fn new(params: TailParams) -> Self {
        let given = |v: Option<String>| v.filter(|v| !v.is_empty());
        Self {
            name: given(params.name),
            user: given(params.user),
            rejected_only: matches!(params.rejected.as_deref(), Some("1" | "true")),
        }
    }

    /// Refusals carry no name or user: a name or user filter hides them.
    fn matches(&self, kind: &Kind) -> bool {
        match kind {
            Kind::Rejected => self.name.is_none() && self.user.is_none(),
            Kind::Event {
                name,
                user_id,
                anonymous_id,
            } => {
                !self.rejected_only
                    && self.name.as_ref().is_none_or(|n| n == name)
                    && self.user.as_ref().is_none_or(|u| {
                        user_id.as_ref() == Some(u) || anonymous_id.as_ref() == Some(u)
                    })
            }
        }
    }
}

/// A token bucket: [`VIEWER_RATE`] per second, a second's worth at once.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * VIEWER_RATE).min(VIEWER_RATE);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A viewer's next frame.
enum Out {
    Item(Arc<Item>),
    Marker(Event),
}

/// One viewer's place in its environment's ring.
struct Viewer {
    channel: Arc<Channel>,
    head: watch::Receiver<u64>,
    pos: u64,
    filter: Filter,
    bucket: Bucket,
    /// What to send next: ring items (shared, serialized once) or markers.
    out: VecDeque<Out>,
    done: bool,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        *lock(&self.channel.left) = Instant::now();
        self.channel.viewers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Viewer {
    fn open(state: &AppState, env: &Environment, filter: Filter, last: Option<u64>) -> Self {
        let channel = {
            let mut channels = lock(&state.tail.channels);
            let channel = match channels.get(&env.id) {
                Some(channel) => channel.clone(),
                None => {
                    let channel = Arc::new(Channel::new(state.tail.issued()));
                    channels.insert(env.id, channel.clone());
                    tokio::spawn(poll(state.clone(), env.clone(), channel.clone()));
                    channel
                }
            };
            channel.viewers.fetch_add(1, Ordering::SeqCst);
            channel
        };
        let (pos, gap) = channel.start(last, state.tail.issued());
        let mut out = VecDeque::new();
        if gap {
            out.push_back(Out::Marker(Event::default().event("gap").data(
                json!({
                    "kind": "gap",
                    "after": last,
                    "message": "the items after Last-Event-ID are no longer kept (past the reconnect window, or another backend process): some may be missing",
                })
                .to_string(),
            )));
        }
        Self {
            head: channel.head.subscribe(),
            channel,
            pos,
            filter,
            bucket: Bucket {
                tokens: VIEWER_RATE,
                at: Instant::now(),
            },
            out,
            done: false,
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            match self.out.pop_front() {
                Some(Out::Item(item)) => return Some(item.event()),
                Some(Out::Marker(event)) => return Some(event),
                None => {}
            }
            if self.done {
                return None;
            }
            self.head.borrow_and_update();
            let batch = match self.channel.after(self.pos, BATCH) {
                Ok(batch) => batch,
                Err(Evicted) => {
                    // Too slow for the ring: dropped, not waited for.
                    self.done = true;
                    self.out.push_back(Out::Marker(
                        Event::default().event("dropped").data(
                            json!({"kind": "dropped", "after": self.pos,
                                   "message": "this viewer fell behind the tail's buffer"})
                            .to_string(),
                        ),
                    ));
                    continue;
                }
            };
            if batch.is_empty() {
                if self.head.changed().await.is_err() {
                    return None;
                }
                continue;
            }
            let mut skipped = 0u64;
            for item in &batch {
                self.pos = item.id;
                if !self.filter.matches(&item.kind) {
                    continue;
                }
                if self.bucket.take() {
                    self.out.push_back(Out::Item(item.clone()));
                } else {
                    skipped += 1;
                }
            }
            if skipped > 0 {
                self.out.push_back(Out::Marker(
                    Event::default()
                        .id(self.pos.to_string())
                        .event("skipped")
                        .data(
                            json!({"id": self.pos, "kind": "skipped", "skipped": skipped})
                                .to_string(),
                        ),
                ));
            }
        }
    }
}

/// `GET /v1/stats/tail?env=&name=&user=&rejected=1`: Server-Sent Events,
/// `event` (a stored event, whole) and `rejected` (a sampled refusal) items
/// with their id, at most [`VIEWER_RATE`] per second and a `skipped` marker
/// for the rest; `Last-Event-ID` resumes after that id when it is still in
/// the ring, else a `gap` event says items may be missing.
pub async fn tail(
    State(state): State<AppState>,
    auth: ReadAuth,
    Query(params): Query<TailParams>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    primary_shard(&state, &auth.env)?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let viewer = Viewer::open(&state, &auth.env, Filter::new(params), last);
    let stream = futures::stream::unfold(viewer, |mut viewer| async move {
        viewer.next().await.map(|event| (Ok(event), viewer))
    });
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}

#[cfg(test)]
mod tests {
    //! The tail on in-memory storage, through `app(state)`.

    use std::sync::Arc;

    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt as _;
    use serde_json::Value;
    use tower::ServiceExt as _;

    use super::*;
    use crate::{
        app,
        catalog::Catalog,
        store::memory::{MemoryCatalog, MemoryStore},
        Config, Ports,
    };

    const TOKEN: &str = "unit-ingest-token-0123456789abcdef0123456789";
    const WEB: u32 = 10;

    async fn state() -> (AppState, Arc<MemoryStore>) {
        let catalog = Arc::new(MemoryCatalog::new());
        catalog.add_shard(1, "a");
        catalog.put_environment(WEB, "web", 1, None);
        catalog.add_read_token("srt_web", WEB);
        catalog.add_api_key("sk_unit_web", WEB);
        let config = Config::new("mysql://nobody@127.0.0.1:1/none", TOKEN);
        let opened = Catalog::open(catalog, config.catalog_refresh())
            .await
            .expect("memory catalog");
        let store = Arc::new(MemoryStore::new());
        (
            AppState::from_parts(config, opened, Ports::all(store.clone())),
            store,
        )
    }

    fn envelope(n: u64, name: &str, user: &str) -> Value {
        let now = chrono::Utc::now().timestamp_millis();
        json!({"id": protocol::uuid_v7(1_700_000_000_000 + n, &[n as u8; 10]), "env_id": WEB,
               "name": name, "timestamp": now, "received_at": now, "user_id": user,
               "anonymous_id": format!("anon-{user}"), "properties": {"n": n},
               "context": {"country": "DE", "page": {"url": "/x"}}})
    }

    async fn ingest(state: &AppState, batch: Vec<Value>) {
        let request = Request::post("/v1/ingest")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&batch).unwrap()))
            .unwrap();
        let response = app(state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }

    /// One frame of the stream: (event, id, data).
    type Frame = (String, Option<String>, Value);

    struct Sse {
        body: Body,
        buffer: String,
    }

    impl Sse {
        async fn open(state: &AppState, query: &str, last: Option<&str>) -> Self {
            let mut request = Request::get(format!("/v1/stats/tail?env=web{query}"))
                .header("authorization", "Bearer srt_web");
            if let Some(last) = last {
                request = request.header("last-event-id", last);
            }
            let response = app(state.clone())
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            Self {
                body: response.into_body(),
                buffer: String::new(),
            }
        }

        /// The next frame within `wait`, or `None`.
        async fn within(&mut self, wait: Duration) -> Option<Frame> {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let frame: String = self.buffer.drain(..end + 2).collect();
                    let field = |name: &str| {
                        frame
                            .lines()
                            .find_map(|l| l.strip_prefix(name))
                            .map(|s| s.trim().to_string())
                    };
                    if let Some(data) = field("data:") {
                        let event = field("event:").unwrap_or_else(|| "message".into());
                        return Some((event, field("id:"), serde_json::from_str(&data).unwrap()));
                    }
                    continue;
                }
                let frame = tokio::time::timeout_at(deadline, self.body.frame())
                    .await
                    .ok()??
                    .expect("frame");
                if let Ok(data) = frame.into_data() {
                    self.buffer.push_str(&String::from_utf8_lossy(&data));
                }
            }
        }

        async fn next(&mut self) -> Frame {
            self.within(Duration::from_secs(3))
                .await
                .expect("a frame within 3 s")
        }
    }

    #[tokio::test]
    async fn stored_events_appear_whole_and_filters_apply() {
        let (state, store) = state().await;
        let mut all = Sse::open(&state, "", None).await;
        let mut by_name = Sse::open(&state, "&name=buy", None).await;
        let mut by_user = Sse::open(&state, "&user=anon-bob", None).await;
        let mut rejected = Sse::open(&state, "&rejected=1", None).await;
        ingest(
            &state,
            vec![
                envelope(1, "view", "alice"),
                envelope(2, "buy", "alice"),
                envelope(3, "view", "bob"),
            ],
        )
        .await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (event, id, data) = all.next().await;
            assert_eq!(event, "event");
            assert_eq!(id.unwrap(), data["id"].to_string());
            seen.push(data);
        }
        assert_eq!(seen[1]["event"]["name"], "buy");
        assert_eq!(seen[1]["type"], "track");
        assert_eq!(seen[1]["event"]["properties"]["n"], 2);
        assert_eq!(seen[1]["event"]["context"]["page"]["url"], "/x");
        assert_eq!(seen[1]["event"]["user_id"], "alice");
        assert!(seen[0]["stored_at"].as_i64().unwrap() > 0);
        let (_, _, only) = by_name.next().await;
        assert_eq!(only["event"]["properties"]["n"], 2);
        let (_, _, only) = by_user.next().await;
        assert_eq!(
            only["event"]["properties"]["n"], 3,
            "user= matches anonymous_id"
        );
        assert!(by_name.within(Duration::from_millis(800)).await.is_none());

        // A refusal: on the unfiltered and the rejected-only streams.
        store.add_rejected_sample(
            1,
            WEB,
            RejectedSample {
                source: [7; 16],
                seq: 0,
                stored_at: 0,
                received_at: 1_700_000_000_000,
                code: "invalid_json".into(),
                message: "the body is not JSON".into(),
                body: "{oops".into(),
            },
        );
        let (event, _, data) = rejected.next().await;
        assert_eq!(event, "rejected");
        assert_eq!(
            (
                data["code"].as_str(),
                data["message"].as_str(),
                data["body"].as_str()
            ),
            (
                Some("invalid_json"),
                Some("the body is not JSON"),
                Some("{oops")
            )
        );
        let (event, _, _) = all.next().await;
        assert_eq!(event, "rejected");
        assert!(by_user.within(Duration::from_millis(800)).await.is_none());
    }

    fn sample(n: u8) -> RejectedSample {
        RejectedSample {
            source: [n; 16],
            seq: 0,
            stored_at: 0,
            received_at: 0,
            code: "invalid_events".into(),
            message: format!("refusal {n}"),
            body: String::new(),
        }
    }

    #[tokio::test]
    async fn last_event_id_resumes_without_gap_or_repeat() {
        let (state, _) = state().await;
        let mut first = Sse::open(&state, "", None).await;
        ingest(&state, (0..10).map(|n| envelope(n, "a", "u")).collect()).await;
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(first.next().await);
        }
        drop(first);
        let last = got.last().unwrap().1.clone().unwrap();
        ingest(&state, (10..15).map(|n| envelope(n, "a", "u")).collect()).await;
        tokio::time::sleep(POLL_INTERVAL * 2).await;
        let mut resumed = Sse::open(&state, "", Some(&last)).await;
        while let Some(frame) = resumed.within(Duration::from_millis(1500)).await {
            got.push(frame);
        }
        let ns: Vec<i64> = got
            .iter()
            .map(|(_, _, d)| d["event"]["properties"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, (0..15).collect::<Vec<_>>(), "no gap, no repeat");

        // An id past the window (or of another process) is told as a gap.
        let mut lost = Sse::open(&state, "", Some("12")).await;
        let (event, _, data) = lost.next().await;
        assert_eq!((event.as_str(), data["after"].as_u64()), ("gap", Some(12)));
    }

    #[tokio::test]
    async fn a_viewer_over_the_rate_gets_a_skipped_marker() {
        let (state, _) = state().await;
        let mut viewer = Sse::open(&state, "", None).await;
        ingest(&state, (0..500).map(|n| envelope(n, "a", "u")).collect()).await;
        let mut events = 0;
        let skipped = loop {
            let (event, id, data) = viewer.next().await;
            match event.as_str() {
                "event" => events += 1,
                "skipped" => {
                    assert_eq!(id.unwrap(), data["id"].to_string());
                    break data["skipped"].as_u64().unwrap();
                }
                other => panic!("{other}"),
            }
        };
        // A second's worth at once (plus what refilled meanwhile, on a busy machine).
        assert!(
            (200..250).contains(&events),
            "{events} events before the marker"
        );
        assert_eq!(events + skipped, 500);
    }

    #[tokio::test]
    async fn one_poller_reads_for_every_viewer() {
        let (state, store) = state().await;
        let mut viewers = Vec::new();
        for _ in 0..50 {
            viewers.push(Sse::open(&state, "", None).await);
        }
        store.add_rejected_sample(1, WEB, sample(1));
        for viewer in &mut viewers {
            assert_eq!(viewer.next().await.0, "rejected");
        }
        let before = state.tail.polls();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let polls = state.tail.polls() - before;
        assert!(
            (3..=5).contains(&polls),
            "{polls} polls in 2 s for 50 viewers"
        );
        assert_eq!(state.tail.pollers(), 1);
        assert_eq!(
            state.metrics.tail_polls.get(),
            state.tail.polls(),
            "/metrics counts every poll"
        );
    }

    fn item(id: u64) -> Item {
        Item {
            id,
            kind: Kind::Rejected,
            data: "{}".into(),
            added: Instant::now(),
        }
    }

    #[test]
    fn the_ring_is_bounded_and_a_viewer_behind_it_is_evicted() {
        let channel = Channel::new(100);
        channel.push((101..=100 + RING_ITEMS as u64 + 5).map(item).collect());
        let ring = lock(&channel.ring);
        assert_eq!(ring.items.len(), RING_ITEMS);
        assert_eq!(ring.floor, 105);
        drop(ring);
        assert!(channel.after(104, 10).is_err(), "fell out of the ring");
        let next = channel.after(105, 10).ok().unwrap();
        assert_eq!(next.first().map(|i| i.id), Some(106));
        // A reconnect within the ring resumes; one before it is a gap.
        assert_eq!(channel.start(Some(200), 20_000), (200, false));
        assert!(channel.start(Some(50), 20_000).1);
        let (pos, gap) = channel.start(None, 20_000);
        assert!(!gap);
        assert_eq!(channel.after(pos, BATCH).ok().unwrap().len(), BACKLOG);
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_too() {
        let channel = Channel::new(0);
        let big = |id| Item {
            data: "x".repeat(1 << 20),
            ..item(id)
        };
        channel.push((1..=40).map(big).collect());
        let ring = lock(&channel.ring);
        assert_eq!(ring.items.len(), RING_BYTES >> 20);
        assert_eq!(ring.bytes, RING_BYTES);
        assert_eq!(ring.floor, 40 - (RING_BYTES >> 20) as u64);
    }

    /// A store whose rows become visible late (their commit after their stored time).
    #[derive(Default)]
    struct Late {
        rows: Mutex<Vec<(i64, [u8; 16])>>,
        now: AtomicU64,
    }

    #[async_trait::async_trait]
    impl TailStore for Late {
        async fn clock(&self, _: &Shard) -> Result<i64> {
            Ok(self.now.load(Ordering::SeqCst) as i64)
        }
        async fn stored_keys(
            &self,
            _: &Shard,
            _: u32,
            since: i64,
            after: Option<TailKey>,
            limit: u32,
        ) -> Result<Vec<TailKey>> {
            let mut rows: Vec<TailKey> = lock(&self.rows)
                .iter()
                .copied()
                .filter(|k| k.0 >= since && after.is_none_or(|a| *k > a))
                .collect();
            rows.sort();
            rows.truncate(limit as usize);
            Ok(rows)
        }
        async fn events(
            &self,
            _: &Shard,
            _: u32,
            keys: &[[u8; 16]],
        ) -> Result<Vec<protocol::Envelope>> {
            Ok(keys
                .iter()
                .map(|k| protocol::Envelope {
                    id: protocol::uuid_of_key(*k),
                    name: "late".into(),
                    ..Default::default()
                })
                .collect())
        }
        async fn rejected_since(
            &self,
            _: &Shard,
            _: u32,
            _: i64,
            _: u32,
        ) -> Result<Vec<RejectedSample>> {
            Ok(Vec::new())
        }
    }

    fn key(n: u32) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[12..].copy_from_slice(&n.to_be_bytes());
        k
    }

    #[tokio::test]
    async fn rows_that_commit_late_within_the_overlap_are_read_once() {
        let store = Late::default();
        store.now.store(1_000_000, Ordering::SeqCst);
        let shard = Shard {
            id: 1,
            name: "a".into(),
            url: String::new(),
            status: crate::model::ShardStatus::Active,
        };
        let mut cursor = None;
        let (none, _) = read(&store, &shard, WEB, &mut cursor).await.unwrap();
        assert!(none.is_empty());
        lock(&store.rows).push((1_000_500, key(1)));
        let (one, _) = read(&store, &shard, WEB, &mut cursor).await.unwrap();
        assert_eq!(one.len(), 1);
        // Visible now, stored before the row already read: still within the overlap.
        lock(&store.rows).push((1_000_400, key(2)));
        lock(&store.rows).push((1_000_600, key(3)));
        let (two, _) = read(&store, &shard, WEB, &mut cursor).await.unwrap();
        assert_eq!(
            two.iter().map(Read::stored_at).collect::<Vec<_>>(),
            vec![1_000_400, 1_000_600]
        );
        let (again, _) = read(&store, &shard, WEB, &mut cursor).await.unwrap();
        assert!(again.is_empty(), "nothing is read twice");

        // More than a poll's bound: the rest comes with the next polls.
        let total = NEW_ROWS_PER_POLL + 3_000;
        lock(&store.rows)
            .extend((0..total as u32).map(|n| (1_001_000 + i64::from(n / 10), key(100 + n))));
        let (first, more) = read(&store, &shard, WEB, &mut cursor).await.unwrap();
        assert!(more);
        assert!(
            (NEW_ROWS_PER_POLL..NEW_ROWS_PER_POLL + KEYS_PER_PAGE as usize).contains(&first.len())
        );
        let (rest, more) = read(&store, &shard, WEB, &mut cursor).await.unwrap();
        assert!(!more);
        assert_eq!(first.len() + rest.len(), total);
        assert!(
            cursor.unwrap().seen.len() <= OVERLAP_MS as usize * 10 + 10,
            "the overlap's keys only"
        );
    }

    #[tokio::test]
    async fn an_overlap_busier_than_a_poll_does_not_stop_the_tail() {
        let store = Late::default();
        store.now.store(2_000_000, Ordering::SeqCst);
        let shard = Shard {
            id: 1,
            name: "a".into(),
            url: String::new(),
            status: crate::model::ShardStatus::Active,
        };
        let mut cursor = None;
        read(&store, &shard, WEB, &mut cursor).await.unwrap();
        // 60,000 rows within 2.4 s: the full overlap holds more keys than
        // one poll reads (PAGES_PER_POLL × KEYS_PER_PAGE = 40,000).
        let busy = 60_000u32;
        lock(&store.rows).extend((0..busy).map(|n| (2_000_000 + i64::from(n / 25), key(n))));
        let mut got = 0;
        for _ in 0..30 {
            got += read(&store, &shard, WEB, &mut cursor)
                .await
                .unwrap()
                .0
                .len();
        }
        assert_eq!(got, busy as usize, "every row once");
        lock(&store.rows).extend((0..10u32).map(|n| (2_002_500 + i64::from(n), key(busy + n))));
        let mut later = 0;
        for _ in 0..10 {
            later += read(&store, &shard, WEB, &mut cursor)
                .await
                .unwrap()
                .0
                .len();
        }
        assert_eq!(later, 10, "rows stored after the busy second still arrive");
    }

    #[tokio::test]
    async fn a_refusal_at_the_direct_door_shows_with_its_reason() {
        let (state, _) = state().await;
        let mut rejected = Sse::open(&state, "&rejected=1", None).await;
        let mut named = Sse::open(&state, "&name=ok", None).await;
        let send = |body: &'static str| {
            let request = Request::post("/v1/events")
                .header("authorization", "Bearer sk_unit_web")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            app(state.clone()).oneshot(request)
        };
        assert_eq!(send(r#"{"event": "ok"}"#).await.unwrap().status(), 202);
        assert_eq!(send(r#"{"event": ""}"#).await.unwrap().status(), 422);
        state.flush_tallies().await;
        let (event, _, data) = rejected.next().await;
        assert_eq!(event, "rejected");
        assert_eq!(data["code"], "invalid_events", "{data}");
        assert!(!data["message"].as_str().unwrap().is_empty());
        assert!(
            data["body"].as_str().unwrap().contains(r#""event": """#),
            "{data}"
        );
        let (event, _, data) = named.next().await;
        assert_eq!(
            (event.as_str(), data["event"]["name"].as_str()),
            ("event", Some("ok"))
        );
        assert!(rejected.within(Duration::from_millis(700)).await.is_none());
    }
}
