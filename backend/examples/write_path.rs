//! The backend's CPU work per event of `POST /v1/ingest`, without I/O: the
//! bench's events (sluice-bench's throughput stage, `testkit::bench_envelopes`:
//! 5 properties, a 3-key context, user and session ids), posted as 500-envelope JSON
//! batches, go through the same functions the write path calls —
//! `api::decode_batch` → `ingest::prepare` → `shards::event_rows` →
//! `events_insert` (arguments encoded) → `delivery::count_write` →
//! `model::counted` → `Deltas::add`. For counting instructions:
//!
//! ```sh
//! cargo build --release -p sluice-backend --example write_path
//! valgrind --tool=callgrind target/release/examples/write_path 20000
//! ```
//!
//! Prints the instructions' work only as a checksum (rows, bytes of SQL
//! arguments, deltas), so nothing is optimised away.

use std::collections::HashMap;

use backend::{
    api::decode_batch,
    catalog::{Environment, Snapshot},
    delivery,
    ingest::prepare,
    model::{counted, Deltas},
    shards::{event_rows, events_insert, set_context_ids, EventRow},
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bench's throughput events (`testkit::bench_envelopes`, fixed time
/// and seed, so runs count the same) as `/v1/ingest` bodies.
fn batches(n: usize) -> Vec<Vec<u8>> {
    testkit::bench_envelopes(1, 1_790_000_000_000, n, 0x5eed_1234_abcd_0001)
        .chunks(testkit::BENCH_BATCH)
        .map(|c| serde_json::to_vec(c).expect("json"))
        .collect()
}

fn snapshot() -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.environments.insert(
        1,
        Environment {
            id: 1,
            name: "bench".into(),
            primary_shard_id: 1,
            secondary_shard_id: None,
            ip_policy: Default::default(),
            geo_policy: Default::default(),
            bot_policy: Default::default(),
            retention_days: None,
        },
    );
    snapshot
}

/// What the write path does with one batch's bytes; returns a checksum.
#[inline(never)]
fn process(body: &[u8], snapshot: &Snapshot, deltas: &mut Deltas) -> usize {
    let mut envelopes = decode_batch(body, 1000).expect("valid batch");
    let groups = prepare(snapshot, &mut envelopes);
    let mut sum = 0;
    for (&env_id, group) in &groups {
        let name_ids: HashMap<(u8, &str), u32> = group
            .stored
            .iter()
            .map(|e| ((e.event_type.code(), e.name.as_str()), e.name.len() as u32))
            .collect();
        let mut built = event_rows(&group.stored, &name_ids).expect("names");
        let context_ids: HashMap<[u8; 16], u32> = built
            .shared_contexts
            .keys()
            .enumerate()
            .map(|(i, hash)| (*hash, i as u32 + 1))
            .collect();
        set_context_ids(&mut built.rows, &context_ids).expect("contexts");
        let rows: Vec<&EventRow> = built.rows.iter().map(|r| &r.event).collect();
        let insert = events_insert(&rows).expect("encode");
        sum += insert.sql().len();
        drop(std::hint::black_box(insert));
        let ledger = delivery::count_write(&group.stored, &group.dropped, &HashMap::new(), [7; 16]);
        sum += ledger.len();
        let counted: Vec<_> = rows
            .iter()
            .map(|row| counted(row.envelope, row.name_id, &[]))
            .collect();
        for row in &counted {
            deltas.add(env_id, row, 0);
        }
        sum += counted.len();
    }
    sum
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("events"))
        .unwrap_or(20_000);
    let bodies = batches(n);
    let snapshot = snapshot();
    let mut deltas = Deltas::default();
    let started = std::time::Instant::now();
    let sum: usize = bodies
        .iter()
        .map(|b| process(b, &snapshot, &mut deltas))
        .sum();
    let took = started.elapsed();
    println!(
        "{n} events: {:.3} s CPU per 100,000 events (wall, one thread); checksum {sum}, {} minute deltas",
        took.as_secs_f64() / n as f64 * 100_000.0,
        deltas.minute.len()
    );
}
