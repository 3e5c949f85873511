//! `sluice-bench`: measures the pipeline's stages against their ceilings and
//! prints one table (and, with `--write-md FILE`, writes it as Markdown).
//!
//! Figures so far (backend side):
//! 1. events/s committed through `POST /v1/ingest` (2 shards, batches of
//!    500, ~300-byte events with 5 properties) next to the raw ceiling: the
//!    same rows written by plain sqlx multi-row INSERTs, same schema, same
//!    connection count; and the backend's CPU per 100,000 events meanwhile
//!    (`--only throughput` runs just these, BENCHMARKS.md "CPU per event");
//! 4. bytes per event on disk against a naive schema;
//! 6. backend peak RSS during figure 1;
//!
//! and direct ingest (issue 16, [`direct`]): events/s through the
//! backend's public `POST /v1/events` (1-event requests at concurrency 32
//! and 128, 100-event batches beside their baseline: `/v1/ingest` with
//! 100-envelope batches of the same events to the same shard, 1-event
//! requests again at `innodb_flush_log_at_trx_commit=1`), with every 2xx
//! event counted back from the shard, and the backend's peak RSS under
//! that load.
//!
//! and the live tail (issue 17, [`tail`]): MySQL SELECTs/s with 1 and 200
//! viewers of `/v1/stats/tail` beside the same for `/v1/stats/stream`.
//!
//! and user-agent parsing (issue 18, [`ua`]): the parser's build, a parse
//! per distinct agent and per cached one, and the cost per event of a
//! realistic mix (`--only ua` runs just that, without MySQL).
//!
//! and retention (issue 19, [`retention`]): the write throughput inside a
//! pass deleting `--storage-events` old events against the same without,
//! and the pass's rate (`--only retention` runs just that).
//! and export (issue 19, [`export`]): events/s of `GET /v1/export` over
//! a fresh environment of `--storage-events` events beside a raw SELECT of
//! the same rows, uncompressed and gzipped, and the backend's RSS meanwhile.
//!
//! Every run is bounded, seeded, and talks to 127.0.0.1 only.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

mod direct;
mod edge;
mod export;
mod ledger;
mod population;
mod retention;
mod tail;
mod ua;

use backend::shards::{events_insert, EventRow};
use futures::{stream, StreamExt};
use protocol::Envelope;
use sqlx::{mysql::MySqlPoolOptions, MySql, MySqlPool, QueryBuilder};

const TOKEN: &str = "bench-ingest-token-0123456789abcdef0123456789";
const BATCH: usize = testkit::BENCH_BATCH;
const POOL: u32 = 4;

struct Args {
    mysql: String,
    backend: PathBuf,
    runs: usize,
    events: usize,
    storage_events: usize,
    /// Length of each direct-ingest stage (after a 1 s warm-up).
    direct_seconds: u64,
    /// Stages left out (`--skip storage,direct,edge,ledger,tail,ua,retention,export`), for a quicker partial run.
    skip: Vec<String>,
    /// `--only ua` (it needs no database), `--only retention`, `--only
    /// throughput` (the write runs alone: no ledger, stats top-up or later
    /// stages) or `--only edge` (the edge's headline rows and its consumer
    /// layouts, ~3 minutes): that stage alone.
    only: Option<String>,
    write_md: Option<PathBuf>,
    command: String,
}

impl Args {
    fn skips(&self, stage: &str) -> bool {
        self.skip.iter().any(|s| s == stage)
    }
}

fn args() -> Args {
    let mut a = Args {
        mysql: std::env::var("SLUICE_BENCH_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
        backend: PathBuf::from("target/release/backend"),
        runs: 3,
        events: 200_000,
        storage_events: 1_000_000,
        direct_seconds: 15,
        skip: Vec::new(),
        only: None,
        write_md: None,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--mysql" => a.mysql = value(),
            "--backend" => a.backend = value().into(),
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--events" => a.events = value().parse().expect("--events N"),
            "--storage-events" => a.storage_events = value().parse().expect("--storage-events N"),
            "--direct-seconds" => a.direct_seconds = value().parse().expect("--direct-seconds N"),
            "--skip" => {
                a.skip = value().split(',').map(|s| s.trim().to_string()).collect();
                for stage in &a.skip {
                    assert!(
                        ["storage", "direct", "edge", "ledger", "tail", "ua", "retention", "export"].contains(&stage.as_str()),
                        "--skip takes storage, direct, edge, ledger, tail, ua, retention and export (comma-separated), not {stage}"
                    );
                }
            }
            "--only" => {
                let stage = value();
                assert!(
                    ["ua", "retention", "throughput", "edge"].contains(&stage.as_str()),
                    "--only takes ua (the stage without a database), retention, throughput or edge, not {stage}"
                );
                a.only = Some(stage);
            }
            "--write-md" => a.write_md = Some(value().into()),
            "--command" => a.command = value(),
            other => panic!("unknown flag {other}; see bench/src/main.rs"),
        }
    }
    a.mysql = a.mysql.trim_end_matches('/').to_string();
    a
}

static CLOCKS: std::sync::Mutex<std::collections::BTreeMap<u32, i64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Where an environment's next [`events`] start (unix ms).
fn set_clock(env_id: u32, ms: i64) {
    CLOCKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(env_id, ms);
}

/// `n` of the throughput stage's events (`testkit::bench_envelopes`) of
/// one environment, deterministic for a seed. Each environment's clock
/// carries on from its previous call, as real traffic does: every run
/// appends to the end of the time-ordered keys instead of filling in an
/// hour that earlier runs already wrote. It starts two hours ago, or where
/// [`set_clock`] put it.
fn events(env_id: u32, n: usize, seed: u64) -> Vec<Envelope> {
    let base = {
        let mut clocks = CLOCKS.lock().unwrap_or_else(|p| p.into_inner());
        let clock = clocks
            .entry(env_id)
            .or_insert_with(|| chrono::Utc::now().timestamp_millis() - 2 * 3_600_000);
        let base = *clock;
        *clock += n as i64 * 3;
        base
    };
    testkit::bench_envelopes(env_id, base, n, seed)
}

/// The `p` quantile (0–1) of ascending `sorted`; NaN when it is empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    reference: String,
    ratio: Option<f64>,
    target: String,
}

fn cli(args: &Args, catalog: &str, cmd: &[&str]) -> String {
    let out = Command::new(&args.backend)
        .args(cmd)
        .env("SLUICE_DATABASE_URL", catalog)
        .output()
        .expect("run backend");
    assert!(
        out.status.success(),
        "backend {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU time (user + system, all threads) a process has used so far, in
/// seconds; /proc counts it in USER_HZ ticks, 100 per second on Linux.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The shard server's process id when it runs on this machine (its
/// `@@pid_file` is readable here), else 0 (whose CPU reads as NaN).
async fn server_pid(pool: &MySqlPool) -> u32 {
    let pid_file: String = sqlx::query_scalar("SELECT @@pid_file")
        .fetch_one(pool)
        .await
        .expect("pid_file");
    std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn post_all(base: &str, bodies: Vec<Vec<u8>>, in_flight: usize) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    stream::iter(bodies)
        .for_each_concurrent(in_flight, |body| {
            let client = client.clone();
            async move {
                let response = client
                    .post(format!("{base}/v1/ingest"))
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("post");
                assert_eq!(
                    response.status(),
                    200,
                    "{}",
                    response.text().await.unwrap_or_default()
                );
            }
        })
        .await;
    started.elapsed()
}

fn dt(ms: i64) -> chrono::NaiveDateTime {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .naive_utc()
}

/// Rows as the backend writes them, with the lookup ids already known:
/// name ids from the name's length, shared-context ids from the country.
async fn raw_insert(pool: &MySqlPool, rows: &[Envelope]) {
    let rows: Vec<EventRow> = rows
        .iter()
        .map(|e| {
            let (_, per_event) = backend::shards::split_context(&e.context);
            let country = e.context.get("country").and_then(|c| c.as_str());
            let context_id = testkit::BENCH_COUNTRIES
                .iter()
                .position(|c| Some(*c) == country)
                .map_or(0, |i| i as u32 + 1);
            EventRow::new(e, (e.name.len() % 8) as u32 + 1, context_id, per_event)
        })
        .collect();
    let rows: Vec<&EventRow> = rows.iter().collect();
    events_insert(&rows)
        .expect("rows encode")
        .execute(pool)
        .await
        .expect("raw insert");
}

/// The same rows, written with plain multi-row INSERTs, `POOL` connections per shard.
async fn raw_ceiling(pools: &[MySqlPool], per_shard: Vec<Vec<Envelope>>) -> Duration {
    let started = Instant::now();
    let jobs = pools
        .iter()
        .zip(per_shard.iter())
        .flat_map(|(pool, rows)| rows.chunks(BATCH).map(move |c| (pool, c)));
    stream::iter(jobs)
        .for_each_concurrent(POOL as usize * pools.len(), |(pool, chunk)| {
            raw_insert(pool, chunk)
        })
        .await;
    started.elapsed()
}

/// `backend serve` on a free port, once healthy: the process and its port.
async fn start_backend(args: &Args, catalog: &str) -> (Server, u16) {
    start_backend_with(args, catalog, &[]).await
}

/// The same, with more environment variables.
async fn start_backend_with(args: &Args, catalog: &str, vars: &[(&str, &str)]) -> (Server, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new(&args.backend)
        .arg("serve")
        .env("SLUICE_DATABASE_URL", catalog)
        .env("SLUICE_INGEST_TOKEN", TOKEN)
        .env("SLUICE_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("SLUICE_SHARD_POOL_SIZE", POOL.to_string())
        .env("SLUICE_COUNTER_FLUSH_MS", "500")
        .env("RUST_LOG", "warn")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn backend");
    let server = Server(child);
    for _ in 0..200 {
        if reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, port)
}

/// p50/p99 of the stats API over the events the throughput runs stored
/// (counters maintained by the backend as it ingested).
async fn stats_latency(
    args: &Args,
    catalog: &str,
    base: &str,
    events: usize,
    figures: &mut Vec<Figure>,
) {
    let token = cli(args, catalog, &["env", "token", "env_s1"]);
    tokio::time::sleep(Duration::from_millis(1500)).await; // the last counter flush
    let client = reqwest::Client::new();
    for (what, path) in [
        ("24-hour summary", "/v1/stats/summary?env=env_s1"),
        (
            "24-hour minute series",
            "/v1/stats/series?env=env_s1&interval=minute",
        ),
    ] {
        let mut ms = Vec::new();
        for _ in 0..200 {
            let started = Instant::now();
            let response = client
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("stats");
            assert_eq!(response.status(), 200);
            let _ = response.bytes().await;
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let (p50, p99) = (ms[ms.len() / 2], ms[(ms.len() * 99) / 100]);
        figures.push(Figure {
            name: format!("stats {what} p99 ({events} events in the environment; p50 {p50:.1} ms)"),
            value: p99,
            unit: "ms",
            reference: "target 50".into(),
            ratio: Some(p99 / 50.0),
            target: "p99 < 50 ms".into(),
        });
    }
}

/// Distinct users from the sketches against an exact COUNT(DISTINCT).
async fn sketch_error(
    args: &Args,
    catalog: &str,
    base: &str,
    shard: &MySqlPool,
    env_id: u32,
    figures: &mut Vec<Figure>,
) {
    let token = cli(args, catalog, &["env", "token", "env_s1"]);
    let summary: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/stats/summary?env=env_s1"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("summary")
        .json()
        .await
        .expect("json");
    let (events, exact): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT COALESCE(user_id, anonymous_id)) FROM events WHERE env_id = ?",
    )
    .bind(env_id)
    .fetch_one(shard)
    .await
    .expect("exact");
    let estimate = summary["users"].as_f64().unwrap_or(f64::NAN);
    let error = (estimate - exact as f64).abs() / exact as f64 * 100.0;
    figures.push(Figure {
        name: format!(
            "unique users: sketch {estimate:.0} vs COUNT(DISTINCT) {exact} over {events} events"
        ),
        value: error,
        unit: "% error",
        reference: "target 2".into(),
        ratio: Some(error / 2.0),
        target: "≤ 2%".into(),
    });
}

/// Figures 1 and 6; returns the environment ids it created (one per shard)
/// and the backend's write throughput (figure 1).
async fn throughput(args: &Args, prefix: &str, figures: &mut Vec<Figure>) -> (Vec<u32>, f64) {
    let catalog = format!("{}/{prefix}_catalog", args.mysql);
    cli(args, &catalog, &["migrate"]);
    let mut env_ids = Vec::new();
    for shard in ["s1", "s2"] {
        cli(
            args,
            &catalog,
            &[
                "shard",
                "add",
                shard,
                &format!("{}/{prefix}_{shard}", args.mysql),
            ],
        );
        env_ids.push(
            cli(
                args,
                &catalog,
                &["env", "create", &format!("env_{shard}"), "--shard", shard],
            )
            .parse::<u32>()
            .expect("id"),
        );
    }
    let (server, port) = start_backend(args, &catalog).await;
    let base = format!("http://127.0.0.1:{port}");
    let mut pools: Vec<MySqlPool> = Vec::new();
    for shard in ["s1", "s2"] {
        let url = format!("{}/{prefix}_{shard}", args.mysql);
        pools.push(
            MySqlPoolOptions::new()
                .max_connections(POOL)
                .connect(&url)
                .await
                .expect("shard pool"),
        );
    }

    let per_env = args.events / 2;
    let (mut backend_rates, mut raw_rates) = (Vec::new(), Vec::new());
    let mut backend_cpu = 0.0;
    for run in 0..args.runs {
        let seed = 1000 + run as u64;
        // Backend: batches alternate between the two environments (shards).
        let a = events(env_ids[0], per_env, seed);
        let b = events(env_ids[1], per_env, seed + 500);
        let bodies: Vec<Vec<u8>> = a
            .chunks(BATCH)
            .zip(b.chunks(BATCH))
            .flat_map(|(x, y)| {
                [
                    serde_json::to_vec(x).expect("json"),
                    serde_json::to_vec(y).expect("json"),
                ]
            })
            .collect();
        let cpu_before = cpu_seconds(server.0.id());
        let took = post_all(&base, bodies, 2 * POOL as usize).await;
        backend_cpu += cpu_seconds(server.0.id()) - cpu_before;
        backend_rates.push((2 * per_env) as f64 / took.as_secs_f64());

        // Raw ceiling: the same kind of rows (other environments ids, fresh keys), straight into the shards.
        let raw = vec![
            events(env_ids[0] + 1000, per_env, seed + 7),
            events(env_ids[1] + 1000, per_env, seed + 9),
        ];
        let took = raw_ceiling(&pools, raw).await;
        raw_rates.push((2 * per_env) as f64 / took.as_secs_f64());
        eprintln!(
            "run {}: backend {:.0} ev/s, raw {:.0} ev/s (backend CPU so far {backend_cpu:.2} s)",
            run + 1,
            backend_rates[run],
            raw_rates[run]
        );
    }
    let rss = peak_rss_mb(server.0.id());
    let only_writes = args.only.as_deref() == Some("throughput");
    if !args.skips("ledger") && !only_writes {
        ledger::figures(&pools[0], per_env, args.runs, figures).await;
    }
    // Stats figures are taken over `--storage-events` events in one environment: top it up.
    let mut stored = args.runs * per_env;
    let mut seed = 9000;
    while stored < args.storage_events && !only_writes {
        let n = (args.storage_events - stored).min(50_000);
        let bodies = events(env_ids[0], n, seed)
            .chunks(BATCH)
            .map(|c| serde_json::to_vec(c).expect("json"))
            .collect();
        post_all(&base, bodies, 2 * POOL as usize).await;
        stored += n;
        seed += 1;
    }
    if !only_writes {
        stats_latency(args, &catalog, &base, stored, figures).await;
        sketch_error(args, &catalog, &base, &pools[0], env_ids[0], figures).await;
    }
    let (backend, raw) = (median(backend_rates), median(raw_rates));
    figures.push(Figure {
        name: "backend write throughput (2 shards, batches of 500)".into(),
        value: backend,
        unit: "events/s",
        reference: format!("raw sqlx INSERT ceiling {raw:.0}"),
        ratio: Some(backend / raw),
        target: "≥ 0.85 × raw and ≥ 50,000".into(),
    });
    figures.push(Figure {
        name: "raw multi-row INSERT ceiling (same schema, 4 conns/shard)".into(),
        value: raw,
        unit: "events/s",
        reference: "-".into(),
        ratio: None,
        target: "-".into(),
    });
    let cpu_per_100k = backend_cpu / (args.runs * 2 * per_env) as f64 * 100_000.0;
    figures.push(Figure {
        name: "backend CPU per 100,000 events ingested (user + system, all threads)".into(),
        value: cpu_per_100k,
        unit: "s",
        reference: format!("target 0.35 (measured {cpu_per_100k:.3})"),
        ratio: Some(cpu_per_100k / 0.35),
        target: "≤ 0.35 s".into(),
    });
    figures.push(Figure {
        name: "backend peak RSS during the throughput runs".into(),
        value: rss,
        unit: "MB",
        reference: "target 200".into(),
        ratio: Some(rss / 200.0),
        target: "< 200 MB".into(),
    });
    (env_ids, backend)
}

const NAIVE: &str = "CREATE TABLE naive_events (
    id CHAR(36) NOT NULL PRIMARY KEY, env_id INT UNSIGNED NOT NULL, name VARCHAR(200) NOT NULL,
    ts DATETIME(3) NOT NULL, received_at DATETIME(3) NOT NULL, user_id VARCHAR(200) NULL,
    anonymous_id VARCHAR(200) NULL, session_id VARCHAR(200) NULL, properties JSON NOT NULL, context JSON NOT NULL,
    KEY naive_env_ts (env_id, ts), KEY naive_env_name_ts (env_id, name, ts)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

async fn table_bytes(pool: &MySqlPool, tables: &[&str]) -> u64 {
    let mut total = 0;
    for table in tables {
        sqlx::query(&format!("ANALYZE TABLE {table}"))
            .execute(pool)
            .await
            .expect("analyze");
        let bytes: u64 = sqlx::query_scalar(
            "SELECT CAST(data_length + index_length AS UNSIGNED) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ?",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("size");
        total += bytes;
    }
    total
}

async fn storage(args: &Args, prefix: &str, figures: &mut Vec<Figure>) {
    let catalog = format!("{}/{prefix}_catalog", args.mysql);
    let compact_url = format!("{}/{prefix}_compact", args.mysql);
    cli(args, &catalog, &["shard", "add", "compact", &compact_url]);
    let env_id: u32 = cli(
        args,
        &catalog,
        &["env", "create", "env_compact", "--shard", "compact"],
    )
    .parse()
    .expect("id");
    let compact = MySqlPoolOptions::new()
        .max_connections(POOL)
        .connect(&compact_url)
        .await
        .expect("compact");
    sqlx::query(&format!("CREATE DATABASE {prefix}_naive"))
        .execute(&compact)
        .await
        .expect("naive db");
    let naive = MySqlPoolOptions::new()
        .max_connections(POOL)
        .connect(&format!("{}/{prefix}_naive", args.mysql))
        .await
        .expect("naive");
    sqlx::query(NAIVE)
        .execute(&naive)
        .await
        .expect("naive table");

    // Ours: written by the backend itself, through POST /v1/ingest. Contexts
    // as the door makes them for a realistic population (population.rs).
    let mut rows = events(env_id, args.storage_events, 42);
    population::enrich(&mut rows);
    {
        let (_server, port) = start_backend(args, &catalog).await;
        let bodies = rows
            .chunks(BATCH)
            .map(|c| serde_json::to_vec(c).expect("json"))
            .collect();
        post_all(
            &format!("http://127.0.0.1:{port}"),
            bodies,
            2 * POOL as usize,
        )
        .await;
    }
    stream::iter(rows.chunks(BATCH))
        .for_each_concurrent(POOL as usize, |chunk| {
            let naive = naive.clone();
            async move {
                let mut q = QueryBuilder::<MySql>::new(
                    "INSERT IGNORE INTO naive_events (id, env_id, name, ts, received_at, user_id, anonymous_id, session_id, properties, context) ",
                );
                q.push_values(chunk, |mut b, e| {
                    b.push_bind(e.id.clone())
                        .push_bind(e.env_id)
                        .push_bind(e.name.clone())
                        .push_bind(dt(e.timestamp))
                        .push_bind(dt(e.received_at))
                        .push_bind(e.user_id.clone())
                        .push_bind(e.anonymous_id.clone())
                        .push_bind(e.session_id.clone())
                        .push_bind(serde_json::Value::Object(e.properties.clone()).to_string())
                        .push_bind(serde_json::Value::Object(e.context.clone()).to_string());
                });
                q.build().execute(&naive).await.expect("naive insert");
            }
        })
        .await;
    let n = args.storage_events as f64;
    let ours = table_bytes(&compact, &["events", "event_names", "contexts"]).await as f64 / n;
    let theirs = table_bytes(&naive, &["naive_events"]).await as f64 / n;
    figures.push(Figure {
        name: format!(
            "storage per event ({} events, data + indexes)",
            args.storage_events
        ),
        value: ours,
        unit: "bytes",
        reference: format!("naive schema {theirs:.0}"),
        ratio: Some(ours / theirs),
        target: "≤ 0.6 × naive".into(),
    });
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
            })
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB")
}

fn table(figures: &[Figure]) -> String {
    let mut out = String::from(
        "| figure | value | unit | compared with | ratio | target |\n|---|---:|---|---|---:|---|\n",
    );
    for f in figures {
        let ratio = f
            .ratio
            .map(|r| format!("{r:.2}"))
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "| {} | {:.1} | {} | {} | {} | {} |\n",
            f.name, f.value, f.unit, f.reference, ratio, f.target
        );
    }
    out
}

#[tokio::main]
async fn main() {
    let args = args();
    let prefix = format!("sluice_bench_{}", std::process::id());
    let mut figures = Vec::new();
    // The headline rows, printed at the top of the table.
    let mut top = Vec::new();
    if args.only.as_deref() == Some("edge") {
        edge_only(&args, &prefix, &mut top, &mut figures).await;
        top.append(&mut figures);
        finish(&args, &prefix, top).await;
        return;
    }
    // First, while nothing else of the bench runs: CPU only, in-process.
    if !args.skips("ua") && args.only.as_deref().is_none_or(|only| only == "ua") {
        ua::figures(args.runs, &mut figures);
    }
    if args.only.as_deref() == Some("ua") {
        println!("{}", table(&figures));
        return;
    }
    let (env_ids, ingest_rate) = if args.only.as_deref() == Some("retention") {
        cli(
            &args,
            &format!("{}/{prefix}_catalog", args.mysql),
            &["migrate"],
        );
        (Vec::new(), 0.0)
    } else {
        throughput(&args, &prefix, &mut figures).await
    };
    if args.only.as_deref() == Some("retention") {
        retention::figures(&args, &prefix, &mut figures).await;
    }
    if !args.skips("direct") && args.only.is_none() {
        direct::figures(&args, &prefix, ingest_rate, &mut figures).await;
    }
    if !args.skips("storage") && args.only.is_none() {
        storage(&args, &prefix, &mut figures).await;
    }
    if !args.skips("retention") && args.only.is_none() {
        retention::figures(&args, &prefix, &mut figures).await;
    }
    if !args.skips("export") && args.only.is_none() {
        export::figures(&args, &prefix, &mut figures).await;
    }
    if !args.skips("edge") && args.only.is_none() {
        let (_backend, port) =
            start_backend(&args, &format!("{}/{prefix}_catalog", args.mysql)).await;
        let catalog = format!("{}/{prefix}_catalog", args.mysql);
        let read_token = cli(&args, &catalog, &["env", "token", "env_s1"]);
        let target = edge::Target {
            backend_port: port,
            backend_pid: _backend.0.id(),
            env_id: env_ids[0],
            env_name: "env_s1",
            read_token: &read_token,
            shard: MySqlPool::connect(&format!("{}/{prefix}_s1", args.mysql))
                .await
                .expect("shard s1"),
        };
        edge::figures(target, args.runs, false, &mut top, &mut figures).await;
    }
    if !args.skips("tail") && args.only.is_none() {
        let catalog = format!("{}/{prefix}_catalog", args.mysql);
        let (_backend, port) = start_backend(&args, &catalog).await;
        let read_token = cli(&args, &catalog, &["env", "token", "env_s1"]);
        tail::figures(
            &format!("http://127.0.0.1:{port}"),
            env_ids[0],
            "env_s1",
            &read_token,
            &args.mysql,
            &mut figures,
        )
        .await;
    }

    top.append(&mut figures);
    finish(&args, &prefix, top).await;
}

/// `--only edge`: one shard and environment, the backend for the queue
/// consumers, then the edge's headline rows without the live figures.
async fn edge_only(args: &Args, prefix: &str, top: &mut Vec<Figure>, figures: &mut Vec<Figure>) {
    let catalog = format!("{}/{prefix}_catalog", args.mysql);
    cli(args, &catalog, &["migrate"]);
    let shard_url = format!("{}/{prefix}_s1", args.mysql);
    cli(args, &catalog, &["shard", "add", "s1", &shard_url]);
    let env_id: u32 = cli(
        args,
        &catalog,
        &["env", "create", "env_s1", "--shard", "s1"],
    )
    .parse()
    .expect("id");
    let (backend, port) = start_backend(args, &catalog).await;
    let read_token = cli(args, &catalog, &["env", "token", "env_s1"]);
    let target = edge::Target {
        backend_port: port,
        backend_pid: backend.0.id(),
        env_id,
        env_name: "env_s1",
        read_token: &read_token,
        shard: MySqlPool::connect(&shard_url).await.expect("shard s1"),
    };
    edge::figures(target, args.runs, true, top, figures).await;
}

/// Drops the run's databases, prints the table and writes it (`--write-md`).
async fn finish(args: &Args, prefix: &str, figures: Vec<Figure>) {
    let admin = MySqlPool::connect(&args.mysql).await.expect("server");
    let dbs: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ?",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(&admin)
    .await
    .unwrap_or_default();
    for db in dbs {
        let _ = sqlx::query(&format!("DROP DATABASE `{db}`"))
            .execute(&admin)
            .await;
    }

    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let header = format!(
        "Run {} on {}, commit {commit}, median of {} runs.\nCommand: `{}`\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine(),
        args.runs,
        args.command
    );
    let report = format!("{header}{}", table(&figures));
    println!("{report}");
    if let (Some(path), false) = (&args.write_md, args.skip.is_empty() && args.only.is_none()) {
        eprintln!(
            "not writing {}: stages were skipped ({})",
            path.display(),
            args.skip.join(",")
        );
    } else if let Some(path) = &args.write_md {
        let intro = "# Benchmarks\n\nProduced by `make bench` (`scripts/bench.sh` → `sluice-bench`, bench/src/main.rs). \
            Loopback only, private MariaDB 10.11 started by scripts/mysql.sh (innodb_flush_log_at_trx_commit=2, 512M buffer pool), \
            release builds.\n\n## Latest run\n\n";
        // Hand-written sections below the table (every `## ` heading after
        // "Latest run", not only "Notes") survive a new run.
        let notes = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| {
                let start = old.find("## Latest run")? + 1;
                let rest = &old[start..];
                rest.find("\n## ").map(|i| rest[i..].to_string())
            })
            .unwrap_or_default();
        std::fs::write(path, format!("{intro}{report}{notes}")).expect("write markdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The raw ceiling writes every column the backend writes (its rows go
    /// through the backend's own row definition), so the two stay comparable.
    #[tokio::test]
    async fn the_raw_ceiling_stores_an_event_as_the_backend_does() {
        let server = testkit::mysql_server();
        let prefix = testkit::unique_prefix("bench_raw");
        let url = format!("{server}/{prefix}_shard");
        backend::db::migrate_shard(&url).await.expect("migrate");
        let pool = MySqlPool::connect(&url).await.expect("connect");
        let identify: Envelope = serde_json::from_value(json!({
            "id": "client-id-1", "env_id": 1, "name": "identify", "type": "identify",
            "timestamp": 1_700_000_000_000i64, "received_at": 1_700_000_000_005i64,
            "user_id": "u1", "anonymous_id": "a1", "session_id": "s1",
            "properties": {"p": 1}, "context": {"country": "DE", "ip": "192.0.2.1"},
            "traits": {"plan": "pro"}, "group_id": "g1", "previous_id": "old-1"
        }))
        .expect("envelope");
        raw_insert(&pool, std::slice::from_ref(&identify)).await;
        let row: (u8, Option<String>, Option<String>, Option<String>, Option<String>, String) =
            sqlx::query_as(
                "SELECT event_type, CAST(traits AS CHAR), CAST(group_id AS CHAR), CAST(previous_id AS CHAR), CAST(client_id AS CHAR), CAST(context AS CHAR) FROM events",
            )
            .fetch_one(&pool)
            .await
            .expect("row");
        pool.close().await;
        testkit::drop_databases(&server, &prefix);
        assert_eq!(row.0, identify.event_type.code());
        assert_eq!(row.1.as_deref(), Some(r#"{"plan":"pro"}"#));
        assert_eq!(
            (row.2.as_deref(), row.3.as_deref(), row.4.as_deref()),
            (Some("g1"), Some("old-1"), Some("client-id-1"))
        );
        assert_eq!(
            row.5, r#"{"ip":"192.0.2.1"}"#,
            "only the per-event context stays in the row"
        );
    }
}
