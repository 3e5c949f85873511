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

use crate::{percentile, Figure, TOKEN};

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

/// Which part of wrangler.toml's local Worker a bench config keeps.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// The Worker as deployed: the fetch handler and its queue consumers.
    Whole,
    /// The fetch handler only (no `[[queues.consumers]]`): the producer.
    Producer,
    /// The same wasm as a Worker of its own that only consumes the queues.
    Consumer,
}

/// A directory under .dev/ holding [`local_config`] of wrangler.toml;
/// `vars` replace or add `[vars]` entries.
fn bench_config(name: &str, layout: Layout, vars: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = Path::new(".dev").join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    let main_js = std::fs::canonicalize("build/index.js").expect("build/index.js");
    let toml = std::fs::read_to_string("wrangler.toml").expect("wrangler.toml");
    std::fs::write(
        dir.join("wrangler.toml"),
        local_config(&toml, &main_js.to_string_lossy(), layout, vars),
    )
    .expect("bench config");
    dir
}

/// `wrangler dev` of the config in `dir` on a free port, once `ready_path` answers.
async fn dev_server(dir: &Path, ready_path: &str, extra: &[&str]) -> (Wrangler, String) {
    dev_servers(&[dir], ready_path, extra).await
}

/// `wrangler dev` of several configs in one process (one workerd, a Worker
/// each; the first one serves the port), once `ready_path` answers.
async fn dev_servers(dirs: &[&Path], ready_path: &str, extra: &[&str]) -> (Wrangler, String) {
    let configs: Vec<String> = dirs
        .iter()
        .map(|d| d.join("wrangler.toml").to_string_lossy().into_owned())
        .collect();
    // A free port can be taken by another process's ephemeral port before
    // workerd binds it (seen once with five servers starting): then wrangler
    // exits, and the server starts again on another port.
    for _attempt in 0..3 {
        let port = free_port();
        let port_arg = port.to_string();
        let mut args = vec!["dev"];
        for config in &configs {
            args.extend(["--config", config.as_str()]);
        }
        args.extend(["--ip", "127.0.0.1", "--port", &port_arg]);
        args.extend_from_slice(extra);
        let mut server = wrangler(&args);
        let url = format!("http://127.0.0.1:{port}");
        let log = format!("target/artifacts/wrangler-{port}.log");
        let ready = format!("Ready on {url}");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            if server.0.try_wait().ok().flatten().is_some() {
                break;
            }
            let logged = std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&ready));
            if logged
                && reqwest::get(format!("{url}{ready_path}"))
                    .await
                    .is_ok_and(|r| r.status().as_u16() < 500)
            {
                return (server, url);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        eprintln!("wrangler dev on {url} did not start (see {log}); trying another port");
    }
    panic!("wrangler dev of {configs:?} did not start in three tries");
}

/// (p50, p99) in ms of `n` POSTs with `concurrency` in flight.
async fn latencies(url: &str, key: &str, body: &[u8], n: usize, concurrency: usize) -> (f64, f64) {
    let (p50, p99, _) = load(url, key, body, n, concurrency).await;
    (p50, p99)
}

/// (p50, p99, requests/s) of `n` POSTs with `concurrency` in flight:
/// requests/s is `n` over the wall time from the first send to the last answer.
async fn load(url: &str, key: &str, body: &[u8], n: usize, concurrency: usize) -> (f64, f64, f64) {
    let client = reqwest::Client::new();
    let wall = Instant::now();
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
    let rate = n as f64 / wall.elapsed().as_secs_f64();
    ms.sort_by(|a, b| a.total_cmp(b));
    (percentile(&ms, 0.5), percentile(&ms, 0.99), rate)
}

/// wrangler.toml's local part with `main` pointing at `main_js` and without
/// the build step (scripts/bench.sh built it; wrangler's source watcher
/// would otherwise reload the worker mid-measurement). A producer has no
/// queue consumers and is named `sluice-edge-ingest-only`; a consumer is
/// named `sluice-edge-consumer`.
fn local_config(
    wrangler_toml: &str,
    main_js: &str,
    layout: Layout,
    vars: &[(&str, &str)],
) -> String {
    let local = wrangler_toml
        .split("\n[env.")
        .next()
        .unwrap_or(wrangler_toml);
    let mut out = String::new();
    let (mut skipping, mut in_vars) = (false, false);
    for line in local.lines() {
        if line.starts_with('[') {
            skipping =
                line == "[build]" || (layout == Layout::Producer && line == "[[queues.consumers]]");
            in_vars = line == "[vars]";
        }
        if skipping {
            continue;
        }
        let replaced = vars
            .iter()
            .any(|(k, _)| in_vars && line.starts_with(&format!("{k} = ")));
        if replaced {
            continue;
        }
        if line.starts_with("main = ") {
            out.push_str(&format!("main = {main_js:?}\n"));
        } else if line.starts_with("name = \"sluice-edge\"") && layout != Layout::Whole {
            let name = match layout {
                Layout::Consumer => "sluice-edge-consumer",
                _ => "sluice-edge-ingest-only",
            };
            out.push_str(&format!("name = \"{name}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
        if line == "[vars]" {
            for (k, v) in vars {
                out.push_str(&format!("{k} = {v:?}\n"));
            }
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

/// A worker under .dev/ that does only what the platform makes unavoidable
/// for an ingest request: read the body, ask the `KEY_RATE_LIMIT` binding
/// (keyed by the credential as sent), send one queue message in
/// `waitUntil`, answer 202. Same bindings and queue name as ours, no consumer.
fn platform_minimal_worker() -> std::path::PathBuf {
    let dir = Path::new(".dev").join("bench-platform-minimal");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("index.js"),
        r#"export default {
  async fetch(request, env, ctx) {
    const body = await request.text();
    const { success } = await env.KEY_RATE_LIMIT.limit({ key: request.headers.get("authorization") ?? "" });
    if (!success) return new Response('{"error":"rate_limited"}', { status: 429 });
    ctx.waitUntil(env.EVENTS.send(body, { contentType: "text" }));
    return new Response('{"accepted":1}', { status: 202, headers: { "content-type": "application/json" } });
  },
};
"#,
    )
    .expect("platform-minimal worker");
    std::fs::write(
        dir.join("wrangler.toml"),
        "name = \"platform-minimal\"\nmain = \"index.js\"\ncompatibility_date = \"2026-04-20\"\n\n\
         [[ratelimits]]\nname = \"KEY_RATE_LIMIT\"\nnamespace_id = \"1001\"\nsimple = { limit = 1000000, period = 10 }\n\n\
         [[queues.producers]]\nbinding = \"EVENTS\"\nqueue = \"sluice-events\"\n",
    )
    .expect("platform-minimal config");
    dir
}

/// p50 (ms) of `n` sequential POSTs of `body` to each of two workers,
/// sent alternately (one to the first, one to the second, ...).
async fn paired_p50(urls: [&str; 2], key: &str, body: &[u8], n: usize) -> [f64; 2] {
    let client = reqwest::Client::new();
    let mut ms = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..2 * n {
        let which = i % 2;
        let started = Instant::now();
        let response = client
            .post(format!("{}/v1/events", urls[which]))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("post");
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        assert_eq!(status, 202, "{}", urls[which]);
        ms[which].push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        percentile(&v, 0.5)
    })
}

/// The workerd process serving `url` (`--socket-addr=entry=127.0.0.1:PORT`).
fn workerd_pid(url: &str) -> Option<u32> {
    let port = url.rsplit(':').next()?;
    let wanted = format!("entry=127.0.0.1:{port}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0);
            let is_workerd = args.next().is_some_and(|a| a.ends_with(b"workerd"));
            (is_workerd && args.any(|a| a.ends_with(wanted.as_bytes()))).then_some(pid)
        })
}

/// Medians over `runs`, for each url (the urls taking turns), of the
/// requests/s of `n` POSTs of `body` with `concurrency` in flight, and of
/// the CPU its workerd process used per request (µs, user + system: the
/// worker's code, the runtime's and miniflare's simulated bindings).
async fn rates(
    urls: &[&str],
    key: &str,
    body: &[u8],
    n: usize,
    concurrency: usize,
    runs: usize,
) -> Vec<(f64, f64)> {
    let pids: Vec<Option<u32>> = urls.iter().map(|u| workerd_pid(u)).collect();
    let mut all = vec![(Vec::new(), Vec::new()); urls.len()];
    for run in 0..runs {
        // Each run starts one url further on, so none always follows the
        // same one; and each waits 2 s after the previous load, for the
        // queue consumers (where there are) to forward what it queued.
        let order = (0..urls.len()).map(|i| (i + run) % urls.len());
        for i in order {
            let (url, pid, out) = (urls[i], pids[i], &mut all[i]);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = pid.map(crate::cpu_seconds);
            out.0.push(
                load(&format!("{url}/v1/events"), key, body, n, concurrency)
                    .await
                    .2,
            );
            let used = match (pid, before) {
                (Some(pid), Some(before)) => (crate::cpu_seconds(pid) - before) * 1e6 / n as f64,
                _ => f64::NAN,
            };
            out.1.push(used);
        }
    }
    all.into_iter()
        .map(|(r, c)| (crate::median(r), crate::median(c)))
        .collect()
}

pub async fn figures(
    target: Target<'_>,
    runs: usize,
    quick: bool,
    top: &mut Vec<Figure>,
    figures: &mut Vec<Figure>,
) {
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
    let size = Figure {
        name: format!(
            "worker wasm size, gzip ({:.0} KB raw)",
            wasm.len() as f64 / 1024.0
        ),
        value: gzipped,
        unit: "KB",
        reference: "target 1024".into(),
        ratio: Some(gzipped / 1024.0),
        target: "< 1 MB gzip".into(),
    };

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

    let backend_url = format!("http://127.0.0.1:{backend_port}");
    let consumer_vars = [
        ("BACKEND_URL", backend_url.as_str()),
        ("INGEST_TOKEN", TOKEN),
    ];
    // Ours as the headline rows measure it: the fetch handler without a
    // queue consumer in its workerd, like the platform-minimal worker's.
    // (wrangler 4.86 / miniflare 4.20260426 cannot deliver a queue to a
    // consumer in another `wrangler dev` process, so neither has one.)
    let producer = bench_config("bench-ingest-only", Layout::Producer, &[]);
    let spawned = Instant::now();
    let (_ours, ours) = dev_server(&producer, "/healthz", &[]).await;
    let ready = spawned.elapsed();
    let first = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{ours}/v1/events"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(events(1))
        .send()
        .await
        .expect("first request");
    assert_eq!(response.status(), 202);
    let first_ms = first.elapsed().as_secs_f64() * 1000.0;
    let cold = Figure {
        name: format!(
            "edge cold start: first request after start-up (wrangler dev ready after {:.1} s)",
            ready.as_secs_f64()
        ),
        value: first_ms,
        unit: "ms",
        reference: "-".into(),
        ratio: None,
        target: "-".into(),
    };
    let (_minimal, minimal) = dev_server(&platform_minimal_worker(), "/", &[]).await;
    let reader = trivial_worker("trivial-body-reader", "await request.arrayBuffer(); ");
    let (_reader, reader_url) = dev_server(&reader, "/", &[]).await;
    // The two layouts of the queue consumer, both consuming for real (into
    // the backend): in the same Worker (as wrangler.toml deploys it), and as
    // a Worker of its own (same wasm) in the same workerd.
    let (_whole, whole) = dev_server(
        &bench_config("bench-edge", Layout::Whole, &consumer_vars),
        "/healthz",
        &[],
    )
    .await;
    let consumer = bench_config("bench-consumer", Layout::Consumer, &consumer_vars);
    let (_split, split) = dev_servers(&[&producer, &consumer], "/healthz", &[]).await;

    let one = events(1);
    let rps = rates(
        &[&ours, &minimal, &reader_url, &whole, &split],
        &key,
        &one,
        2000,
        32,
        runs,
    )
    .await;
    let [(r_ours, c_ours), (r_min, c_min), (r_triv, c_triv), (r_whole, c_whole), (r_split, c_split)] =
        rps[..]
    else {
        unreachable!("one figure per url")
    };
    // Concurrency 1, the two workers taking turns request by request (the
    // machine's speed drifts within seconds: blocks of 300 each measured
    // +0.2 and +1.15 ms in two runs of the same build); medians of p50.
    let (mut p_ours, mut p_min) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let [a, b] = paired_p50([&ours, &minimal], &key, &one, 300).await;
        p_ours.push(a);
        p_min.push(b);
    }
    let (p_ours, p_min) = (crate::median(p_ours), crate::median(p_min));
    top.push(Figure {
        name: "edge throughput vs platform-minimal worker (1-event requests, concurrency 32)"
            .into(),
        value: r_ours,
        unit: "requests/s",
        reference: format!("platform-minimal worker {r_min:.0}"),
        ratio: Some(r_ours / r_min),
        target: "≥ 0.9 ×".into(),
    });
    top.push(Figure {
        name: "edge throughput vs trivial worker (1-event requests, concurrency 32)".into(),
        value: r_ours,
        unit: "requests/s",
        reference: format!(
            "trivial worker (reads the body) {r_triv:.0}; platform-minimal / trivial {:.2}",
            r_min / r_triv
        ),
        ratio: Some(r_ours / r_triv),
        target: "report".into(),
    });
    top.push(Figure {
        name: "edge answer p50 vs platform-minimal worker (1-event requests, concurrency 1, requests alternating between the two)".into(),
        value: p_ours,
        unit: "ms",
        reference: format!(
            "platform-minimal worker {p_min:.2} (+{:.2})",
            p_ours - p_min
        ),
        ratio: Some(p_ours / p_min),
        target: "≤ +0.5 ms".into(),
    });
    top.push(Figure {
        name: "edge workerd CPU per request vs platform-minimal worker (user + system of its workerd process, 1-event requests, concurrency 32)".into(),
        value: c_ours,
        unit: "µs",
        reference: format!("platform-minimal worker {c_min:.0} (+{:.0}); trivial worker {c_triv:.0}", c_ours - c_min),
        ratio: Some(c_ours / c_min),
        target: "-".into(),
    });
    top.push(cold);
    top.push(size);
    figures.push(Figure {
        name: "edge throughput, queue consumer in the same Worker (as deployed; consuming into the backend), 1-event requests, concurrency 32".into(),
        value: r_whole,
        unit: "requests/s",
        reference: format!("no consumer in the workerd {r_ours:.0} (workerd CPU per request {c_whole:.0} µs vs {c_ours:.0})"),
        ratio: Some(r_whole / r_ours),
        target: "-".into(),
    });
    figures.push(Figure {
        name: "edge throughput, queue consumer as a Worker of its own (same wasm, same workerd; consuming into the backend), 1-event requests, concurrency 32".into(),
        value: r_split,
        unit: "requests/s",
        reference: format!("no consumer in the workerd {r_ours:.0}; consumer in the same Worker {r_whole:.0} (workerd CPU per request {c_split:.0} µs)"),
        ratio: Some(r_split / r_ours),
        target: "-".into(),
    });
    drop((_minimal, _reader, _split));
    if quick {
        return;
    }

    let trivial = trivial_worker("trivial", "");
    let (_trivial, trivial_url) = dev_server(&trivial, "/", &[]).await;
    let edge = whole;
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
    for (concurrency, n) in [(1usize, 300usize), (32, 2000)] {
        let ((_, p99), (_, t99)) =
            against_trivial(&ours, &trivial_url, &key, &one, n, concurrency, runs).await;
        figures.push(p99_figure(
            format!("edge answer p99, 1-event, concurrency {concurrency}, no queue consumer in the same workerd"),
            p99,
            "trivial worker",
            t99,
            "overhead ≤ 1 ms",
        ));
    }
    drop((_ours, _trivial));

    live(
        &edge,
        &key,
        &backend_url,
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
