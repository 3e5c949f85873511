//! CPU of the `/v1/events` door's per-event work, for measuring changes to
//! it: `events::parse` and `events::build` over a 100-event batch of the
//! bench's direct-ingest events (bench/src/direct.rs), and beside it what
//! the backend's `/v1/ingest` does for the same events as envelopes
//! (`serde_json` into `Envelope`, then `validate`).
//!
//! Instructions are repeatable where wall time is not:
//!
//! ```text
//! cargo build --release -p sluice-intake --example door_cpu
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/door.cg \
//!     target/release/examples/door_cpu door 200
//! ```
//!
//! `door N` or `ingest N` runs N batches of that path (one warm-up batch
//! first); divide the instructions by N × 100 for a figure per event. Both
//! print the wall time per event too, for a rough look without valgrind.

use std::hint::black_box;
use std::time::Instant;

use intake::events::{build, parse, Meta};
use intake::Limits;
use protocol::Envelope;

const NOW: i64 = 1_700_000_000_000;

/// A small deterministic generator (no dependency for an example).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The bench's event; `envelope` makes it what the door would (as the
/// bench's `/v1/ingest` baseline sends it).
fn event(rng: &mut Lcg, i: u64, envelope: bool) -> String {
    let name = testkit::sample_event_name(i);
    let head = if envelope {
        format!(r#"{{"name":"{name}","env_id":1,"received_at":{NOW},"#)
    } else {
        format!(r#"{{"event":"{name}","#)
    };
    let id = format!("01890000-0000-7000-8000-{i:012}");
    let draws = [
        rng.below(50_000),
        rng.below(200_000),
        1 + rng.below(499),
        rng.below(100),
        rng.below(5000),
    ];
    testkit::sample_event(&head, &id, NOW, i, draws)
}

fn batch(envelope: bool) -> Vec<u8> {
    let mut rng = Lcg(7);
    let events: Vec<String> = (0..100).map(|i| event(&mut rng, i, envelope)).collect();
    if envelope {
        format!("[{}]", events.join(","))
    } else {
        format!(r#"{{"batch":[{}]}}"#, events.join(","))
    }
    .into_bytes()
}

fn door(body: &[u8], limits: &Limits, meta: &Meta) -> Vec<Envelope> {
    let payload = parse(body, limits).expect("valid body");
    build(payload, meta, || [0; 10]).expect("valid events")
}

fn ingest(body: &[u8]) -> Vec<Envelope> {
    let envelopes: Vec<Envelope> = serde_json::from_slice(body).expect("envelopes");
    for e in &envelopes {
        e.validate().expect("valid envelope");
    }
    envelopes
}

/// The door's view of these requests: no client address or location, and
/// bots kept unflagged, so both paths make the same envelopes.
fn meta() -> Meta {
    let policy = intake::enrich::Policy {
        bots: intake::enrich::BotPolicy::Keep,
        ..Default::default()
    };
    Meta {
        env_id: 1,
        received_at: NOW,
        enrichment: intake::enrich::Enrichment::new(Default::default(), policy),
        ..Meta::default()
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "door".into());
    let n: usize = args.next().map_or(200, |v| v.parse().expect("N batches"));
    let limits = Limits::default();
    let meta = meta();
    let run: Box<dyn Fn() -> Vec<Envelope>> = match path.as_str() {
        "door" => {
            let body = batch(false);
            Box::new(move || door(black_box(&body), &limits, &meta))
        }
        "ingest" => {
            let body = batch(true);
            Box::new(move || ingest(black_box(&body)))
        }
        other => panic!("door or ingest, not {other}"),
    };
    // Both paths make the same envelopes of the same events.
    assert_eq!(
        door(&batch(false), &Limits::default(), &crate::meta()),
        ingest(&batch(true))
    );
    black_box(run());
    let started = Instant::now();
    for _ in 0..n {
        black_box(run());
    }
    let per_event = started.elapsed().as_secs_f64() / (n * 100) as f64;
    println!(
        "{path}: {n} batches of 100 events, {:.0} ns per event",
        per_event * 1e9
    );
}
