use std::process::ExitCode;

use backend::{catalog, counters, db, store::mysql::counters::rebuild, Config, Error, Result};
use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice backend: the ingest service and its admin commands.
#[derive(Parser)]
#[command(name = "backend", version)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve POST /v1/ingest, /healthz, /readyz, /metrics.
    Serve,
    /// Create or upgrade the catalog and every shard's schema.
    Migrate,
    /// Manage shards (MySQL databases holding events).
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Manage environments (who sends events, and where they land).
    #[command(subcommand)]
    Env(EnvCommand),
    /// Derived counts.
    #[command(subcommand)]
    Counters(CountersCommand),
    /// Named aggregates over an event's property (e.g. revenue = sum of amount over purchase).
    #[command(subcommand)]
    Metric(MetricCommand),
    /// Public API keys (`sk_…`) the apps send; only their SHA-256 is stored.
    #[command(subcommand)]
    Key(KeyCommand),
    /// A person's events: erasure (GDPR Art. 17) and suppression.
    #[command(subcommand)]
    User(UserCommand),
    /// Deleting raw events past their environment's retention.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Write an environment's events of a range as NDJSON (the lines of GET /v1/export).
    Export {
        env: String,
        /// RFC 3339 time or epoch milliseconds (inclusive).
        #[arg(long)]
        from: String,
        /// RFC 3339 time or epoch milliseconds (exclusive).
        #[arg(long)]
        to: String,
        /// Continue right after the event with this id (the last line of an export that stopped).
        #[arg(long)]
        after: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Remove every event of one person from every shard the environment
    /// writes (and, with --edge, from the edge's dead letters); their later
    /// events are dropped at the write for --suppress-days.
    Erase {
        env: String,
        #[arg(
            long,
            conflicts_with = "anonymous_id",
            required_unless_present = "anonymous_id"
        )]
        user_id: Option<String>,
        #[arg(long)]
        anonymous_id: Option<String>,
        /// Days the person's later events are dropped (counted `dropped: suppressed`); 0: none.
        #[arg(long, default_value_t = 30)]
        suppress_days: u32,
        /// Who asked (kept in the erasure record); default $USER.
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        edge: EdgeKv,
    },
    /// The environment's erasure records (no ids: a hash only).
    Erasures { env: String },
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// One retention pass now (what `serve` runs every
    /// SLUICE_RETENTION_INTERVAL_SECS); prints the rows it removed per
    /// environment and shard.
    Run {
        /// Only this environment (else every environment with a retention).
        #[arg(long)]
        env: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key for an environment; the key is the last line printed, once.
    Create {
        env: String,
        #[command(flatten)]
        edge: EdgeKv,
    },
    /// List an environment's keys (prefix, SHA-256, created, revoked).
    List { env: String },
    /// Revoke a key, given as the key, its 12-character prefix or its SHA-256 hex.
    Revoke {
        key: String,
        #[command(flatten)]
        edge: EdgeKv,
    },
    /// Record a key created earlier at the edge (KV), by its SHA-256 hex.
    Import {
        env: String,
        #[arg(long)]
        hash: String,
    },
}

/// The edge's copy of a key: its KV record, written through `scripts/key.mjs`
/// (which runs the project's wrangler wrapper, `scripts/wrangler.sh`, so
/// `--remote` uses wrangler's own Cloudflare login or `CLOUDFLARE_API_TOKEN`).
#[derive(clap::Args)]
struct EdgeKv {
    /// Also write (or revoke) the edge's KV record. Needs node and the
    /// repository: `scripts/key.mjs` under the current directory, or `SLUICE_KEY_SCRIPT`.
    #[arg(long)]
    edge: bool,
    /// With --edge: Cloudflare's KV, not wrangler's local one (`make dev`'s).
    #[arg(long, requires = "edge")]
    remote: bool,
    /// With --edge: the wrangler environment (`staging`, `production`).
    #[arg(long = "env", requires = "edge")]
    wrangler_env: Option<String>,
    /// With --edge, local: wrangler's state directory (default .dev/wrangler-state).
    #[arg(long, requires = "edge")]
    persist_to: Option<String>,
}

impl EdgeKv {
    /// Run `node scripts/key.mjs ARGS` with this target; its messages go to stderr.
    fn run(&self, args: &[&str]) -> Result<()> {
        self.run_script("SLUICE_KEY_SCRIPT", "scripts/key.mjs", args)
    }

    /// Run `node SCRIPT ARGS` (`$VAR`, else `default`) with this target.
    fn run_script(&self, var: &str, default: &str, args: &[&str]) -> Result<()> {
        let script = std::env::var(var).unwrap_or_else(|_| default.into());
        let mut command = std::process::Command::new("node");
        command.arg(&script).args(args);
        if self.remote {
            command.arg("--remote");
        }
        if let Some(env) = &self.wrangler_env {
            command.args(["--env", env]);
        }
        if let Some(dir) = &self.persist_to {
            command.args(["--persist-to", dir]);
        }
        let status = command
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| Error::Internal(format!("--edge: cannot run node {script}: {e}")))?;
        if !status.success() {
            return Err(Error::Internal(format!(
                "--edge: node {script} {} failed ({status})",
                args.first().unwrap_or(&"")
            )));
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum MetricCommand {
    /// Define a metric: exactly one of --sum PROPERTY, --avg PROPERTY, --count.
    Add {
        env: String,
        name: String,
        #[arg(long)]
        event: String,
        #[arg(long, group = "aggregate")]
        sum: Option<String>,
        #[arg(long, group = "aggregate")]
        avg: Option<String>,
        #[arg(long, group = "aggregate")]
        count: bool,
    },
    List {
        env: String,
    },
    Remove {
        env: String,
        name: String,
    },
}

#[derive(Subcommand)]
enum ShardCommand {
    /// Register a shard; its database is created and migrated if needed.
    Add {
        name: String,
        url: String,
    },
    List,
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Create an environment on a shard; prints its id.
    Create {
        name: String,
        #[arg(long)]
        shard: String,
    },
    /// Start migrating: writes go to the primary and to SHARD.
    Migrate {
        name: String,
        #[arg(long)]
        to: String,
    },
    /// Copy the history from the primary shard to the secondary (during a
    /// migration, before `env promote`); rows already there are skipped, so
    /// it is safe alongside the dual writes and safe to run again.
    Backfill {
        name: String,
    },
    /// Make the secondary shard the primary.
    Promote {
        name: String,
    },
    List,
    /// Change an environment's privacy policy (what its events keep of the
    /// client's address and location, and what becomes of bots' events).
    Set {
        name: String,
        /// The client's address: drop, truncate (IPv4 /24, IPv6 /48) or keep.
        #[arg(long)]
        ip: Option<intake::enrich::IpPolicy>,
        /// Location: full, city (no postal code or coordinates), country or none.
        #[arg(long)]
        geo: Option<intake::enrich::GeoPolicy>,
        /// Bots' events: keep, flag (context.bot) or drop (counted in the ledger).
        #[arg(long)]
        bots: Option<intake::enrich::BotPolicy>,
        #[command(flatten)]
        edge: EdgeKv,
    },
    /// Keep an environment's raw events for N days of event time (`serve`
    /// deletes older ones), or for ever with --none (the default).
    Retention {
        name: String,
        /// Days of event time to keep (at least 1).
        #[arg(long, required_unless_present = "none", conflicts_with = "none")]
        days: Option<u32>,
        /// Keep the environment's events for ever.
        #[arg(long)]
        none: bool,
        #[command(flatten)]
        edge: EdgeKv,
    },
    /// An environment's shards, privacy policy and retention.
    Show {
        name: String,
    },
    /// Create a read-only stats token for an environment; printed once.
    Token {
        name: String,
    },
    /// List an environment's read tokens (prefix, created, revoked).
    Tokens {
        name: String,
    },
    /// Revoke a read token by its prefix.
    TokenRevoke {
        name: String,
        prefix: String,
    },
}

#[derive(Subcommand)]
enum CountersCommand {
    /// Recompute per-minute counts from the events table.
    Rebuild {
        #[arg(long)]
        env: String,
        /// RFC 3339 time or epoch milliseconds.
        #[arg(long)]
        since: String,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received; draining in-flight requests");
}

/// Shard names by id, for listings (an id the catalog lacks prints as the id).
async fn shard_names(pool: &sqlx::MySqlPool) -> Result<impl Fn(u32) -> String> {
    let names: std::collections::HashMap<u32, String> = catalog::list_shards(pool)
        .await?
        .into_iter()
        .map(|s| (s.id, s.name))
        .collect();
    Ok(move |id: u32| names.get(&id).cloned().unwrap_or_else(|| id.to_string()))
}

/// A policy as `scripts/key.mjs` writes it into the edge's KV records.
fn policy_json(policy: &intake::enrich::Policy) -> Result<String> {
    serde_json::to_string(policy).map_err(|e| Error::Internal(e.to_string()))
}

async fn user(config: &backend::Config, cmd: UserCommand) -> Result<()> {
    db::migrate_catalog(&config.database_url).await?;
    let pool = db::lazy_pool(&config.database_url, 2, std::time::Duration::from_secs(10))?;
    match cmd {
        UserCommand::Erase {
            env,
            user_id,
            anonymous_id,
            suppress_days,
            by,
            edge,
        } => {
            use backend::erasure::{IdKind, Person};
            let person = match (user_id, anonymous_id) {
                (Some(id), _) => Person {
                    kind: IdKind::UserId,
                    id,
                },
                (None, Some(id)) => Person {
                    kind: IdKind::AnonymousId,
                    id,
                },
                (None, None) => {
                    return Err(Error::InvalidArgument(
                        "id",
                        "give --user-id or --anonymous-id".into(),
                    ))
                }
            };
            let environment = catalog::environment_by_name(&pool, &env).await?;
            let source =
                std::sync::Arc::new(backend::store::mysql::MySqlCatalog::new(pool.clone()));
            let snapshot = catalog::Catalog::open(source, config.catalog_refresh())
                .await?
                .snapshot();
            let shards = backend::shards::Shards::new(
                2,
                std::time::Duration::from_secs(10),
                config.insert_chunk_rows,
            );
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into());
            if suppress_days > 0 {
                eprintln!(
                    "{env}: suppressing first; waiting {:.1} s for every backend to drop their new events",
                    config.erasure_settle().as_secs_f64()
                );
            }
            let erased = backend::erasure::erase(
                &pool,
                &shards,
                &snapshot,
                &environment,
                &backend::erasure::Request {
                    person: person.clone(),
                    suppress_days,
                    requested_by: by,
                },
                config.erasure_settle(),
            )
            .await;
            shards.close().await;
            let erased = erased?;
            if edge.edge {
                let env_id = environment.id.to_string();
                edge.run_script(
                    "SLUICE_DLQ_SCRIPT",
                    "scripts/dlq.mjs",
                    &[
                        "erase",
                        "--env-id",
                        &env_id,
                        &format!("--{}", person.kind.column().replace('_', "-")),
                        &person.id,
                    ],
                )?;
            }
            for (shard, removed) in &erased.removed {
                println!(
                    "{shard}: {} events removed ({} read), {} sampled refusals",
                    removed.events, removed.scanned, removed.samples
                );
            }
            println!(
                "erasure {} recorded{}{}",
                erased.record_id,
                if suppress_days > 0 {
                    format!("; their new events are dropped for {suppress_days} days")
                } else {
                    String::new()
                },
                if edge.edge {
                    "; the edge's dead letters swept"
                } else {
                    "; the edge's dead letters were not swept (add --edge)"
                }
            );
        }
        UserCommand::Erasures { env } => {
            let environment = catalog::environment_by_name(&pool, &env).await?;
            println!(
                "{:<6} {:<13} {:<24} {:<24} {:<20} {:<20} removed",
                "id", "kind", "started", "finished", "by", "suppressed until"
            );
            for r in backend::store::mysql::erasure::records(&pool, environment.id).await? {
                let or_dash = |t: Option<chrono::NaiveDateTime>| {
                    t.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
                };
                println!(
                    "{:<6} {:<13} {:<24} {:<24} {:<20} {:<20} {}",
                    r.id,
                    r.id_kind,
                    r.started_at.to_string(),
                    or_dash(r.finished_at),
                    r.requested_by,
                    or_dash(r.suppressed_until),
                    r.removed.as_deref().unwrap_or("(not finished)")
                );
            }
        }
    }
    Ok(())
}

/// `backend export`: the NDJSON of [`backend::export::Export`], to a file or stdout.
async fn export(
    config: &Config,
    env: &str,
    (from, to): (String, String),
    after: Option<&str>,
    out: Option<&std::path::Path>,
) -> Result<()> {
    use futures::StreamExt as _;
    use std::io::Write as _;

    let range = backend::stats::range(&backend::stats::RangeParams {
        from: Some(from),
        to: Some(to),
        event: None,
        metric: None,
        interval: None,
    })?;
    let pool = db::lazy_pool(&config.database_url, 1, std::time::Duration::from_secs(10))?;
    let environment = catalog::environment_by_name(&pool, env).await?;
    let shard = catalog::list_shards(&pool)
        .await?
        .into_iter()
        .find(|s| s.id == environment.primary_shard_id)
        .ok_or_else(|| {
            Error::Internal(format!("{env}: its primary shard is not in the catalog"))
        })?;
    let shards = std::sync::Arc::new(backend::shards::Shards::new(
        1,
        std::time::Duration::from_secs(10),
        config.insert_chunk_rows,
    ));
    let export =
        backend::export::Export::new(shards.clone(), shard, environment.id, range, after).await?;
    let mut writer: Box<dyn std::io::Write> = match out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| Error::InvalidArgument("out", format!("{}: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut lines = std::pin::pin!(export.ndjson().await?);
    let write_error = |e: std::io::Error| Error::Internal(format!("writing the export: {e}"));
    while let Some(chunk) = lines.next().await {
        writer.write_all(&chunk?).map_err(write_error)?;
    }
    writer.flush().map_err(write_error)?;
    shards.close().await;
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let config = cli.config;
    let catalog_pool =
        || db::lazy_pool(&config.database_url, 2, std::time::Duration::from_secs(10));
    match cli.command {
        Command::Serve => {
            config
                .check_for_serving()
                .map_err(|m| Error::InvalidArgument("configuration", m))?;
            let server = backend::start(config, shutdown_signal()).await?;
            tracing::info!(addr = %server.addr, "backend listening");
            server
                .done
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            tracing::info!("backend stopped");
        }
        Command::Migrate => {
            db::migrate_catalog(&config.database_url).await?;
            for shard in catalog::list_shards(&catalog_pool()?).await? {
                db::migrate_shard(&shard.url)
                    .await
                    .map_err(|e| Error::ShardUnavailable {
                        shard: shard.name.clone(),
                        message: e.to_string(),
                    })?;
                println!("migrated shard {}", shard.name);
            }
            println!("migrated catalog");
        }
        Command::Shard(cmd) => {
            db::migrate_catalog(&config.database_url).await?;
            let pool = catalog_pool()?;
            match cmd {
                ShardCommand::Add { name, url } => {
                    let id = catalog::add_shard(&pool, &name, &url).await?;
                    println!("{id}");
                }
                ShardCommand::List => {
                    println!("{:<6} {:<24} {:<10} url", "id", "name", "status");
                    for s in catalog::list_shards(&pool).await? {
                        println!(
                            "{:<6} {:<24} {:<10} {}",
                            s.id,
                            s.name,
                            s.status,
                            db::redact(&s.url)
                        );
                    }
                }
            }
        }
        Command::Env(cmd) => {
            db::migrate_catalog(&config.database_url).await?;
            let pool = catalog_pool()?;
            match cmd {
                EnvCommand::Create { name, shard } => {
                    let id = catalog::create_environment(&pool, &name, &shard).await?;
                    println!("{id}");
                }
                EnvCommand::Migrate { name, to } => {
                    catalog::migrate_environment(&pool, &name, &to).await?;
                    println!("{name}: writes now go to its primary and to {to}; copy the history with `backend env backfill {name}`, then `backend env promote {name}`");
                }
                EnvCommand::Backfill { name } => {
                    let environment = catalog::environment_by_name(&pool, &name).await?;
                    if environment.secondary_shard_id.is_none() {
                        return Err(Error::InvalidArgument(
                            "environment",
                            format!("{name} is not migrating; run `backend env migrate {name} --to SHARD` first"),
                        ));
                    }
                    let source =
                        std::sync::Arc::new(backend::store::mysql::MySqlCatalog::new(pool.clone()));
                    let snapshot = catalog::Catalog::open(source, config.catalog_refresh())
                        .await?
                        .snapshot();
                    let Some([from, to]) = snapshot
                        .targets(environment.id)
                        .and_then(|t| <[&catalog::Shard; 2]>::try_from(t).ok())
                    else {
                        return Err(Error::Internal(format!(
                            "{name}: its shards are not both in the catalog"
                        )));
                    };
                    let metrics = snapshot
                        .metrics
                        .get(&environment.id)
                        .map_or(&[][..], Vec::as_slice);
                    let shards = backend::shards::Shards::new(
                        2,
                        std::time::Duration::from_secs(10),
                        config.insert_chunk_rows,
                    );
                    let counters = counters::Counters::new(config.second_retention_secs());
                    let copied = shards
                        .copy_history(from, to, environment.id, metrics, &|rows| {
                            counters.record(to.id, environment.id, rows)
                        })
                        .await?;
                    let failed = counters.flush(&snapshot, &shards).await;
                    shards.close().await;
                    if !failed.is_empty() {
                        return Err(Error::Internal(format!(
                            "events copied, but counting them failed on {}; run `backend counters rebuild --env {name} --since 0`",
                            failed.join(", ")
                        )));
                    }
                    println!(
                        "{name}: {} events read on {}, {} inserted on {} (the rest were there); `backend env promote {name}` when ready",
                        copied.read, from.name, copied.inserted, to.name
                    );
                }
                EnvCommand::Promote { name } => {
                    catalog::promote_environment(&pool, &name).await?;
                    println!("{name}: secondary promoted to primary");
                }
                EnvCommand::Set {
                    name,
                    ip,
                    geo,
                    bots,
                    edge,
                } => {
                    let env = catalog::set_environment_policy(&pool, &name, ip, geo, bots).await?;
                    let policy = env.policy();
                    if edge.edge {
                        let policy_json = policy_json(&policy)?;
                        let env_id = env.id.to_string();
                        edge.run(&["policy", "--env-id", &env_id, "--policy", &policy_json])?;
                    }
                    println!(
                        "{name}: {policy}; the backend's door applies it within {} s{}",
                        config.catalog_refresh().as_secs_f64(),
                        if edge.edge {
                            ", the edge within KV's propagation (~60 s) + its key cache TTL (30 s)"
                        } else {
                            "; the edge keeps the policy its key records carry (add --edge)"
                        }
                    );
                }
                EnvCommand::Retention {
                    name,
                    days,
                    none: _,
                    edge,
                } => {
                    let env = catalog::set_environment_retention(&pool, &name, days).await?;
                    if edge.edge {
                        let env_id = env.id.to_string();
                        let days = days.unwrap_or(0).to_string();
                        edge.run(&["retention", "--env-id", &env_id, "--days", &days])?;
                    }
                    let kept = match days {
                        Some(days) => {
                            format!("events older than {days} days (event time) are deleted")
                        }
                        None => "events are kept for ever".into(),
                    };
                    println!(
                        "{name}: {kept}; `backend serve` applies it within {} s + SLUICE_RETENTION_INTERVAL_SECS ({} s){}",
                        config.catalog_refresh().as_secs_f64(),
                        config.retention_interval().as_secs(),
                        if edge.edge {
                            ", the edge's dead letters once KV has it (~60 s)"
                        } else {
                            ""
                        }
                    );
                }
                EnvCommand::Show { name } => {
                    let env = catalog::environment_by_name(&pool, &name).await?;
                    let shard = shard_names(&pool).await?;
                    println!("id         {}", env.id);
                    println!("name       {}", env.name);
                    println!("primary    {}", shard(env.primary_shard_id));
                    println!(
                        "secondary  {}",
                        env.secondary_shard_id
                            .map(&shard)
                            .unwrap_or_else(|| "-".into())
                    );
                    println!("ip         {}", env.ip_policy);
                    println!("geo        {}", env.geo_policy);
                    println!("bots       {}", env.bot_policy);
                    println!(
                        "retention  {}",
                        env.retention_days
                            .map(|d| format!("{d} days"))
                            .unwrap_or_else(|| "-".into())
                    );
                }
                EnvCommand::Token { name } => {
                    println!("{}", catalog::create_read_token(&pool, &name).await?);
                }
                EnvCommand::Tokens { name } => {
                    println!("{:<14} {:<24} revoked", "prefix", "created");
                    for t in catalog::list_read_tokens(&pool, &name).await? {
                        let revoked = t
                            .revoked_at
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| "-".into());
                        println!(
                            "{:<14} {:<24} {}",
                            t.prefix,
                            t.created_at.to_string(),
                            revoked
                        );
                    }
                }
                EnvCommand::TokenRevoke { name, prefix } => {
                    catalog::revoke_read_token(&pool, &name, &prefix).await?;
                    println!(
                        "revoked {prefix} (effective within {} s)",
                        backend::stats::TOKEN_CACHE_TTL.as_secs()
                    );
                }
                EnvCommand::List => {
                    let name = shard_names(&pool).await?;
                    println!("{:<6} {:<24} {:<16} secondary", "id", "name", "primary");
                    for e in catalog::list_environments(&pool).await? {
                        let secondary = e
                            .secondary_shard_id
                            .map(&name)
                            .unwrap_or_else(|| "-".into());
                        println!(
                            "{:<6} {:<24} {:<16} {}",
                            e.id,
                            e.name,
                            name(e.primary_shard_id),
                            secondary
                        );
                    }
                }
            }
        }
        Command::User(cmd) => user(&config, cmd).await?,
        Command::Key(cmd) => {
            db::migrate_catalog(&config.database_url).await?;
            let pool = catalog_pool()?;
            match cmd {
                KeyCommand::Create { env, edge } => {
                    let (key, stored) = catalog::create_api_key(&pool, &env).await?;
                    if edge.edge {
                        let env_id = stored.env_id.to_string();
                        let policy = policy_json(
                            &catalog::environment_by_name(&pool, &env).await?.policy(),
                        )?;
                        let put = [
                            "put",
                            "--hash",
                            &stored.key_hash,
                            "--env-id",
                            &env_id,
                            "--env-name",
                            &env,
                            "--policy",
                            &policy,
                        ];
                        if let Err(e) = edge.run(&put) {
                            // A key the edge does not know must not stay usable elsewhere.
                            catalog::revoke_api_key(&pool, &stored.key_hash).await?;
                            return Err(e);
                        }
                    }
                    eprintln!(
                        "key for {env} (env id {}), SHA-256 {}{}: store it now, it is not shown again",
                        stored.env_id,
                        stored.key_hash,
                        if edge.edge { ", also at the edge" } else { "" }
                    );
                    println!("{key}");
                }
                KeyCommand::List { env } => {
                    println!(
                        "{:<14} {:<64} {:<24} revoked",
                        "prefix", "sha256", "created"
                    );
                    for k in catalog::list_api_keys(&pool, &env).await? {
                        println!(
                            "{:<14} {:<64} {:<24} {}",
                            k.prefix.as_deref().unwrap_or("(imported)"),
                            k.key_hash,
                            k.created_at.to_string(),
                            k.revoked_at
                                .map(|r| r.to_string())
                                .unwrap_or_else(|| "-".into())
                        );
                    }
                }
                KeyCommand::Revoke { key, edge } => {
                    let revoked = catalog::revoke_api_key(&pool, &key).await?;
                    if edge.edge {
                        edge.run(&["revoke", "--hash", &revoked.key_hash])?;
                    }
                    println!(
                        "revoked {} (env id {}){}",
                        revoked.key_hash,
                        revoked.env_id,
                        if edge.edge {
                            "; the edge refuses it within KV's propagation (~60 s) + its key cache TTL"
                        } else {
                            ""
                        }
                    );
                }
                KeyCommand::Import { env, hash } => {
                    let stored = catalog::import_api_key(&pool, &env, &hash).await?;
                    println!("imported {} for env id {}", stored.key_hash, stored.env_id);
                }
            }
        }
        Command::Metric(cmd) => {
            db::migrate_catalog(&config.database_url).await?;
            let pool = catalog_pool()?;
            match cmd {
                MetricCommand::Add {
                    env,
                    name,
                    event,
                    sum,
                    avg,
                    count,
                } => {
                    let (aggregate, property) = match (sum, avg, count) {
                        (Some(p), None, false) => ("sum", Some(p)),
                        (None, Some(p), false) => ("avg", Some(p)),
                        (None, None, true) => ("count", None),
                        _ => {
                            return Err(Error::InvalidArgument(
                                "metric",
                                "give one of --sum PROPERTY, --avg PROPERTY, --count".into(),
                            ))
                        }
                    };
                    let id = catalog::add_metric(
                        &pool,
                        &env,
                        &name,
                        &event,
                        aggregate,
                        property.as_deref(),
                    )
                    .await?;
                    println!("{id}");
                }
                MetricCommand::List { env } => {
                    println!("{:<24} {:<8} {:<24} property", "name", "kind", "event");
                    for m in catalog::list_metrics(&pool, &env).await? {
                        println!(
                            "{:<24} {:<8} {:<24} {}",
                            m.name,
                            m.aggregate,
                            m.event_name,
                            m.property.as_deref().unwrap_or("-")
                        );
                    }
                }
                MetricCommand::Remove { env, name } => {
                    catalog::remove_metric(&pool, &env, &name).await?;
                    println!("removed {name}");
                }
            }
        }
        Command::Retention(RetentionCommand::Run { env }) => {
            let pool = catalog_pool()?;
            let only = match &env {
                Some(name) => {
                    let environment = catalog::environment_by_name(&pool, name).await?;
                    if environment.retention_days.is_none() {
                        return Err(Error::InvalidArgument(
                            "environment",
                            format!("{name} has no retention; set one with `backend env retention {name} --days N`"),
                        ));
                    }
                    Some(environment.id)
                }
                None => None,
            };
            let source = std::sync::Arc::new(backend::store::mysql::MySqlCatalog::new(pool));
            let snapshot = catalog::Catalog::open(source, config.catalog_refresh())
                .await?
                .snapshot();
            let shards = backend::shards::Shards::new(
                1,
                std::time::Duration::from_secs(10),
                config.insert_chunk_rows,
            );
            let (_keep, stop) = tokio::sync::watch::channel(false);
            let removed = backend::retention::pass(
                &snapshot,
                &shards,
                backend::retention::Settings::of(&config),
                (only, chrono::Utc::now().timestamp_millis()),
                &backend::metrics::Metrics::new(),
                &stop,
            )
            .await;
            shards.close().await;
            println!(
                "{:<24} {:<16} {:<24} {:>10} {:>10} {:>12} {:>16}",
                "env", "shard", "before", "events", "delivery", "dead_letters", "rejected_samples"
            );
            let mut failed = Vec::new();
            for r in &removed {
                use backend::store::Expiring;
                let before = chrono::DateTime::from_timestamp_millis(r.before)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<16} {:<24} {:>10} {:>10} {:>12} {:>16}",
                    r.env_name,
                    r.shard,
                    before,
                    r.of(Expiring::Events),
                    r.of(Expiring::Delivery),
                    r.of(Expiring::DeadLetters),
                    r.of(Expiring::RejectedSamples)
                );
                if let Some(error) = &r.error {
                    failed.push(format!("{} on {}: {error}", r.env_name, r.shard));
                }
            }
            if !failed.is_empty() {
                return Err(Error::Internal(format!(
                    "retention stopped early (run it again): {}",
                    failed.join("; ")
                )));
            }
        }
        Command::Export {
            env,
            from,
            to,
            after,
            out,
        } => export(&config, &env, (from, to), after.as_deref(), out.as_deref()).await?,
        Command::Counters(CountersCommand::Rebuild { env, since }) => {
            let since_ms = backend::stats::parse_time("since", &since)?;
            let pool = catalog_pool()?;
            let environment = catalog::environment_by_name(&pool, &env).await?;
            let metrics = catalog::list_metrics(&pool, &env).await?;
            let shards = catalog::list_shards(&pool).await?;
            let targets =
                std::iter::once(environment.primary_shard_id).chain(environment.secondary_shard_id);
            for shard_id in targets {
                let Some(shard) = shards.iter().find(|s| s.id == shard_id) else {
                    continue;
                };
                // Two connections: the rebuild transaction, and the row scan beside it.
                let shard_pool = db::lazy_pool(&shard.url, 2, std::time::Duration::from_secs(10))?;
                let counted = rebuild(
                    &shard_pool,
                    environment.id,
                    since_ms,
                    config.second_retention_secs(),
                    &metrics,
                )
                .await?;
                println!(
                    "{env} on {}: {counted} events counted since {since}",
                    shard.name
                );
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.config.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
