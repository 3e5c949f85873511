//! What a retention pass costs ingest (issue 19): one environment filled
//! with `--storage-events` events 40 days old (through `POST /v1/ingest`,
//! as the storage stage fills its environment), then the backend's write
//! throughput into that environment over a fixed window without a pass, and
//! over the same window inside a pass that `backend serve` itself runs
//! (`SLUICE_RETENTION_INTERVAL_SECS=1`) once the environment gets a 30-day
//! retention. The pass's own rate comes from
//! `sluice_retention_deleted_total`, polled every 100 ms. Before the pass,
//! the same window beside an erasure's sweep of the environment
//! (`backend user erase`, whose id matches nothing). Each window splits the
//! CPU it used between the shard server, the backend and the load. After
//! each saturated window (before the pass and inside it) comes one offered
//! at a fixed half of the throughput without a pass, measured by what lands
//! and by each write's latency.

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};

use super::{
    cli, cpu_seconds, events, percentile, post_all, server_pid, set_clock, start_backend_with,
    Args, Figure, BATCH, POOL, TOKEN,
};

/// Each throughput window.
const WINDOW: Duration = Duration::from_secs(10);
const DAY_MS: i64 = 86_400_000;

/// The processes whose CPU a window splits: the shard server, the backend,
/// this bench (the load).
struct Processes([u32; 3]);

impl Processes {
    fn cpu(&self) -> [f64; 3] {
        self.0.map(cpu_seconds)
    }
}

/// One window: events per second committed, and the cores each of
/// [`Processes`] kept busy meanwhile.
struct Window {
    rate: f64,
    cores: [f64; 3],
}

impl Window {
    fn busy(&self) -> String {
        format!(
            "MariaDB {:.2}, backend {:.2}, load {:.2} cores",
            self.cores[0], self.cores[1], self.cores[2]
        )
    }
}

/// Events per second the backend commits into `env_id` over `WINDOW`
/// (fresh events, `2 × POOL` batches in flight, as the throughput stage).
async fn ingest_rate(base: &str, env_id: u32, seed: u64, processes: &Processes) -> Window {
    let before = processes.cpu();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WINDOW;
    let started = Instant::now();
    let landed: usize = stream::iter(0..)
        .take_while(|_| std::future::ready(Instant::now() < deadline))
        .map(|i: u64| {
            let client = client.clone();
            async move {
                let body = serde_json::to_vec(&events(env_id, BATCH, seed + i)).expect("json");
                let response = client
                    .post(format!("{base}/v1/ingest"))
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("post");
                assert_eq!(response.status(), 200);
                BATCH
            }
        })
        .buffer_unordered(2 * POOL as usize)
        .fold(0, |sum, n| std::future::ready(sum + n))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let after = processes.cpu();
    Window {
        rate: landed as f64 / seconds,
        cores: [0, 1, 2].map(|i| (after[i] - before[i]) / seconds),
    }
}

/// A paced window: what landed and how long each request took.
struct Paced {
    /// Events per second answered 200 (sent over `WINDOW`, until the last
    /// answer).
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `rate` events per second offered over `WINDOW` at a fixed pace, one
/// batch per request whatever the answers do (open loop: a slow shard shows
/// as latency, measured from each request's planned start, and as a rate
/// below the offered one).
async fn paced_ingest(base: &str, env_id: u32, seed: u64, rate: f64) -> Paced {
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(BATCH as f64 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    let mut i = 0;
    while started.elapsed() < WINDOW {
        let planned = tick.tick().await;
        let body = serde_json::to_vec(&events(env_id, BATCH, seed + i)).expect("json");
        i += 1;
        let request = client
            .post(format!("{base}/v1/ingest"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send();
        requests.spawn(async move {
            let status = request.await.expect("post").status();
            (status, planned.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut latencies = Vec::new();
    let mut landed = 0;
    while let Some(done) = requests.join_next().await {
        let (status, ms) = done.expect("request task");
        assert_eq!(status, 200);
        landed += BATCH;
        latencies.push(ms);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    Paced {
        rate: landed as f64 / seconds,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// Events the backend's retention task has deleted so far.
async fn deleted(base: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with("sluice_retention_deleted_total") && l.contains(r#"table="events""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub async fn figures(args: &Args, prefix: &str, figures: &mut Vec<Figure>) {
    let catalog = format!("{}/{prefix}_catalog", args.mysql);
    cli(
        args,
        &catalog,
        &[
            "shard",
            "add",
            "retention",
            &format!("{}/{prefix}_retention", args.mysql),
        ],
    );
    let env_id: u32 = cli(
        args,
        &catalog,
        &["env", "create", "env_retention", "--shard", "retention"],
    )
    .parse()
    .expect("id");
    let (server, port) =
        start_backend_with(args, &catalog, &[("SLUICE_RETENTION_INTERVAL_SECS", "1")]).await;
    let mysql = sqlx::MySqlPool::connect(&args.mysql).await.expect("mysql");
    let processes = Processes([server_pid(&mysql).await, server.0.id(), std::process::id()]);
    let base = format!("http://127.0.0.1:{port}");

    let now = chrono::Utc::now().timestamp_millis();
    set_clock(env_id, now - 40 * DAY_MS);
    let old = args.storage_events;
    let mut filled = 0;
    while filled < old {
        let n = (old - filled).min(50_000);
        let bodies = events(env_id, n, 7_000 + filled as u64)
            .chunks(BATCH)
            .map(|c| serde_json::to_vec(c).expect("json"))
            .collect();
        post_all(&base, bodies, 2 * POOL as usize).await;
        filled += n;
    }
    // From here on the environment's events are recent ones.
    set_clock(env_id, now);

    let without = ingest_rate(&base, env_id, 100_000, &processes).await;
    // Half the throughput just measured, offered at a fixed pace: a shard
    // with room to spare, as production runs one.
    let pace = without.rate / 2.0;
    let paced_without = paced_ingest(&base, env_id, 120_000, pace).await;

    // An erasure's sweep beside ingest: `backend user erase` reads every row
    // of the environment (no index on user_id) while the same window runs. The
    // id matches nothing, so the retention's count below stays exact.
    let erase = tokio::process::Command::new(&args.backend)
        .args([
            "user",
            "erase",
            "env_retention",
            "--user-id",
            "nobody",
            "--suppress-days",
            "0",
        ])
        .env("SLUICE_DATABASE_URL", &catalog)
        .output();
    let swept = Instant::now();
    let (erase, during_erasure) = tokio::join!(
        async {
            let out = erase.await.expect("backend user erase");
            (out, swept.elapsed())
        },
        ingest_rate(&base, env_id, 150_000, &processes)
    );
    let ((out, took), during_erasure) = (erase, during_erasure);
    assert!(
        out.status.success(),
        "user erase: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let scanned: u64 = stdout
        .split('(')
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("rows read");
    let sweep_rate = scanned as f64 / took.as_secs_f64();
    eprintln!(
        "erasure sweep: {scanned} rows read in {:.1} s beside ingest at {:.0} ev/s ({})",
        took.as_secs_f64(),
        during_erasure.rate,
        during_erasure.busy()
    );

    cli(
        args,
        &catalog,
        &["env", "retention", "env_retention", "--days", "30"],
    );
    // The pass starts within the catalog refresh (1 s) + the interval (1 s).
    let wait = Instant::now();
    let (started, at_start) = loop {
        let n = deleted(&base).await;
        if n > 0 {
            break (Instant::now(), n);
        }
        assert!(
            wait.elapsed() < Duration::from_secs(30),
            "no retention pass started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let during = ingest_rate(&base, env_id, 200_000, &processes).await;
    let at_window_end = deleted(&base).await;
    let inside = at_window_end < old as u64;
    let paced_during = paced_ingest(&base, env_id, 250_000, pace).await;
    let at_paced_end = deleted(&base).await;
    let paced_inside = at_paced_end < old as u64;
    let paced_deletes = (at_paced_end - at_window_end) as f64 / WINDOW.as_secs_f64();
    let ended = loop {
        if deleted(&base).await >= old as u64 {
            break Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "retention pass did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pass_rate = (old as u64 - at_start) as f64 / (ended - started).as_secs_f64();
    let inside_rate = (at_window_end - at_start) as f64 / WINDOW.as_secs_f64();
    // Without a pass again, after it: the reference is the mean of the two
    // windows around it, so neither the fill's nor the deletes' after-work
    // (InnoDB flushing and purge) weighs on one side only.
    let after = ingest_rate(&base, env_id, 300_000, &processes).await;
    eprintln!(
        "retention: {:.0} ev/s without a pass before it ({}), {:.0} after it ({}), {:.0} inside it ({}; \
         {at_start} deleted at its start, {at_window_end} at the window's end: {inside_rate:.0} rows/s; \
         {old} in all), pass {pass_rate:.0} rows/s",
        without.rate,
        without.busy(),
        after.rate,
        after.busy(),
        during.rate,
        during.busy()
    );
    let without_mean = (without.rate + after.rate) / 2.0;
    // The shard server's CPU per event written (the windows without a pass)
    // and per row deleted (inside the pass, what its writes do not explain).
    let mariadb_per_event = (without.cores[0] + after.cores[0]) / 2.0 / without_mean;
    let mariadb_per_delete =
        (during.cores[0] - mariadb_per_event * during.rate) / inside_rate.max(1.0);
    let (during_erasure, during) = (during_erasure.rate, during.rate);
    let without = without_mean;
    figures.push(Figure {
        name: format!(
            "write throughput inside a retention pass ({} s, pass deleting {old} events{})",
            WINDOW.as_secs(),
            if inside {
                ""
            } else {
                "; NOT inside: the pass ended first"
            }
        ),
        value: during,
        unit: "events/s",
        reference: format!("without a pass {without:.0} (mean of the windows before and after it)"),
        ratio: Some(during / without),
        target: "≥ 0.9 ×".into(),
    });
    eprintln!(
        "retention, paced at {pace:.0} ev/s: without a pass {:.0} ev/s landed, p50 {:.1} ms, p99 {:.1} ms; \
         inside it {:.0} ev/s, p50 {:.1} ms, p99 {:.1} ms ({paced_deletes:.0} rows/s deleted meanwhile{})",
        paced_without.rate,
        paced_without.p50_ms,
        paced_without.p99_ms,
        paced_during.rate,
        paced_during.p50_ms,
        paced_during.p99_ms,
        if paced_inside { "" } else { "; the pass ended first" }
    );
    let paced_note = if paced_inside {
        String::new()
    } else {
        "; NOT inside: the pass ended first".into()
    };
    figures.push(Figure {
        name: format!(
            "writes landed inside the pass, offered at a fixed {pace:.0} events/s (half the throughput without; \
             {paced_deletes:.0} rows/s deleted meanwhile{paced_note})"
        ),
        value: paced_during.rate,
        unit: "events/s",
        reference: format!("without a pass {:.0}", paced_without.rate),
        ratio: Some(paced_during.rate / paced_without.rate),
        target: "-".into(),
    });
    figures.push(Figure {
        name: "p99 of those 500-event writes inside the pass, from each one's planned start".into(),
        value: paced_during.p99_ms,
        unit: "ms",
        reference: format!(
            "without a pass {:.1} (p50 {:.1} inside, {:.1} without)",
            paced_without.p99_ms, paced_during.p50_ms, paced_without.p50_ms
        ),
        ratio: Some(paced_during.p99_ms / paced_without.p99_ms),
        target: "-".into(),
    });
    figures.push(Figure {
        name: format!(
            "write throughput during an erasure's sweep ({} s; the sweep read {scanned} rows in {:.1} s{})",
            WINDOW.as_secs(),
            took.as_secs_f64(),
            if took >= WINDOW { "" } else { ", shorter than the window" }
        ),
        value: during_erasure,
        unit: "events/s",
        reference: format!("without a pass {without:.0}"),
        ratio: Some(during_erasure / without),
        target: "-".into(),
    });
    figures.push(Figure {
        name: "erasure sweep rate (backend user erase, primary-key chunks of 5,000)".into(),
        value: sweep_rate,
        unit: "rows read/s",
        reference: "-".into(),
        ratio: None,
        target: "-".into(),
    });
    figures.push(Figure {
        name: format!(
            "retention deletes inside that window (chunks of {}, {} ms apart)",
            std::env::var("SLUICE_RETENTION_CHUNK_ROWS").unwrap_or_else(|_| "5000".into()),
            std::env::var("SLUICE_RETENTION_PAUSE_MS").unwrap_or_else(|_| "50".into()),
        ),
        value: inside_rate,
        unit: "rows/s",
        reference: "-".into(),
        ratio: None,
        target: "-".into(),
    });
    figures.push(Figure {
        name: "MariaDB CPU per row deleted inside the pass (beyond its writes' share), per event written without one".into(),
        value: mariadb_per_delete * 1e6,
        unit: "µs/row",
        reference: format!("{:.1} µs per event written", mariadb_per_event * 1e6),
        ratio: Some(mariadb_per_delete / mariadb_per_event),
        target: "-".into(),
    });
    figures.push(Figure {
        name: format!(
            "retention pass rate (deleting {old} events, {} s of it beside ingest)",
            WINDOW.as_secs()
        ),
        value: pass_rate,
        unit: "rows/s",
        reference: "target 20,000".into(),
        ratio: Some(pass_rate / 20_000.0),
        target: "≥ 20,000".into(),
    });
}
