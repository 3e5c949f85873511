//! The delivery ledger's rules: what each write, report and dead letter
//! counts, per environment and minute of receive time, and how the counts
//! of a range add up. Plain functions: the MySQL and the memory store both
//! count through them.
//!
//! `accepted = stored + resent + dropped + (dead_lettered − replayed) + lost + in_flight`,
//! and at the door `received = accepted + rejected`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use protocol::{DeadLetter, Envelope, Report};
use sha2::{Digest, Sha256};

pub const ACCEPTED: &str = "accepted";
pub const STORED: &str = "stored";
pub const RESENT: &str = "resent";
pub const REDELIVERED: &str = "redelivered";
pub const LOST: &str = "lost";
pub const REJECTED: &str = "rejected:";
pub const DROPPED: &str = "dropped:";

/// An envelope a write took but did not store, and the ledger's reason.
pub type Dropped<'a> = (&'a Envelope, &'static str);

/// One ledger row: `n` events of an environment's receive `minute` (unix
/// seconds, a multiple of 60) had `outcome`, as counted by `source` (an
/// acceptance, a report, a write). Rows are written with `INSERT IGNORE`, so
/// a source counted twice (a redelivered report) counts once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub minute: i64,
    pub outcome: String,
    pub source: [u8; 16],
    pub n: u64,
    /// A write's own row (its source is that write's alone), which
    /// compaction may sum with the minute's others.
    pub summable: bool,
}

/// The source of a minute's compacted write rows.
pub const SUMMED: [u8; 16] = [0; 16];

impl Entry {
    /// The stored `summable` column: 0 keyed, 1 a write's own row, 2 a sum
    /// of them (compaction looks for 1s only).
    pub fn summable_kind(&self) -> u8 {
        match (self.summable, self.source == SUMMED) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        }
    }
}

/// The minute (unix seconds) a receive time in ms falls in.
pub fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60
}

/// The 16 bytes a report or acceptance id is stored under: its own bytes
/// when it is 32 hex digits (what the doors make), else a hash of it.
pub fn source_of(id: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
    } else {
        out.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
    }
    out
}

/// A new acceptance or report id: 32 hex digits.
pub fn new_id() -> String {
    intake::credentials::hex(&rand::random::<[u8; 16]>())
}

/// What one write of an environment's envelopes to a shard counts, given
/// the receive time (ms) of every key that was stored before it:
/// - a key stored before: `redelivered` if this envelope has the stored
///   receive time (the same acceptance, delivered again), else `resent`
///   (the client sent it again);
/// - a new key: `stored` the first time it occurs, `resent` after;
/// - `accepted`, once per acceptance: one that arrives whole and for the
///   first time (every one of its `n` envelopes here, none redelivered; a
///   one-event request always does) is summed into this write's own row;
///   one that arrives in parts gets a row keyed by its id, which its other
///   parts' rows (and a report of its lost or dead-lettered part) repeat
///   and `INSERT IGNORE` counts once; one whose envelopes are all
///   redelivered was counted by the write that stored them. An envelope
///   without an acceptance is its own when it is stored or resent.
///
/// Envelopes the write took and did not store (`dropped`, with the
/// ledger's reason, e.g. a bot in a `bots = drop` environment) leave no row
/// a redelivery could be told by, so each is counted in a row keyed by its
/// own key (`INSERT IGNORE` counts it once), and so is the acceptance it
/// came in.
///
/// `write` is the source of this write's rows (fresh per write).
pub fn count_write(
    envelopes: &[&Envelope],
    dropped: &[Dropped],
    stored_before: &HashMap<[u8; 16], i64>,
    write: [u8; 16],
) -> Vec<Entry> {
    struct Seen {
        minute: i64,
        n: u64,
        here: u64,
        redelivered: u64,
        dropped: u64,
    }
    /// The acceptance `a`'s tally in this write, opened at its first envelope.
    fn seen<'s>(
        acceptances: &'s mut BTreeMap<[u8; 16], Seen>,
        a: &protocol::Acceptance,
        minute: i64,
    ) -> &'s mut Seen {
        acceptances.entry(source_of(&a.id)).or_insert(Seen {
            minute,
            n: u64::from(a.n),
            here: 0,
            redelivered: 0,
            dropped: 0,
        })
    }
    let mut per_minute: BTreeMap<(i64, &'static str), u64> = BTreeMap::new();
    let mut acceptances: BTreeMap<[u8; 16], Seen> = BTreeMap::new();
    let mut first = HashSet::with_capacity(envelopes.len());
    for e in envelopes {
        let key = e.key();
        let outcome = match stored_before.get(&key) {
            Some(&received_at) if received_at == e.received_at => REDELIVERED,
            Some(_) => RESENT,
            None if first.insert(key) => STORED,
            None => RESENT,
        };
        let minute = minute_of(e.received_at);
        *per_minute.entry((minute, outcome)).or_default() += 1;
        match &e.acceptance {
            Some(a) => {
                let seen = seen(&mut acceptances, a, minute);
                seen.here += 1;
                seen.redelivered += u64::from(outcome == REDELIVERED);
            }
            None if outcome != REDELIVERED => {
                *per_minute.entry((minute, ACCEPTED)).or_default() += 1;
            }
            None => {}
        }
    }
    let mut keyed = BTreeSet::new();
    let mut occurrences: HashMap<[u8; 16], u32> = HashMap::new();
    for &(e, reason) in dropped {
        let minute = minute_of(e.received_at);
        // A key the client sent twice is dropped twice: its second row needs
        // a source of its own, the same in every delivery of the write.
        let seen_before = occurrences.entry(e.key()).or_default();
        let key = match *seen_before {
            0 => e.key(),
            k => {
                let mut hash = Sha256::new();
                hash.update(e.key());
                hash.update(k.to_be_bytes());
                let mut out = [0u8; 16];
                out.copy_from_slice(&hash.finalize()[..16]);
                out
            }
        };
        *seen_before += 1;
        keyed.insert((minute, format!("{DROPPED}{reason}"), key));
        match &e.acceptance {
            Some(a) => {
                let seen = seen(&mut acceptances, a, minute);
                seen.here += 1;
                seen.dropped += 1;
            }
            None => {
                keyed.insert((minute, ACCEPTED.to_owned(), key));
            }
        }
    }
    let mut parts: Vec<Entry> = keyed
        .into_iter()
        .map(|(minute, outcome, source)| Entry {
            minute,
            outcome,
            source,
            n: 1,
            summable: false,
        })
        .collect();
    for (source, seen) in acceptances {
        if seen.redelivered == seen.here {
            continue;
        }
        if seen.redelivered == 0 && seen.dropped == 0 && seen.here >= seen.n {
            *per_minute.entry((seen.minute, ACCEPTED)).or_default() += seen.n;
        } else {
            parts.push(Entry {
                minute: seen.minute,
                outcome: ACCEPTED.to_owned(),
                source,
                n: seen.n,
                summable: false,
            });
        }
    }
    let mut entries: Vec<Entry> = per_minute
        .into_iter()
        .map(|((minute, outcome), n)| Entry {
            minute,
            outcome: outcome.to_owned(),
            source: write,
            n,
            summable: true,
        })
        .collect();
    entries.extend(parts);
    entries
}

/// What a door's report counts (its id is the source of every row).
pub fn count_report(report: &Report) -> Vec<Entry> {
    let minute = minute_of(report.received_at);
    let source = source_of(&report.id);
    let entry = |outcome: String, n: u64| Entry {
        minute,
        outcome,
        source,
        n,
        summable: false,
    };
    let mut entries = Vec::new();
    for (code, &n) in &report.rejected {
        entries.push(entry(format!("{REJECTED}{code}"), n));
    }
    for (reason, &n) in &report.dropped {
        entries.push(entry(format!("{DROPPED}{reason}"), n));
    }
    if report.accepted > 0 {
        entries.push(entry(ACCEPTED.to_owned(), report.accepted));
    }
    if report.lost > 0 {
        entries.push(entry(LOST.to_owned(), report.lost));
    }
    entries.retain(|e| e.n > 0);
    entries
}

/// The acceptance a dead letter is counted under: its request's (id, n),
/// or its own key and 1 when it carried none.
pub fn dead_letter_acceptance(letter: &DeadLetter) -> ([u8; 16], u32) {
    match &letter.acceptance {
        Some(a) => (source_of(&a.id), a.n),
        None => (protocol::event_key(&letter.id), 1),
    }
}

/// One acceptance's dead letters in a minute, as the ledger reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadAcceptance {
    pub minute: i64,
    pub acceptance: [u8; 16],
    pub n: u64,
    pub letters: u64,
    /// Of them, stored since with their receive time (replayed).
    pub stored: u64,
}

/// Adds dead letters to the minutes' counts. An acceptance no write
/// counted is accepted here: none of its dead letters is stored (a write
/// that stored one counted it, whole in its own row or in parts keyed by
/// it) and no row is keyed by it (`keyed`: the acceptance ids with an
/// `accepted` row of their own, which a stored part of it wrote).
pub fn add_dead_letters(
    minutes: &mut BTreeMap<i64, Counts>,
    dead: &[DeadAcceptance],
    keyed: &HashSet<[u8; 16]>,
) {
    for d in dead {
        let counts = minutes.entry(d.minute).or_default();
        counts.dead_lettered += d.letters;
        counts.replayed += d.stored;
        if d.stored == 0 && !keyed.contains(&d.acceptance) {
            *counts.outcomes.entry(ACCEPTED.to_owned()).or_default() += d.n;
        }
    }
}

/// Summed ledger rows of one minute or a range: outcome → events. Dead
/// letters are counted apart (from their own table), with how many of them
/// are stored since (replayed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub outcomes: BTreeMap<String, u64>,
    pub dead_lettered: u64,
    pub replayed: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        for (outcome, n) in &other.outcomes {
            *self.outcomes.entry(outcome.clone()).or_default() += n;
        }
        self.dead_lettered += other.dead_lettered;
        self.replayed += other.replayed;
    }
}

/// The delivery ledger of a minute or a range, as the API answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Ledger {
    pub received: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub stored: u64,
    pub resent: u64,
    pub redelivered: u64,
    pub dropped: BTreeMap<String, u64>,
    pub dead_lettered: u64,
    pub replayed: u64,
    pub lost: u64,
    /// Accepted and not (yet) accounted for; negative when more is
    /// accounted for than was accepted (which should never happen).
    pub in_flight: i64,
}

impl Ledger {
    pub fn of(counts: &Counts) -> Self {
        let get = |name: &str| counts.outcomes.get(name).copied().unwrap_or(0);
        let by_prefix = |prefix: &str| -> BTreeMap<String, u64> {
            counts
                .outcomes
                .iter()
                .filter_map(|(k, &n)| k.strip_prefix(prefix).map(|r| (r.to_owned(), n)))
                .collect()
        };
        let rejected = by_prefix(REJECTED);
        let dropped = by_prefix(DROPPED);
        let accepted = get(ACCEPTED);
        let accounted = get(STORED)
            + get(RESENT)
            + dropped.values().sum::<u64>()
            + counts.dead_lettered.saturating_sub(counts.replayed)
            + get(LOST);
        Self {
            received: accepted + rejected.values().sum::<u64>(),
            accepted,
            stored: get(STORED),
            resent: get(RESENT),
            redelivered: get(REDELIVERED),
            dead_lettered: counts.dead_lettered,
            replayed: counts.replayed,
            lost: get(LOST),
            in_flight: accepted as i64 - accounted as i64,
            rejected,
            dropped,
        }
    }

    /// Whether this minute adds up: nothing in flight, nothing over-counted.
    pub fn adds_up(&self) -> bool {
        self.in_flight == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Acceptance;

    fn envelope(id: &str, received_at: i64, acceptance: Option<(&str, u32)>) -> Envelope {
        Envelope {
            id: id.into(),
            env_id: 1,
            name: "e".into(),
            received_at,
            acceptance: acceptance.map(|(id, n)| Acceptance { id: id.into(), n }),
            ..Envelope::default()
        }
    }

    fn outcomes(entries: &[Entry]) -> BTreeMap<(i64, String), u64> {
        let mut out = BTreeMap::new();
        for e in entries {
            *out.entry((e.minute, e.outcome.clone())).or_default() += e.n;
        }
        out
    }

    const A: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_first_write_stores_and_counts_its_acceptance_once() {
        let list = [
            envelope("a", 60_500, Some((A, 3))),
            envelope("b", 60_500, Some((A, 3))),
            envelope("a", 60_500, Some((A, 3))),
        ];
        let refs: Vec<&Envelope> = list.iter().collect();
        let entries = count_write(&refs, &[], &HashMap::new(), [9; 16]);
        let got = outcomes(&entries);
        assert_eq!(got[&(60, STORED.into())], 2);
        // The same id twice in one request: the client sent it again.
        assert_eq!(got[&(60, RESENT.into())], 1);
        assert_eq!(got[&(60, ACCEPTED.into())], 3);
        // Whole and new: summed into the write's own row.
        let accepted: Vec<_> = entries.iter().filter(|e| e.outcome == ACCEPTED).collect();
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].source, [9; 16]);
    }

    #[test]
    fn an_acceptance_in_parts_is_keyed_by_its_id_and_counted_once() {
        let list: Vec<Envelope> = ["a", "b", "c"]
            .iter()
            .map(|id| envelope(id, 60_500, Some((A, 3))))
            .collect();
        let refs: Vec<&Envelope> = list.iter().collect();
        // Two of three arrive: a row keyed by the acceptance.
        let part = count_write(&refs[..2], &[], &HashMap::new(), [1; 16]);
        let keyed: Vec<_> = part.iter().filter(|e| e.outcome == ACCEPTED).collect();
        assert_eq!(
            (keyed.len(), keyed[0].source, keyed[0].n),
            (1, source_of(A), 3)
        );
        // The rest arrives with a redelivery of the first two: the same row again.
        let before = HashMap::from([(list[0].key(), 60_500), (list[1].key(), 60_500)]);
        let rest = count_write(&refs, &[], &before, [2; 16]);
        let keyed: Vec<_> = rest.iter().filter(|e| e.outcome == ACCEPTED).collect();
        assert_eq!((keyed.len(), keyed[0].source), (1, source_of(A)));
        // All redelivered: nothing accepted (the writes that stored them counted it).
        let all = HashMap::from([
            (list[0].key(), 60_500),
            (list[1].key(), 60_500),
            (list[2].key(), 60_500),
        ]);
        let again = count_write(&refs[1..], &[], &all, [3; 16]);
        assert!(again.iter().all(|e| e.outcome != ACCEPTED), "{again:?}");
    }

    #[test]
    fn a_stored_receive_time_tells_a_redelivery_from_a_resend() {
        let list = [
            envelope("a", 60_500, None),
            envelope("b", 125_000, None),
            envelope("c", 125_000, None),
        ];
        let refs: Vec<&Envelope> = list.iter().collect();
        let before = HashMap::from([
            (list[0].key(), 60_500), // the same acceptance again
            (list[1].key(), 61_000), // an earlier request stored it
        ]);
        let got = outcomes(&count_write(&refs, &[], &before, [9; 16]));
        assert_eq!(got.get(&(60, REDELIVERED.into())), Some(&1));
        assert_eq!(got.get(&(120, RESENT.into())), Some(&1));
        assert_eq!(got.get(&(120, STORED.into())), Some(&1));
        // Without an acceptance, an envelope is its own when it is new to the
        // ledger (stored or resent), never when redelivered.
        assert_eq!(got.get(&(120, ACCEPTED.into())), Some(&2));
        assert_eq!(got.get(&(60, ACCEPTED.into())), None);
    }

    /// What rows of several writes add up to once `INSERT IGNORE`d.
    fn ledger_of(writes: &[Vec<Entry>]) -> BTreeMap<String, u64> {
        let mut rows = BTreeMap::new();
        for entry in writes.iter().flatten() {
            rows.entry((entry.minute, entry.outcome.clone(), entry.source))
                .or_insert(entry.n);
        }
        let mut out = BTreeMap::new();
        for ((_, outcome, _), n) in rows {
            *out.entry(outcome).or_default() += n;
        }
        out
    }

    #[test]
    fn events_dropped_at_the_write_count_once_however_often_delivered() {
        let list: Vec<Envelope> = ["a", "b", "c", "c"]
            .iter()
            .map(|id| envelope(id, 60_500, Some((A, 4))))
            .collect();
        let stored = [&list[0]];
        let dropped: Vec<Dropped> = list[1..].iter().map(|e| (e, "bot")).collect();
        let first = count_write(&stored, &dropped, &HashMap::new(), [1; 16]);
        // Redelivered whole, then the dropped part alone (a queue batch split).
        let before = HashMap::from([(list[0].key(), 60_500)]);
        let again = count_write(&stored, &dropped, &before, [2; 16]);
        let part = count_write(&[], &dropped[..1], &HashMap::new(), [3; 16]);
        let got = ledger_of(&[first, again, part]);
        assert_eq!(got["accepted"], 4);
        assert_eq!(got["stored"], 1);
        assert_eq!(got["dropped:bot"], 3, "c twice is dropped twice: {got:?}");
        assert_eq!(got["redelivered"], 1);

        // Without an acceptance each dropped envelope is its own.
        let lone = envelope("d", 60_500, None);
        let writes: Vec<_> = (0..2)
            .map(|_| {
                count_write(
                    &[],
                    &[(&lone, "suppressed")],
                    &HashMap::new(),
                    rand::random(),
                )
            })
            .collect();
        let got = ledger_of(&writes);
        assert_eq!((got["accepted"], got["dropped:suppressed"]), (1, 1));
    }

    #[test]
    fn a_redelivered_request_with_a_repeated_id_counts_nothing_new() {
        let list = [
            envelope("a", 60_500, Some((A, 2))),
            envelope("a", 60_500, Some((A, 2))),
        ];
        let refs: Vec<&Envelope> = list.iter().collect();
        let first = outcomes(&count_write(&refs, &[], &HashMap::new(), [1; 16]));
        assert_eq!(
            (first[&(60, STORED.into())], first[&(60, RESENT.into())]),
            (1, 1)
        );
        let before = HashMap::from([(list[0].key(), 60_500)]);
        let again = outcomes(&count_write(&refs, &[], &before, [2; 16]));
        assert_eq!(again.get(&(60, REDELIVERED.into())), Some(&2));
        assert_eq!(again.get(&(60, STORED.into())), None);
        assert_eq!(again.get(&(60, RESENT.into())), None);
    }

    #[test]
    fn a_dead_acceptance_is_accepted_only_when_no_write_counted_it() {
        let dead = |acceptance: u8, stored| DeadAcceptance {
            minute: 60,
            acceptance: [acceptance; 16],
            n: 2,
            letters: 2,
            stored,
        };
        let mut minutes = BTreeMap::new();
        // 1: never stored, nothing keyed by it → accepted here.
        // 2: replayed (stored since) → its write counted it.
        // 3: a stored part of it wrote a row keyed by it.
        let keyed = HashSet::from([[3; 16]]);
        add_dead_letters(&mut minutes, &[dead(1, 0), dead(2, 2), dead(3, 0)], &keyed);
        let counts = &minutes[&60];
        assert_eq!(counts.outcomes.get(ACCEPTED), Some(&2));
        assert_eq!((counts.dead_lettered, counts.replayed), (6, 2));
    }

    #[test]
    fn the_ledger_adds_up() {
        let mut counts = Counts::default();
        for (k, n) in [
            (ACCEPTED, 10),
            (STORED, 6),
            (RESENT, 1),
            (REDELIVERED, 4),
            (LOST, 1),
            ("rejected:invalid_json", 2),
            ("rejected:rate_limited", 3),
        ] {
            counts.outcomes.insert(k.into(), n);
        }
        counts.dead_lettered = 3;
        counts.replayed = 1;
        let ledger = Ledger::of(&counts);
        assert_eq!(ledger.received, 15);
        assert_eq!(ledger.rejected["rate_limited"], 3);
        // 10 − (6 + 1 + (3 − 1) + 1) = 0; redelivered is outside the sum.
        assert_eq!(ledger.in_flight, 0);
        assert!(ledger.adds_up());
        counts.outcomes.insert(STORED.into(), 5);
        assert_eq!(Ledger::of(&counts).in_flight, 1);
    }

    #[test]
    fn reports_count_under_their_id() {
        let report = Report {
            id: A.into(),
            env_id: 1,
            received_at: 119_999,
            rejected: BTreeMap::from([("invalid_json".into(), 2), ("empty".into(), 0)]),
            accepted: 5,
            lost: 5,
            ..Report::default()
        };
        let entries = count_report(&report);
        assert_eq!(entries.len(), 3);
        assert!(entries
            .iter()
            .all(|e| e.minute == 60 && e.source == source_of(A)));
        assert_eq!(source_of("not hex"), source_of("not hex"));
        assert_ne!(source_of("not hex"), source_of(A));
    }
}
