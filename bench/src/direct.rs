//! Direct ingest (issue 16): the backend's own public door, `POST
//! /v1/events`, which answers 202 once the events are committed (group
//! commit, backend/src/public/commit.rs).
//!
//! Stages, each `--direct-seconds` long after a one-second warm-up, on one
//! environment of a shard of its own, through a keep-alive client:
//! 1-event requests at concurrency 32 and 128, 100-event batches at
//! concurrency 32, right after them the fair baseline the issue names (the
//! backend's own `POST /v1/ingest` with 100-envelope batches of the same
//! events at concurrency 32, to the same environment), and 1-event requests
//! at concurrency 32 again with the server at
//! `innodb_flush_log_at_trx_commit=1`. After every stage the environment's
//! rows are counted: each event answered 2xx must be stored, or the bench
//! fails. The backend's `sluice_group_commit_events` histogram
//! (read from `/metrics` around each stage) shows how many writes carried
//! the events.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use sqlx::{mysql::MySqlPoolOptions, MySqlPool};

use crate::{cli, cpu_seconds, peak_rss_mb, percentile, start_backend, Args, Figure, TOKEN};

/// Which door a stage sends to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Door {
    /// The public `POST /v1/events`, with an API key: events as clients send them.
    Public,
    /// The backend's own `POST /v1/ingest`, with the ingest token: the same
    /// events as the envelopes the edge would forward for them, to `env_id`.
    Ingest { env_id: u32 },
}

/// One public-API event of ~300 bytes with 5 properties and its own `id`
/// (a UUIDv7, so every event is a row of its own); for [`Door::Ingest`],
/// the envelope the door makes of it (`name` for `event`, with the
/// environment and the receive time), every other field the same.
fn event(rng: &mut SmallRng, now_ms: i64, i: u64, door: Door) -> String {
    let random: [u8; 10] = rng.random();
    let id = protocol::uuid_v7(now_ms as u64, &random);
    let name = testkit::sample_event_name(i);
    let head = match door {
        Door::Public => format!(r#"{{"event":"{name}","#),
        Door::Ingest { env_id } => {
            format!(r#"{{"name":"{name}","env_id":{env_id},"received_at":{now_ms},"#)
        }
    };
    let draws = [
        rng.random_range(0..50_000),
        rng.random_range(0..200_000),
        rng.random_range(1..500),
        rng.random_range(0..100),
        rng.random_range(0..5000),
    ];
    testkit::sample_event(&head, &id, now_ms, i, draws)
}

/// A request body of `n` events: one object, or `{"batch": [...]}`; for
/// [`Door::Ingest`], a JSON array of `n` envelopes.
fn body(rng: &mut SmallRng, n: usize, seq: &mut u64, door: Door) -> Vec<u8> {
    let now = chrono::Utc::now().timestamp_millis();
    if n == 1 && door == Door::Public {
        *seq += 1;
        return event(rng, now, *seq, door).into_bytes();
    }
    let (open, close) = match door {
        Door::Public => (r#"{"batch":["#, "]}"),
        Door::Ingest { .. } => ("[", "]"),
    };
    let mut out = String::with_capacity(n * 360 + 16);
    out.push_str(open);
    for k in 0..n {
        if k > 0 {
            out.push(',');
        }
        *seq += 1;
        out.push_str(&event(rng, now, *seq, door));
    }
    out.push_str(close);
    out.into_bytes()
}

/// Events a 2xx answer took: `/v1/events`' `accepted`; `/v1/ingest`'s
/// inserted and duplicates (a 200 lists nothing to retry).
fn accepted(door: Door, answer: &[u8]) -> Option<u64> {
    let v = serde_json::from_slice::<serde_json::Value>(answer).ok()?;
    match door {
        Door::Public => v["accepted"].as_u64(),
        Door::Ingest { .. } => {
            if !v["retry"].as_array().is_some_and(|r| r.is_empty()) {
                return None;
            }
            v["environments"].as_object()?.values().try_fold(0, |n, e| {
                Some(n + e["inserted"].as_u64()? + e["duplicates"].as_u64()?)
            })
        }
    }
}

#[derive(Default)]
struct Load {
    requests: u64,
    /// Events answered 2xx (the answers' `accepted`).
    accepted: u64,
    /// 503 `overloaded` answers (nothing of them is taken).
    overloaded: u64,
    /// Anything else: status and body, or the transport error.
    errors: Vec<String>,
    latencies_ms: Vec<f64>,
    elapsed: Duration,
}

/// `concurrency` clients posting `events`-event requests back to back for
/// `length` (requests in flight at the end are waited for and counted).
#[allow(clippy::too_many_arguments)]
async fn load(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    door: Door,
    events: usize,
    concurrency: usize,
    length: Duration,
    seed: u64,
) -> Load {
    let started = Instant::now();
    let deadline = started + length;
    let url: Arc<str> = url.into();
    let key: Arc<str> = key.into();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(seed * 1000 + t as u64);
                let mut seq = (t as u64) << 40;
                let mut out = Load::default();
                while Instant::now() < deadline {
                    let payload = body(&mut rng, events, &mut seq, door);
                    let sent = Instant::now();
                    let answer = client
                        .post(&*url)
                        .bearer_auth(&*key)
                        .header("content-type", "application/json")
                        .body(payload)
                        .send()
                        .await;
                    out.requests += 1;
                    let response = match answer {
                        Ok(r) => r,
                        Err(e) => {
                            out.errors.push(format!("transport: {e}"));
                            continue;
                        }
                    };
                    let status = response.status().as_u16();
                    let text = response.bytes().await.unwrap_or_default();
                    out.latencies_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                    if (200..300).contains(&status) {
                        match accepted(door, &text) {
                            Some(n) => out.accepted += n,
                            None => out.errors.push(format!(
                                "{status} without what it took: {}",
                                String::from_utf8_lossy(&text)
                            )),
                        }
                    } else if status == 503
                        && String::from_utf8_lossy(&text).contains("\"overloaded\"")
                    {
                        out.overloaded += 1;
                    } else {
                        out.errors
                            .push(format!("{status}: {}", String::from_utf8_lossy(&text)));
                    }
                }
                out
            })
        })
        .collect();
    let mut total = Load::default();
    for task in tasks {
        let part = task.await.expect("load task");
        total.requests += part.requests;
        total.accepted += part.accepted;
        total.overloaded += part.overloaded;
        total.errors.extend(part.errors);
        total.latencies_ms.extend(part.latencies_ms);
    }
    total.elapsed = started.elapsed();
    total.latencies_ms.sort_by(|a, b| a.total_cmp(b));
    total
}

/// `sluice_group_commit_events` (count, sum) from the backend's `/metrics`.
async fn group_commits(client: &reqwest::Client, base: &str) -> (f64, f64) {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    (
        value("sluice_group_commit_events_count"),
        value("sluice_group_commit_events_sum"),
    )
}

/// Busy CPU seconds of the whole machine so far (all cores, /proc/stat's
/// user + nice + system + irq + softirq + steal, in USER_HZ ticks).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(f64::NAN))
        .sum::<f64>()
        / 100.0
}

async fn stored(shard: &MySqlPool, env_id: u32) -> u64 {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE env_id = ?")
        .bind(env_id)
        .fetch_one(shard)
        .await
        .expect("count");
    n as u64
}

async fn flush_setting(server: &MySqlPool) -> u32 {
    let v: u64 =
        sqlx::query_scalar("SELECT CAST(@@GLOBAL.innodb_flush_log_at_trx_commit AS UNSIGNED)")
            .fetch_one(server)
            .await
            .expect("innodb_flush_log_at_trx_commit");
    v as u32
}

struct Stage {
    door: Door,
    events: usize,
    concurrency: usize,
    flush: u32,
    rate: f64,
    p50: f64,
    p99: f64,
    overloaded: u64,
    writes: f64,
    per_write: f64,
    cpu_per_100k: f64,
    /// Cores busy during the stage: the backend, the load generator (this
    /// process), and everything else (MariaDB, and whatever else runs).
    cores: (f64, f64, f64),
}

struct Ctx<'a> {
    client: reqwest::Client,
    base: String,
    key: String,
    pid: u32,
    shard: &'a MySqlPool,
    env_id: u32,
    length: Duration,
}

/// One stage: warm-up, measured load, then the count check. The result is
/// an error (for the caller to fail with, after it restored what it
/// changed) when an event answered 2xx is not stored or anything unexpected
/// was answered.
async fn stage(
    ctx: &Ctx<'_>,
    door: Door,
    events: usize,
    concurrency: usize,
    flush: u32,
    seed: u64,
) -> Result<Stage, String> {
    let (url, key, what) = match door {
        Door::Public => (
            format!("{}/v1/events", ctx.base),
            ctx.key.as_str(),
            format!("{events}-event requests, concurrency {concurrency}, flush={flush}"),
        ),
        Door::Ingest { .. } => (
            format!("{}/v1/ingest", ctx.base),
            TOKEN,
            format!(
                "baseline /v1/ingest {events}-envelope batches, concurrency {concurrency}, flush={flush}"
            ),
        ),
    };
    let before = stored(ctx.shard, ctx.env_id).await;
    let warm = load(
        &ctx.client,
        &url,
        key,
        door,
        events,
        concurrency,
        Duration::from_secs(1),
        seed,
    )
    .await;
    let (writes0, sum0) = group_commits(&ctx.client, &ctx.base).await;
    let me = std::process::id();
    let (cpu0, own0, busy0) = (
        cpu_seconds(ctx.pid),
        cpu_seconds(me),
        machine_busy_seconds(),
    );
    let run = load(
        &ctx.client,
        &url,
        key,
        door,
        events,
        concurrency,
        ctx.length,
        seed + 1,
    )
    .await;
    let cpu = cpu_seconds(ctx.pid) - cpu0;
    let own = cpu_seconds(me) - own0;
    let busy = machine_busy_seconds() - busy0;
    let secs = run.elapsed.as_secs_f64();
    let cores = (cpu / secs, own / secs, (busy - cpu - own) / secs);
    let (writes1, sum1) = group_commits(&ctx.client, &ctx.base).await;
    let after = stored(ctx.shard, ctx.env_id).await;
    let accepted = warm.accepted + run.accepted;
    let errors: Vec<&String> = warm.errors.iter().chain(&run.errors).collect();
    let rate = run.accepted as f64 / run.elapsed.as_secs_f64();
    eprintln!(
        "direct {what}: {rate:.0} ev/s, {} requests, p50 {:.2} ms, p99 {:.2} ms, {} overloaded, {} errors; \
         {:.0} writes, {:.1} events/write; cores busy: backend {:.2}, load generator {:.2}, rest {:.2}; \
         stored {} of {accepted} accepted",
        run.requests,
        percentile(&run.latencies_ms, 0.5),
        percentile(&run.latencies_ms, 0.99),
        run.overloaded + warm.overloaded,
        errors.len(),
        writes1 - writes0,
        (sum1 - sum0) / (writes1 - writes0),
        cores.0,
        cores.1,
        cores.2,
        after - before,
    );
    if after - before != accepted {
        return Err(format!(
            "direct ingest {what}: {accepted} events answered 2xx, {} stored: events were lost (or added)",
            after as i64 - before as i64
        ));
    }
    if !errors.is_empty() {
        return Err(format!(
            "direct ingest {what}: {} unexpected answers, first: {}",
            errors.len(),
            errors[0]
        ));
    }
    if run.accepted == 0 {
        return Err(format!("direct ingest {what}: nothing accepted"));
    }
    Ok(Stage {
        door,
        events,
        concurrency,
        flush,
        rate,
        p50: percentile(&run.latencies_ms, 0.5),
        p99: percentile(&run.latencies_ms, 0.99),
        overloaded: run.overloaded,
        writes: writes1 - writes0,
        per_write: (sum1 - sum0) / (writes1 - writes0),
        cpu_per_100k: cpu / run.accepted as f64 * 100_000.0,
        cores,
    })
}

fn describe(s: &Stage, seconds: u64) -> String {
    let overloaded = if s.overloaded > 0 {
        format!(", {} answered 503 overloaded", s.overloaded)
    } else {
        String::new()
    };
    if let Door::Ingest { .. } = s.door {
        return format!(
            "baseline: backend POST /v1/ingest, {}-envelope batches of the same events, concurrency {}, \
             same single shard and environment, innodb_flush_log_at_trx_commit={} \
             ({seconds} s; p50 {:.1} ms, p99 {:.1} ms; backend CPU {:.2} s per 100,000 events; \
             cores busy: backend {:.2}, load generator {:.2}, MariaDB and the rest {:.2})",
            s.events,
            s.concurrency,
            s.flush,
            s.p50,
            s.p99,
            s.cpu_per_100k,
            s.cores.0,
            s.cores.1,
            s.cores.2
        );
    }
    format!(
        "direct ingest POST /v1/events, {}-event requests, concurrency {}, innodb_flush_log_at_trx_commit={} \
         ({seconds} s; p50 {:.1} ms, p99 {:.1} ms; {:.0} group-commit writes, {:.1} events/write; \
         backend CPU {:.2} s per 100,000 events; cores busy: backend {:.2}, load generator {:.2}, \
         MariaDB and the rest {:.2}{overloaded})",
        s.events,
        s.concurrency,
        s.flush,
        s.p50,
        s.p99,
        s.writes,
        s.per_write,
        s.cpu_per_100k,
        s.cores.0,
        s.cores.1,
        s.cores.2
    )
}

/// The direct-ingest figures. `ingest_rate` is the backend's `/v1/ingest`
/// throughput measured earlier in the same run (figure 1).
pub async fn figures(args: &Args, prefix: &str, ingest_rate: f64, figures: &mut Vec<Figure>) {
    let catalog = format!("{}/{prefix}_catalog", args.mysql);
    let shard_url = format!("{}/{prefix}_direct", args.mysql);
    cli(args, &catalog, &["shard", "add", "direct", &shard_url]);
    let env_id: u32 = cli(
        args,
        &catalog,
        &["env", "create", "env_direct", "--shard", "direct"],
    )
    .parse()
    .expect("id");
    let key = cli(args, &catalog, &["key", "create", "env_direct"])
        .lines()
        .last()
        .expect("key")
        .trim()
        .to_string();
    let shard = MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&shard_url)
        .await
        .expect("direct shard");
    let server = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&args.mysql)
        .await
        .expect("server");
    let (backend, port) = start_backend(args, &catalog).await;
    let ctx = Ctx {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .expect("client"),
        base: format!("http://127.0.0.1:{port}"),
        key,
        pid: backend.0.id(),
        shard: &shard,
        env_id,
        length: Duration::from_secs(args.direct_seconds),
    };
    let seconds = args.direct_seconds;
    let flush = flush_setting(&server).await;

    let public = Door::Public;
    let c32 = stage(&ctx, public, 1, 32, flush, 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let c128 = stage(&ctx, public, 1, 128, flush, 3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let batches = stage(&ctx, public, 100, 32, flush, 5)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The issue's baseline, right after the batches: the same events as
    // envelopes in batches of 100 to the backend's own /v1/ingest, same
    // concurrency, environment, shard and length.
    let baseline = stage(&ctx, Door::Ingest { env_id }, 100, 32, flush, 9)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The same 1-event stage with a log flush at every commit; the global
    // setting is put back whatever the stage's outcome.
    let durable = match sqlx::query("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
        .execute(&server)
        .await
    {
        Ok(_) => {
            let result = stage(&ctx, public, 1, 32, flush_setting(&server).await, 7).await;
            sqlx::query(&format!(
                "SET GLOBAL innodb_flush_log_at_trx_commit = {flush}"
            ))
            .execute(&server)
            .await
            .expect("restore innodb_flush_log_at_trx_commit");
            Some(result.unwrap_or_else(|e| panic!("{e}")))
        }
        Err(e) => {
            eprintln!("direct ingest: cannot SET GLOBAL innodb_flush_log_at_trx_commit=1 ({e}); stage skipped");
            None
        }
    };
    let rss = peak_rss_mb(ctx.pid);
    drop(backend);

    for (s, goal) in [(&c32, 10_000.0), (&c128, 15_000.0)] {
        figures.push(Figure {
            name: describe(s, seconds),
            value: s.rate,
            unit: "events/s",
            reference: format!("target {goal:.0}"),
            ratio: Some(s.rate / goal),
            target: format!("≥ {goal:.0} events/s"),
        });
    }
    figures.push(Figure {
        name: describe(&batches, seconds),
        value: batches.rate,
        unit: "events/s",
        reference: format!(
            "baseline /v1/ingest, 100-envelope batches, same shard {:.0} (row below); \
             figure 1 (2 shards, batches of 500) {ingest_rate:.0}",
            baseline.rate
        ),
        ratio: Some(batches.rate / baseline.rate),
        target: "≥ 0.8 × /v1/ingest at 100-event batches".into(),
    });
    figures.push(Figure {
        name: describe(&baseline, seconds),
        value: baseline.rate,
        unit: "events/s",
        reference: format!("figure 1 (2 shards, batches of 500) {ingest_rate:.0}"),
        ratio: Some(baseline.rate / ingest_rate),
        target: "-".into(),
    });
    match durable {
        Some(s) => figures.push(Figure {
            name: describe(&s, seconds),
            value: s.rate,
            unit: "events/s",
            reference: format!("flush={} above {:.0}; target 10000", c32.flush, c32.rate),
            ratio: Some(s.rate / 10_000.0),
            target: "≥ 10000 events/s".into(),
        }),
        None => figures.push(Figure {
            name: "direct ingest, 1-event requests, concurrency 32, innodb_flush_log_at_trx_commit=1: \
                   not measured (the server refused SET GLOBAL)"
                .into(),
            value: f64::NAN,
            unit: "events/s",
            reference: "-".into(),
            ratio: None,
            target: "≥ 10000 events/s".into(),
        }),
    }
    figures.push(Figure {
        name: "backend peak RSS during the direct-ingest stages".into(),
        value: rss,
        unit: "MB",
        reference: "target 200".into(),
        ratio: Some(rss / 200.0),
        target: "< 200 MB".into(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The baseline's envelopes are exactly what the public door makes of
    /// the same events (no country, colo or user agent reach it from the
    /// bench), so both stages write the same rows.
    #[test]
    fn the_baseline_sends_what_the_door_makes_of_the_same_events() {
        let now = 1_700_000_000_000;
        for i in 0..20 {
            let public = event(&mut SmallRng::seed_from_u64(i), now, i, Door::Public);
            let envelope = event(
                &mut SmallRng::seed_from_u64(i),
                now,
                i,
                Door::Ingest { env_id: 3 },
            );
            let limits = intake::Limits::default();
            let payload = intake::events::parse(public.as_bytes(), &limits).expect("event");
            // No client address or location; bots unflagged, as the ingest envelope has none.
            let policy = intake::enrich::Policy {
                bots: intake::enrich::BotPolicy::Keep,
                ..Default::default()
            };
            let meta = intake::events::Meta {
                env_id: 3,
                received_at: now,
                enrichment: intake::enrich::Enrichment::new(Default::default(), policy),
                ..Default::default()
            };
            let built = intake::events::build(payload, &meta, || [0; 10]).expect("valid");
            let sent: protocol::Envelope = serde_json::from_str(&envelope).expect("envelope");
            assert_eq!(built, [sent]);
        }
    }

    #[test]
    fn bodies_of_both_doors_hold_n_events() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut seq = 0;
        let batch = body(&mut rng, 100, &mut seq, Door::Ingest { env_id: 3 });
        let envelopes = backend::api::decode_batch(&batch, 1000).expect("batch");
        assert_eq!(envelopes.len(), 100);
        let limits = intake::Limits::default();
        for n in [1, 100] {
            let public = body(&mut rng, n, &mut seq, Door::Public);
            let payload = intake::events::parse(&public, &limits).expect("body");
            assert_eq!(payload.events.len(), n);
        }
        assert_eq!(seq, 201);
    }

    #[test]
    fn what_an_answer_took() {
        let ingest = Door::Ingest { env_id: 3 };
        assert_eq!(accepted(Door::Public, br#"{"accepted":100}"#), Some(100));
        assert_eq!(
            accepted(
                ingest,
                br#"{"environments":{"3":{"inserted":98,"duplicates":2}},"retry":[],"failures":[]}"#
            ),
            Some(100)
        );
        assert_eq!(
            accepted(
                ingest,
                br#"{"environments":{},"retry":["a"],"failures":[]}"#
            ),
            None
        );
        assert_eq!(accepted(ingest, b"{}"), None);
    }
}
