//! Export (issue 19): events/s of `GET /v1/export` streaming a fresh
//! environment of `--storage-events` events (filled as the storage stage
//! fills its own: through the backend, with a realistic population's
//! contexts) beside a raw `SELECT` of the same rows and columns by sqlx in
//! the same run, uncompressed and gzipped, and the backend's memory while
//! it streams: VmRSS before, VmHWM (peak) after a tenth of the range and
//! after all of it — flat when the two peaks agree.

use std::time::{Duration, Instant};

use futures::StreamExt;
use sqlx::{mysql::MySqlPoolOptions, MySqlPool};

use crate::{
    cli, cpu_seconds, events, median, peak_rss_mb, population, post_all, server_pid, start_backend,
    Args, Figure,
};

/// Events ingested per fill request batch (in memory at once in the bench).
const FILL_CHUNK: usize = 50_000;

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// One streaming SELECT of the export's rows and columns, every row drained.
async fn raw_select(pool: &MySqlPool, env_id: u32, (from, to): (i64, i64)) -> (u64, Duration) {
    let query = format!(
        "SELECT {} FROM events_full WHERE env_id = ? AND ts >= ? AND ts < ? ORDER BY ts, id",
        backend::shards::HISTORY_COLUMNS
    );
    let started = Instant::now();
    let mut rows = sqlx::query(&query)
        .bind(env_id)
        .bind(crate::dt(from))
        .bind(crate::dt(to))
        .fetch(pool);
    let mut n = 0u64;
    while let Some(row) = rows.next().await {
        row.expect("row");
        n += 1;
    }
    (n, started.elapsed())
}

/// `GET /v1/export` read to its end: (lines, bytes received, time). Gzipped
/// bodies are counted as received (the bench does not inflate them).
async fn http_export(
    base: &str,
    token: &str,
    env: &str,
    (from, to): (i64, i64),
    gzip: bool,
) -> (u64, u64, Duration) {
    let mut request = reqwest::Client::new()
        .get(format!("{base}/v1/export?env={env}&from={from}&to={to}"))
        .bearer_auth(token);
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    let started = Instant::now();
    let mut response = request.send().await.expect("export");
    assert_eq!(response.status(), 200);
    let (mut lines, mut bytes) = (0u64, 0u64);
    while let Some(chunk) = response.chunk().await.expect("the whole export") {
        bytes += chunk.len() as u64;
        if !gzip {
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    (lines, bytes, started.elapsed())
}

pub async fn figures(args: &Args, prefix: &str, figures: &mut Vec<Figure>) {
    let catalog = format!("{}/{prefix}_catalog", args.mysql);
    let url = format!("{}/{prefix}_export", args.mysql);
    cli(args, &catalog, &["shard", "add", "export", &url]);
    let env_id: u32 = cli(
        args,
        &catalog,
        &["env", "create", "env_export", "--shard", "export"],
    )
    .parse()
    .expect("id");
    let token = cli(args, &catalog, &["env", "token", "env_export"]);
    let (server, port) = start_backend(args, &catalog).await;
    let base = format!("http://127.0.0.1:{port}");
    let n = args.storage_events;
    let mut filled = 0;
    while filled < n {
        let mut rows = events(env_id, FILL_CHUNK.min(n - filled), 19_000 + filled as u64);
        population::enrich(&mut rows);
        let bodies = rows
            .chunks(crate::BATCH)
            .map(|c| serde_json::to_vec(c).expect("json"))
            .collect();
        post_all(&base, bodies, 2 * crate::POOL as usize).await;
        filled += rows.len();
    }
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("export shard");
    let (first, last): (chrono::NaiveDateTime, chrono::NaiveDateTime) =
        sqlx::query_as("SELECT MIN(ts), MAX(ts) FROM events WHERE env_id = ?")
            .bind(env_id)
            .fetch_one(&pool)
            .await
            .expect("range");
    let range = (
        first.and_utc().timestamp_millis(),
        last.and_utc().timestamp_millis() + 1,
    );
    let tenth = (range.0, range.0 + (range.1 - range.0) / 10);
    // The shard server's process, when it runs on this machine (its CPU per
    // phase says whose work the time is): NaN figures otherwise.
    let server_pid = server_pid(&pool).await;
    let bench_pid = std::process::id();
    // CPU seconds of (shard server, backend, this bench) so far.
    let cpu = |pid: u32| {
        [
            cpu_seconds(server_pid),
            cpu_seconds(pid),
            cpu_seconds(bench_pid),
        ]
    };
    let used = |before: [f64; 3], after: [f64; 3]| {
        format!(
            "CPU s: MariaDB {:.1}, backend {:.1}, bench {:.1}",
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        )
    };

    // Warm the buffer pool, then memory: a tenth of the range, then all of it.
    raw_select(&pool, env_id, range).await;
    let pid = server.0.id();
    let rss_before = rss_mb(pid);
    http_export(&base, &token, "env_export", tenth, false).await;
    let peak_tenth = peak_rss_mb(pid);

    let (mut raw_rates, mut plain_rates, mut gzip_rates, mut gzip_bytes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let before = cpu(pid);
        let (rows, raw_took) = raw_select(&pool, env_id, range).await;
        let raw_cpu = used(before, cpu(pid));
        assert_eq!(rows as usize, n, "every event selected");
        raw_rates.push(rows as f64 / raw_took.as_secs_f64());
        let before = cpu(pid);
        let (lines, bytes, plain_took) =
            http_export(&base, &token, "env_export", range, false).await;
        let export_cpu = used(before, cpu(pid));
        assert_eq!(lines as usize, n, "every event exported");
        plain_rates.push(lines as f64 / plain_took.as_secs_f64());
        let (_, compressed, took) = http_export(&base, &token, "env_export", range, true).await;
        gzip_rates.push(n as f64 / took.as_secs_f64());
        gzip_bytes.push(compressed as f64 / n as f64);
        eprintln!(
            "export run {}: raw SELECT {:.0} rows/s ({:.1} s; {raw_cpu}), export {:.0} lines/s ({:.0} bytes/line; {:.1} s; {export_cpu}), gzip {:.0} lines/s ({:.0} bytes/line)",
            run + 1,
            raw_rates[run],
            raw_took.as_secs_f64(),
            plain_rates[run],
            bytes as f64 / n as f64,
            plain_took.as_secs_f64(),
            gzip_rates[run],
            gzip_bytes[run]
        );
    }
    let peak_all = peak_rss_mb(pid);
    let rss_after = rss_mb(pid);
    let (raw, plain, gzip) = (median(raw_rates), median(plain_rates), median(gzip_rates));
    figures.push(Figure {
        name: format!("export, uncompressed ({n} events, GET /v1/export)"),
        value: plain,
        unit: "events/s",
        reference: format!("raw sqlx SELECT of the same rows {raw:.0}"),
        ratio: Some(plain / raw),
        target: "≥ 0.7 × raw".into(),
    });
    figures.push(Figure {
        name: format!(
            "export, gzip ({:.0} bytes per event sent)",
            median(gzip_bytes)
        ),
        value: gzip,
        unit: "events/s",
        reference: format!("uncompressed {plain:.0}"),
        ratio: Some(gzip / plain),
        target: "-".into(),
    });
    figures.push(Figure {
        name: format!(
            "backend RSS during exports: before {rss_before:.0} MB, peak after a tenth {peak_tenth:.0} MB, after {rss_after:.0} MB"
        ),
        value: peak_all,
        unit: "MB peak",
        reference: format!("peak after a tenth {peak_tenth:.0}"),
        ratio: Some(peak_all / peak_tenth),
        target: "flat (≈ 1.0)".into(),
    });
}
