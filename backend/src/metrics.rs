//! Prometheus metrics, served as text at `/metrics`. Labels carry shard
//! names only, never URLs.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub events_inserted: IntCounterVec,
    pub events_duplicate: IntCounterVec,
    pub shard_errors: IntCounterVec,
    pub batch_write_seconds: HistogramVec,
    pub requests: IntCounterVec,
    pub in_flight: IntGauge,
    pub counter_flush_failures: IntCounterVec,
    pub stats_polls: prometheus::IntCounter,
    /// Direct ingest: answers of the public API, by status.
    pub direct_requests: IntCounterVec,
    /// Direct ingest: refusals no environment can be charged with (an unknown
    /// or missing key, an unreadable Segment body), by error code.
    pub direct_unattributed: IntCounterVec,
    /// Direct ingest: refusal reports that could not be written yet (kept
    /// and retried every second).
    pub ledger_report_failures: prometheus::IntCounter,
    /// Database reads by the live tail's pollers.
    pub tail_polls: prometheus::IntCounter,
    /// Direct ingest: events per group-commit write.
    pub group_commit_events: prometheus::Histogram,
    /// Set from the catalog when `/metrics` is read.
    pub catalog_snapshot_age: prometheus::Gauge,
    /// Rows the retention task deleted, per shard and table.
    pub retention_deleted: IntCounterVec,
    /// Retention deletes that failed, per shard (the next pass tries again).
    pub retention_errors: IntCounterVec,
    /// How long one retention pass took.
    pub retention_pass_seconds: prometheus::Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let events_inserted = counter(
            "sluice_events_inserted_total",
            "Events inserted, per shard",
            &["shard"],
        );
        let events_duplicate = counter(
            "sluice_events_duplicate_total",
            "Envelopes already stored (idempotent repeats), per shard",
            &["shard"],
        );
        let shard_errors = counter(
            "sluice_shard_errors_total",
            "Failed shard writes, per shard",
            &["shard"],
        );
        let requests = counter(
            "sluice_ingest_requests_total",
            "Ingest requests by response status",
            &["status"],
        );
        let direct_requests = counter(
            "sluice_direct_requests_total",
            "Direct ingest: public API requests by response status",
            &["status"],
        );
        let direct_unattributed = counter(
            "sluice_direct_unattributed_total",
            "Direct ingest: refused requests without a known environment, by error code",
            &["code"],
        );
        let ledger_report_failures = prometheus::IntCounter::new(
            "sluice_ledger_report_failures_total",
            "Direct ingest: writes of refusal counts to the delivery ledger that failed (retried)",
        )
        .expect("valid counter");
        registry
            .register(Box::new(ledger_report_failures.clone()))
            .expect("unique metric");
        let group_commit_events = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "sluice_group_commit_events",
                "Direct ingest: events per group-commit write (many requests share one write under load)",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(group_commit_events.clone()))
            .expect("unique metric");
        let counter_flush_failures = counter(
            "sluice_counter_flush_failures_total",
            "Counter flushes that failed, per shard",
            &["shard"],
        );
        let batch_write_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_batch_write_seconds",
                "Time to write one environment's batch to one shard",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["shard"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(batch_write_seconds.clone()))
            .expect("unique metric");
        let in_flight = IntGauge::new(
            "sluice_http_requests_in_flight",
            "HTTP requests being served",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("unique metric");
        let stats_polls = prometheus::IntCounter::new(
            "sluice_stats_stream_polls_total",
            "Database reads by live-stream pollers (one per environment per second, however many viewers)",
        )
        .expect("valid counter");
        registry
            .register(Box::new(stats_polls.clone()))
            .expect("unique metric");
        let tail_polls = prometheus::IntCounter::new(
            "sluice_tail_polls_total",
            "Polls by live-tail pollers (one per environment every 500 ms, however many viewers)",
        )
        .expect("valid counter");
        registry
            .register(Box::new(tail_polls.clone()))
            .expect("unique metric");
        let catalog_snapshot_age = prometheus::Gauge::new(
            "sluice_catalog_snapshot_age_seconds",
            "Age of the catalog snapshot writes route with (above SLUICE_CATALOG_REFRESH_MS: the catalog cannot be read)",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(catalog_snapshot_age.clone()))
            .expect("unique metric");
        let retention_deleted = counter(
            "sluice_retention_deleted_total",
            "Rows deleted by the retention task, per shard and table",
            &["shard", "table"],
        );
        let retention_errors = counter(
            "sluice_retention_errors_total",
            "Retention deletes that failed, per shard (the next pass tries again)",
            &["shard"],
        );
        let retention_pass_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "sluice_retention_pass_seconds",
                "Time of one retention pass over every environment with a retention",
            )
            .buckets(vec![0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0]),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(retention_pass_seconds.clone()))
            .expect("unique metric");
        Self {
            retention_deleted,
            retention_errors,
            retention_pass_seconds,
            direct_requests,
            direct_unattributed,
            ledger_report_failures,
            group_commit_events,
            catalog_snapshot_age,
            stats_polls,
            tail_polls,
            registry,
            events_inserted,
            events_duplicate,
            shard_errors,
            batch_write_seconds,
            requests,
            in_flight,
            counter_flush_failures,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
