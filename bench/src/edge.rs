//! Edge figures under `wrangler dev` (workerd): wasm size, start-up and first
//! request, and answer latency next to a trivial worker in the same harness.

use std::{
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::{stream, StreamExt};
use serde_json::json;

use crate::{Figure, TOKEN};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// `wrangler dev` in its own process group: dropping it stops wrangler and
/// the workerd it started (a SIGKILL to wrangler alone would orphan workerd).
struct Wrangler(Child);

impl Drop for Wrangler {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        for _ in 0..50 {
            if self.0.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

fn wrangler(args: &[&str]) -> Wrangler {
    use std::os::unix::process::CommandExt;
    // Its output (the worker's logs, workerd's errors) goes to a file per
    // run, for when a stage fails: target/artifacts/wrangler-<port>.log.
    let _ = std::fs::create_dir_all("target/artifacts");
    let port = args
        .iter()
        .position(|a| *a == "--port")
        .and_then(|i| args.get(i + 1))
        .copied()
        .unwrap_or("dev");
    let log = std::fs::File::create(format!("target/artifacts/wrangler-{port}.log")).ok();
    let (out, err) = match log.and_then(|f| f.try_clone().ok().map(|g| (f, g))) {
        Some((f, g)) => (Stdio::from(f), Stdio::from(g)),
        None => (Stdio::null(), Stdio::null()),
    };
    Wrangler(
        Command::new("scripts/wrangler.sh")
            .args(args)
            // Several run at once: each gets its own inspector port.
            .args(["--inspector-port", &free_port().to_string()])
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("spawn wrangler dev"),
    )
}

/// A directory under .dev/ holding [`local_config`] of wrangler.toml.
fn bench_config(name: &str, consumers: bool) -> std::path::PathBuf {
    let dir = Path::new(".dev").join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let main_js = std::fs::canonicalize("build/index.js").expect("build/index.js");
    let toml = std::fs::read_to_string("wrangler.toml").expect("wrangler.toml");
    std::fs::write(
        dir.join("wrangler.toml"),
        local_config(&toml, &main_js.to_string_lossy(), consumers),
    )
    .expect("bench config");
    dir
}

/// `wrangler dev` of the config in `dir` on a free port, once `ready_path` answers.
async fn dev_server(dir: &Path, ready_path: &str, extra: &[&str]) -> (Wrangler, String) {
    let port = free_port();
    let config = dir.join("wrangler.toml");
    let port_arg = port.to_string();
    let mut args = vec![
        "dev",
        "--config",
        config.to_str().unwrap_or_default(),
        "--ip",
        "127.0.0.1",
        "--port",
        &port_arg,
    ];
    args.extend_from_slice(extra);
    let server = wrangler(&args);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{url}{ready_path}"), Duration::from_secs(120)).await;
    (server, url)
}

async fn wait_ready(url: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().as_u16() < 500)
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} did not answer within {limit:?}");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (p50, p99) in ms of `n` POSTs with `concurrency` in flight.
async fn latencies(url: &str, key: &str, body: &[u8], n: usize, concurrency: usize) -> (f64, f64) {
    let client = reqwest::Client::new();
    let mut ms: Vec<f64> = stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            async move {
                // wrangler dev's proxy now and then answers 503 "Your worker
                // restarted mid-request" (seen twice in ~40,000 requests):
                // said out loud and tried again, timed from the new try.
                for attempt in 1.. {
                    let started = Instant::now();
                    let response = client
                        .post(url)
                        .bearer_auth(key)
                        .header("content-type", "application/json")
                        .body(body.to_vec())
                        .send()
                        .await
                        .expect("post");
                    let status = response.status().as_u16();
                    if status == 202 {
                        return started.elapsed().as_secs_f64() * 1000.0;
                    }
                    let text = response.text().await.unwrap_or_default();
                    assert!(
                        status == 503 && text.contains("restarted mid-request") && attempt < 3,
                        "{url}: {status} {text}"
                    );
                    eprintln!("{url}: 503 worker restarted mid-request, trying again");
                }
                unreachable!("the loop returns or panics")
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    ms.sort_by(|a, b| a.total_cmp(b));
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

/// wrangler.toml's local part with `main` pointing at `main_js` and without
/// the build step (scripts/bench.sh built it; wrangler's source watcher
/// would otherwise reload the worker mid-measurement). Without queue
/// consumers, the worker is renamed `sluice-edge-ingest-only`.
fn local_config(wrangler_toml: &str, main_js: &str, consumers: bool) -> String {
    let local = wrangler_toml
        .split("\n[env.")
        .next()
        .unwrap_or(wrangler_toml);
    let mut out = String::new();
    let mut skipping = false;
    for line in local.lines() {
        if line.starts_with('[') {
            skipping = line == "[build]" || (!consumers && line == "[[queues.consumers]]");
        }
        if skipping {
            continue;
        }
        if line.starts_with("main = ") {
            out.push_str(&format!("main = {main_js:?}\n"));
        } else if !consumers && line.starts_with("name = \"sluice-edge\"") {
            out.push_str("name = \"sluice-edge-ingest-only\"\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Medians over `runs` of (p50, p99) for `worker` and for `trivial`, run
/// alternately so both see the same machine.
async fn against_trivial(
    worker: &str,
    trivial: &str,
    key: &str,
    body: &[u8],
    n: usize,
    concurrency: usize,
    runs: usize,
) -> ((f64, f64), (f64, f64)) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ours.push(latencies(&format!("{worker}/v1/events"), key, body, n, concurrency).await);
        theirs.push(latencies(&format!("{trivial}/v1/events"), key, body, n, concurrency).await);
    }
    let medians = |v: &[(f64, f64)]| {
        (
            crate::median(v.iter().map(|x| x.0).collect()),
            crate::median(v.iter().map(|x| x.1).collect()),
        )
    };
    (medians(&ours), medians(&theirs))
}

/// An edge p99 next to the same p99 of a trivial worker, and the difference.
fn p99_figure(name: String, p99: f64, trivial: &str, t99: f64, target: &str) -> Figure {
    Figure {
        name,
        value: p99,
        unit: "ms",
        reference: format!("{trivial} {t99:.2} (overhead {:.2})", p99 - t99),
        ratio: Some(p99 / t99),
        target: target.into(),
    }
}

/// The "202 → seen within 2 s" figure: ms from each start to when its key
/// was seen; `name(count, p50, missing)` describes it. None if nothing was seen.
fn two_second_figure<K: Eq + std::hash::Hash>(
    starts: impl IntoIterator<Item = (K, Instant)>,
    seen: &std::collections::HashMap<K, Instant>,
    name: impl FnOnce(usize, f64, usize) -> String,
) -> Option<Figure> {
    let (mut ms, mut missing) = (Vec::new(), 0);
    for (key, at) in starts {
        match seen.get(&key) {
            Some(t) => ms.push(t.saturating_duration_since(at).as_secs_f64() * 1000.0),
            None => missing += 1,
        }
    }
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&ms, 0.5), percentile(&ms, 0.99));
    Some(Figure {
        name: name(ms.len(), p50, missing),
        value: p99,
        unit: "ms",
        reference: "target 2000".into(),
        ratio: Some(p99 / 2000.0),
        target: "p99 ≤ 2 s".into(),
    })
}

/// A worker under .dev/ that answers 202 after running `body_js` (in an
/// async fetch handler with `request` in scope).
fn trivial_worker(name: &str, body_js: &str) -> std::path::PathBuf {
    let dir = Path::new(".dev").join(format!("bench-{name}"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("index.js"),
        format!("export default {{ async fetch(request) {{ {body_js}return new Response('{{\"accepted\":1}}', {{ status: 202, headers: {{ 'content-type': 'application/json' }} }}); }} }};\n"),
    )
    .expect("trivial worker");
    std::fs::write(
        dir.join("wrangler.toml"),
        format!("name = \"{name}\"\nmain = \"index.js\"\ncompatibility_date = \"2026-04-20\"\n"),
    )
    .expect("trivial config");
    dir
}

fn events(n: usize) -> Vec<u8> {
    let list: Vec<_> = (0..n)
        .map(|i| json!({"event": "page_view", "user_id": format!("u{i}"), "properties": {"path": "/pricing", "ref": "ad", "plan": "pro", "amount": 12.5, "step": i}}))
        .collect();
    serde_json::to_vec(&list).expect("json")
}

pub struct Target<'a> {
    pub backend_port: u16,
    pub backend_pid: u32,
    pub env_id: u32,
    pub env_name: &'a str,
    pub read_token: &'a str,
    /// The environment's shard, where freshness looks for rows.
    pub shard: sqlx::MySqlPool,
}

pub async fn figures(target: Target<'_>, runs: usize, figures: &mut Vec<Figure>) {
    let Target {
        backend_port,
        backend_pid,
        env_id,
        env_name,
        read_token,
        shard,
    } = target;
    // Size of what `wrangler deploy` uploads.
    let wasm =
        std::fs::read("build/index_bg.wasm").expect("build/index_bg.wasm (scripts/build-edge.sh)");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&wasm).expect("gzip");
    let gzipped = gz.finish().expect("gzip").len() as f64 / 1024.0;
    figures.push(Figure {
        name: format!(
            "worker wasm size, gzip ({:.0} KB raw)",
            wasm.len() as f64 / 1024.0
        ),
        value: gzipped,
        unit: "KB",
        reference: "target 1024".into(),
        ratio: Some(gzipped / 1024.0),
        target: "< 1 MB gzip".into(),
    });

    let out = Command::new("node")
        .args([
            "scripts/key.mjs",
            "create",
            "--env-id",
            &env_id.to_string(),
            "--env-name",
            "bench",
        ])
        .output()
        .expect("key.mjs");
    assert!(
        out.status.success(),
        "key.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();

    let trivial = trivial_worker("trivial", "");

    let backend_var = format!("BACKEND_URL:http://127.0.0.1:{backend_port}");
    let token_var = format!("INGEST_TOKEN:{TOKEN}");
    let spawned = Instant::now();
    let (_edge, edge) = dev_server(
        &bench_config("bench-edge", true),
        "/healthz",
        &["--var", &backend_var, "--var", &token_var],
    )
    .await;
    let ready = spawned.elapsed();
    let first = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{edge}/v1/events"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(events(1))
        .send()
        .await
        .expect("first request");
    assert_eq!(response.status(), 202);
    let first_ms = first.elapsed().as_secs_f64() * 1000.0;
    figures.push(Figure {
        name: format!(
            "edge first request after start-up (wrangler dev ready after {:.1} s)",
            ready.as_secs_f64()
        ),
        value: first_ms,
        unit: "ms",
        reference: "-".into(),
        ratio: None,
        target: "-".into(),
    });

    let (_trivial, trivial_url) = dev_server(&trivial, "/", &[]).await;

    for (label, body) in [("1-event", events(1)), ("50-event", events(50))] {
        for (concurrency, n) in [(1usize, 300usize), (32, 2000)] {
            let ((p50, p99), (t50, t99)) =
                against_trivial(&edge, &trivial_url, &key, &body, n, concurrency, runs).await;
            figures.push(Figure {
                name: format!("edge answer p50, {label}, concurrency {concurrency}"),
                value: p50,
                unit: "ms",
                reference: format!("trivial worker {t50:.2}"),
                ratio: Some(p50 / t50),
                target: "-".into(),
            });
            figures.push(p99_figure(
                format!("edge answer p99, {label}, concurrency {concurrency}"),
                p99,
                "trivial worker",
                t99,
                if label == "1-event" {
                    "overhead ≤ 1 ms"
                } else {
                    "-"
                },
            ));
        }
    }
    // The same worker without the queue consumer: in wrangler dev the consumer
    // runs on the isolate's thread, and its bursts (once per batch timeout)
    // show in the answer tail. On Cloudflare the consumer can be its own Worker.
    let (_ingest, ingest_url) =
        dev_server(&bench_config("bench-ingest-only", false), "/healthz", &[]).await;
    for (concurrency, n) in [(1usize, 300usize), (32, 2000)] {
        let ((_, p99), (_, t99)) = against_trivial(
            &ingest_url,
            &trivial_url,
            &key,
            &events(1),
            n,
            concurrency,
            runs,
        )
        .await;
        figures.push(p99_figure(
            format!("edge answer p99, 1-event, concurrency {concurrency}, no queue consumer in the same workerd"),
            p99,
            "trivial worker",
            t99,
            "overhead ≤ 1 ms",
        ));
    }
    drop(_ingest);

    // Against a trivial worker that also reads the request body: what is left
    // is the worker's own work (key check, validation, enrichment, queueing).
    let reader = trivial_worker("trivial-body-reader", "await request.arrayBuffer(); ");
    let (_reader, reader_url) = dev_server(&reader, "/", &[]).await;
    for (concurrency, n) in [(1usize, 300usize), (32, 2000)] {
        let ((p50, p99), (t50, t99)) =
            against_trivial(&edge, &reader_url, &key, &events(1), n, concurrency, runs).await;
        figures.push(p99_figure(
            format!("edge answer p50/p99, 1-event, concurrency {concurrency}, against a trivial worker that reads the body (p50 {p50:.2} vs {t50:.2})"),
            p99,
            "body-reading trivial worker",
            t99,
            "-",
        ));
    }
    drop(_reader);

    live(
        &edge,
        &key,
        &format!("http://127.0.0.1:{backend_port}"),
        backend_pid,
        (env_id, env_name),
        read_token,
        &shard,
        figures,
    )
    .await;
}

/// A steady 2,000 events/s through the edge for 30 s (100 requests/s of 20
/// events, each request's events with ids of their own). Freshness: the time
/// from each request's 202 to its rows being visible in MySQL (a poller looks
/// the pending ids up by primary key every 20 ms). Event → dashboard: probe
/// events once a second, the time from 202 to the first SSE update that
/// counts them. Then 200 viewers of one environment: database reads per
/// second, backend CPU and memory.
#[allow(clippy::too_many_arguments)]
pub async fn live(
    edge: &str,
    key: &str,
    backend: &str,
    backend_pid: u32,
    (env_id, env_name): (u32, &str),
    read_token: &str,
    shard: &sqlx::MySqlPool,
    figures: &mut Vec<Figure>,
) {
    use std::{collections::HashMap, sync::Arc};
    use tokio::sync::Mutex;

    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stream_url = format!("{backend}/v1/stats/stream?env={env_name}");
    let mut response = reqwest::Client::new()
        .get(&stream_url)
        .bearer_auth(read_token)
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
                        continue;
                    };
                    let Ok(update) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                        continue;
                    };
                    let now = Instant::now();
                    let mut seen = seen.lock().await;
                    for second in update["seconds"].as_array().into_iter().flatten() {
                        for name in second["by_event"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, _)| k)
                        {
                            if name.starts_with("probe-") {
                                seen.entry(name.clone()).or_insert(now);
                            }
                        }
                    }
                }
            }
        })
    };

    let client = reqwest::Client::new();
    let url = format!("{edge}/v1/events");
    // Request r is tracked by the stored key of its first event.
    let answered: Arc<Mutex<HashMap<[u8; 16], Instant>>> = Arc::default();
    let load = {
        let (client, url, key, answered) = (
            client.clone(),
            url.clone(),
            key.to_string(),
            answered.clone(),
        );
        tokio::spawn(async move {
            // 100 requests of 20 events per second = 2,000 events/s, for 30 s.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut requests = Vec::new();
            for r in 0..3000 {
                tick.tick().await;
                let body: Vec<_> = (0..20)
                    .map(|i| json!({"event": "fresh", "id": format!("fresh-{r}-{i}"), "properties": {"r": r}}))
                    .collect();
                let body = serde_json::to_vec(&body).expect("json");
                let (client, url, key, answered) =
                    (client.clone(), url.clone(), key.clone(), answered.clone());
                requests.push(tokio::spawn(async move {
                    let response = client
                        .post(url)
                        .bearer_auth(key)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    if response.is_ok_and(|r| r.status() == 202) {
                        let at = Instant::now();
                        answered
                            .lock()
                            .await
                            .insert(protocol::event_key(&format!("fresh-{r}-0")), at);
                    }
                }));
            }
            for request in requests {
                let _ = request.await;
            }
        })
    };
    let visible: Arc<Mutex<HashMap<[u8; 16], Instant>>> = Arc::default();
    let poller = {
        let (answered, visible, shard) = (answered.clone(), visible.clone(), shard.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let pending: Vec<[u8; 16]> = {
                    let (answered, visible) = (answered.lock().await, visible.lock().await);
                    answered
                        .keys()
                        .filter(|k| !visible.contains_key(*k))
                        .copied()
                        .collect()
                };
                for chunk in pending.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<sqlx::MySql>::new(
                        "SELECT id FROM events WHERE env_id = ",
                    );
                    q.push_bind(env_id).push(" AND id IN (");
                    let mut ids = q.separated(", ");
                    for id in chunk {
                        ids.push_bind(id.as_slice());
                    }
                    q.push(")");
                    let Ok(rows) = q.build_query_scalar::<Vec<u8>>().fetch_all(&shard).await else {
                        continue;
                    };
                    let now = Instant::now();
                    let mut visible = visible.lock().await;
                    for row in rows {
                        if let Ok(id) = <[u8; 16]>::try_from(row.as_slice()) {
                            visible.entry(id).or_insert(now);
                        }
                    }
                }
            }
        })
    };
    let mut sent = Vec::new();
    for k in 0..30 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let name = format!("probe-{k}");
        let body = serde_json::to_vec(&json!({"event": name})).expect("json");
        let response = client
            .post(&url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == 202) {
            sent.push((name, Instant::now()));
        }
    }
    let _ = load.await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    reader.abort();
    poller.abort();
    let answered = answered.lock().await.clone();
    figures.extend(two_second_figure(answered, &*visible.lock().await, |n, p50, missing| {
        format!("freshness: edge 202 → row visible in MySQL, p99 at 2,000 ev/s for 30 s ({n} requests of 20 events, p50 {p50:.0} ms, {missing} not visible within 8 s)")
    }));
    figures.extend(two_second_figure(sent, &*seen.lock().await, |n, p50, missing| {
        format!("edge 202 → SSE update p99 at 2,000 ev/s ({n} probes, p50 {p50:.0} ms, {missing} not seen within 8 s)")
    }));

    // 200 viewers on one environment.
    let polls = || async {
        let text = reqwest::get(format!("{backend}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("sluice_stats_stream_polls_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu_ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{backend_pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        fields
            .get(11)
            .and_then(|u| u.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0)
    };
    let mut viewers = Vec::new();
    for _ in 0..200 {
        let response = client
            .get(&stream_url)
            .bearer_auth(read_token)
            .send()
            .await
            .expect("viewer");
        viewers.push(response);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (polls_before, ticks_before, started) = (polls().await, cpu_ticks(), Instant::now());
    let readers: Vec<_> = viewers
        .into_iter()
        .map(|mut r| tokio::spawn(async move { while let Ok(Some(_)) = r.chunk().await {} }))
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let secs = started.elapsed().as_secs_f64();
    let reads_per_sec = (polls().await - polls_before) / secs;
    let cpu = (cpu_ticks() - ticks_before) / 100.0 / secs * 100.0;
    for r in readers {
        r.abort();
    }
    let rss = crate::peak_rss_mb(backend_pid);
    figures.push(Figure {
        name: format!("200 SSE viewers of one environment: database reads/s (backend CPU {cpu:.0}% of a core, peak RSS {rss:.0} MB)"),
        value: reads_per_sec,
        unit: "reads/s",
        reference: "one per environment".into(),
        ratio: Some(reads_per_sec),
        target: "1 read/s".into(),
    });
}
