//! What the delivery ledger costs the write (issue 17): the same rows
//! written in transactions with and without their ledger rows, alternating
//! run by run on one shard, so the two figures share the machine's state.
//! The ledger rows are the backend's own (`backend::delivery::count_write`
//! and `delivery_insert`), for events stamped as a door stamps them: one
//! acceptance per 20 events (SDK batches), or one per event (sendBeacon).

use std::time::Instant;

use backend::delivery;
use backend::shards::{delivery_insert, events_insert, EventRow};
use futures::{stream, StreamExt};
use protocol::{Acceptance, Envelope};
use sqlx::MySqlPool;

use super::{events, median, Figure, BATCH, POOL};

async fn write(pool: &MySqlPool, chunk: &[Envelope], ledger: bool) {
    let rows: Vec<EventRow> = chunk
        .iter()
        .map(|e| {
            let (_, per_event) = backend::shards::split_context(&e.context);
            EventRow::new(e, (e.name.len() % 8) as u32 + 1, 0, per_event)
        })
        .collect();
    let rows: Vec<&EventRow> = rows.iter().collect();
    let mut tx = pool.begin().await.expect("begin");
    events_insert(&rows)
        .expect("rows encode")
        .execute(&mut *tx)
        .await
        .expect("insert");
    if ledger {
        let refs: Vec<&Envelope> = chunk.iter().collect();
        let entries = delivery::count_write(&refs, &[], &Default::default(), rand::random());
        let env_id = chunk.first().map_or(0, |e| e.env_id);
        delivery_insert(env_id, &entries)
            .build()
            .execute(&mut *tx)
            .await
            .expect("ledger insert");
    }
    tx.commit().await.expect("commit");
}

async fn rate(pool: &MySqlPool, rows: &[Envelope], ledger: bool) -> f64 {
    let started = Instant::now();
    stream::iter(rows.chunks(BATCH))
        .for_each_concurrent(POOL as usize, |chunk| write(pool, chunk, ledger))
        .await;
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

fn stamped(env_id: u32, n: usize, seed: u64, per_acceptance: usize) -> Vec<Envelope> {
    let mut rows = events(env_id, n, seed);
    for (i, chunk) in rows.chunks_mut(per_acceptance).enumerate() {
        let acceptance = Acceptance {
            id: format!("{seed:016x}{i:016x}"),
            n: chunk.len() as u32,
        };
        for e in chunk {
            e.acceptance = Some(acceptance.clone());
        }
    }
    rows
}

/// Figures: write throughput with the ledger beside the same without, for
/// both acceptance sizes, over `n` events per run on `pool` (shard s1).
pub async fn figures(pool: &MySqlPool, n: usize, runs: usize, figures: &mut Vec<Figure>) {
    for (per_acceptance, what) in [(20, "20-event requests"), (1, "1-event requests")] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let seed = 40_000 + run as u64 * 10 + per_acceptance as u64;
            let env = 5000 + run as u32 * 2 + per_acceptance as u32 * 100;
            let (a, b) = (
                stamped(env, n, seed, per_acceptance),
                stamped(env + 1, n, seed + 1, per_acceptance),
            );
            // Alternate which goes first, so neither always meets a warmer pool.
            if run % 2 == 0 {
                without.push(rate(pool, &a, false).await);
                with.push(rate(pool, &b, true).await);
            } else {
                with.push(rate(pool, &b, true).await);
                without.push(rate(pool, &a, false).await);
            }
            eprintln!(
                "ledger cost, {what}, run {}: with {:.0} ev/s, without {:.0} ev/s",
                run + 1,
                with[run],
                without[run]
            );
        }
        let (with, without) = (median(with), median(without));
        figures.push(Figure {
            name: format!("write with its ledger rows in the transaction ({what}, 1 shard)"),
            value: with,
            unit: "events/s",
            reference: format!("same rows without ledger rows {without:.0}"),
            ratio: Some(with / without),
            target: "≥ 0.9 ×".into(),
        });
    }
}
