//! The direct door's refusals and dropped events, for the delivery ledger: summed per
//! environment and minute, with at most [`SAMPLES_PER_MINUTE`] sampled
//! bodies each, and written every second (`AppState::flush_tallies`). A
//! SIGKILL loses at most the last second of those counts; the stored
//! events are counted with their rows, in the insert's transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use intake::door::Tally;
use protocol::Report;

use crate::delivery;

/// Sampled refusals kept per environment and minute.
pub const SAMPLES_PER_MINUTE: u32 = 10;
/// Reports that failed to be written are retried as they are, up to this many.
const MAX_RETRIED: usize = 10_000;

#[derive(Default)]
pub struct Tallies(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// (env, minute) → the refusals since the last flush.
    pending: BTreeMap<(u32, i64), Report>,
    /// Reports a flush could not write, retried unchanged: their ids may
    /// already count on some shard, so nothing new may be added to them.
    failed: Vec<Report>,
    /// (env, minute) → samples taken.
    sampled: HashMap<(u32, i64), u32>,
}

impl Tallies {
    /// Note a request's refusals and the events it accepted but dropped
    /// (bots, where the environment drops them); a tally with neither has
    /// nothing to add: accepted events are counted with their rows.
    pub fn add(&self, tally: &Tally) {
        if tally.rejected.is_none() && tally.dropped.is_none() {
            return;
        }
        let minute = delivery::minute_of(tally.received_at);
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tally.env_id, minute);
        let sample = tally.sample.as_ref().filter(|_| {
            let taken = inner.sampled.entry(key).or_default();
            *taken += 1;
            *taken <= SAMPLES_PER_MINUTE
        });
        let sample = sample.cloned();
        let report = inner.pending.entry(key).or_insert_with(|| Report {
            id: delivery::new_id(),
            env_id: tally.env_id,
            received_at: minute * 1000,
            ..Report::default()
        });
        if let Some((code, n)) = tally.rejected {
            *report.rejected.entry(code.to_owned()).or_default() += n;
        }
        if let Some((reason, n)) = tally.dropped {
            report.accepted += n;
            *report.dropped.entry(reason.to_owned()).or_default() += n;
        }
        report.samples.extend(sample);
    }

    /// Everything to write now: the failed reports again, and the new ones.
    pub fn take(&self) -> Vec<Report> {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let current = delivery::minute_of(chrono::Utc::now().timestamp_millis());
        inner
            .sampled
            .retain(|(_, minute), _| *minute >= current - 60);
        let mut out = std::mem::take(&mut inner.failed);
        out.extend(std::mem::take(&mut inner.pending).into_values());
        out
    }

    /// Reports [`Tallies::take`] gave that could not be written.
    pub fn put_back(&self, reports: Vec<Report>) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.failed.extend(reports);
        let over = inner.failed.len().saturating_sub(MAX_RETRIED);
        if over > 0 {
            inner.failed.drain(..over);
            tracing::error!(
                dropped = over,
                "refusal reports dropped: the ledger could not be written"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(env_id: u32, received_at: i64, code: &'static str, n: u64) -> Tally {
        Tally {
            env_id,
            received_at,
            accepted: 0,
            rejected: Some((code, n)),
            dropped: None,
            sample: Some(protocol::Sample::new(received_at, code, "no", b"{")),
            acceptance: None,
        }
    }

    #[test]
    fn refusals_sum_per_environment_and_minute_with_bounded_samples() {
        let tallies = Tallies::default();
        let now = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
        for _ in 0..25 {
            tallies.add(&refused(1, now + 10, "invalid_json", 1));
        }
        tallies.add(&refused(1, now + 20, "invalid_events", 4));
        tallies.add(&refused(2, now + 20, "invalid_events", 4));
        let mut accepted = refused(1, now, "x", 0);
        accepted.rejected = None;
        tallies.add(&accepted);
        let bots = Tally {
            accepted: 3,
            rejected: None,
            dropped: Some(("bot", 3)),
            sample: None,
            ..refused(1, now + 40, "x", 0)
        };
        tallies.add(&bots);
        tallies.add(&bots);
        let reports = tallies.take();
        assert_eq!(reports.len(), 2);
        let one = reports.iter().find(|r| r.env_id == 1).unwrap();
        assert_eq!(
            (one.accepted, one.dropped["bot"]),
            (6, 6),
            "dropped bots are accepted"
        );
        assert_eq!(one.rejected["invalid_json"], 25);
        assert_eq!(one.rejected["invalid_events"], 4);
        assert_eq!(one.samples.len(), SAMPLES_PER_MINUTE as usize);
        assert_eq!(one.received_at, now);
        assert!(tallies.take().is_empty());
        // A report that failed comes back unchanged, beside new ones.
        tallies.put_back(reports.clone());
        tallies.add(&refused(1, now + 30, "invalid_json", 1));
        let again = tallies.take();
        assert_eq!(again.len(), 3);
        assert!(again.contains(one));
    }
}
