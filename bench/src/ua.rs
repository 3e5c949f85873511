//! User-agent parsing (`intake::ua`, issue 18), natively and in-process: the
//! parser's build (its first call), a parse per distinct agent (a cache
//! miss), a cached lookup, and the cost per event of a realistic mix, where
//! a few agents send most events (Zipf over the distinct set) through the
//! bounded cache.
//!
//! The agents are generated: real browser/OS templates (Chrome, Safari,
//! Firefox, Edge, Samsung Internet, in-app browsers on Windows, macOS,
//! Linux, Android, iOS; bots and HTTP tools) with many version numbers and
//! device models, so the set is several thousand distinct strings without a
//! committed list.

use std::{hint::black_box, time::Instant};

use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::{median, Figure};

/// Distinct agents per run.
pub const DISTINCT: usize = 6_000;
/// Events of the mix per run.
const EVENTS: usize = 200_000;

const ANDROID_MODELS: [&str; 12] = [
    "SM-S911B",
    "SM-A546B",
    "SM-G991B",
    "Pixel 7",
    "Pixel 8 Pro",
    "K",
    "M2101K6G",
    "CPH2451",
    "moto g(60)",
    "RMX3363",
    "2201117TY",
    "SM-A137F",
];
const ANDROID_TABLETS: [&str; 4] = ["SM-X700", "SM-T870", "Lenovo TB-X606F", "KFTRWI"];

/// One realistic user agent, its template drawn by rough market share.
pub fn user_agent(rng: &mut SmallRng) -> String {
    let chrome = rng.random_range(100..=131);
    let build = rng.random_range(4000..6800);
    let patch = rng.random_range(0..250);
    let android = rng.random_range(9..=15);
    let ios = rng.random_range(14..=18);
    let ios_minor = rng.random_range(0..=7);
    let firefox = rng.random_range(100..=133);
    let model = ANDROID_MODELS[rng.random_range(0..ANDROID_MODELS.len())];
    let mac = ["10_15_7", "14_2_1", "13_6_3"][rng.random_range(0..3)];
    match rng.random_range(0..100) {
        0..=29 => format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.{build}.{patch} Safari/537.36"),
        30..=44 => format!("Mozilla/5.0 (Linux; Android {android}; {model}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.{build}.{patch} Mobile Safari/537.36"),
        45..=56 => format!("Mozilla/5.0 (iPhone; CPU iPhone OS {ios}_{ios_minor} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{ios}.{ios_minor} Mobile/15E148 Safari/604.1"),
        57..=62 => format!("Mozilla/5.0 (Macintosh; Intel Mac OS X {mac}) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{ios}.{ios_minor} Safari/605.1.15"),
        63..=67 => format!("Mozilla/5.0 (Macintosh; Intel Mac OS X {mac}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.{build}.{patch} Safari/537.36"),
        68..=71 => format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.0.0 Safari/537.36 Edg/{chrome}.0.{build}.{patch}"),
        72..=75 => format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{firefox}.0) Gecko/20100101 Firefox/{firefox}.0"),
        76..=77 => format!("Mozilla/5.0 (X11; Linux x86_64; rv:{firefox}.0) Gecko/20100101 Firefox/{firefox}.0"),
        78..=79 => format!("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.0.0 Safari/537.36"),
        80..=82 => format!("Mozilla/5.0 (Linux; Android {android}; SAMSUNG {model}) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/{}.{} Chrome/{chrome}.0.0.0 Mobile Safari/537.36", rng.random_range(18..=26), rng.random_range(0..3)),
        83..=85 => format!("Mozilla/5.0 (iPad; CPU OS {ios}_{ios_minor} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{ios}.{ios_minor} Mobile/15E148 Safari/604.1"),
        86..=87 => format!("Mozilla/5.0 (Linux; Android {android}; {}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.{build}.{patch} Safari/537.36", ANDROID_TABLETS[rng.random_range(0..ANDROID_TABLETS.len())]),
        88..=89 => format!("Mozilla/5.0 (iPhone; CPU iPhone OS {ios}_{ios_minor} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/{}.0.0.{}.{};FBBV/{};FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/{ios}.{ios_minor};FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]", rng.random_range(400..=450), rng.random_range(10..60), rng.random_range(10..200), rng.random_range(500_000_000..600_000_000)),
        90..=91 => format!("Mozilla/5.0 (Linux; Android {android}; {model} Build/TP1A.{}.0{}; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/{chrome}.0.{build}.{patch} Mobile Safari/537.36 Instagram {}.0.0.{}.{} Android", rng.random_range(220_000..=240_000), rng.random_range(10..99), rng.random_range(250..=320), rng.random_range(10..60), rng.random_range(10..200)),
        92..=93 => format!("Mozilla/5.0 (iPhone; CPU iPhone OS {ios}_{ios_minor} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/{chrome}.0.{build}.{patch} Mobile/15E148 Safari/604.1"),
        94 => format!("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.{build}.{patch} Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
        95 => format!("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/{chrome}.0.{build}.{patch} Safari/537.36"),
        96 => format!("curl/{}.{}.{}", rng.random_range(7..=8), rng.random_range(0..=88), rng.random_range(0..=9)),
        97 => format!("python-requests/2.{}.{}", rng.random_range(20..=32), rng.random_range(0..=9)),
        98 => format!("okhttp/{}.{}.{}", rng.random_range(3..=5), rng.random_range(0..=12), rng.random_range(0..=9)),
        _ => format!("Mozilla/5.0 (X11; CrOS x86_64 {}.{}.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.0.0 Safari/537.36", rng.random_range(14_000..16_000), rng.random_range(0..200)),
    }
}

/// `n` distinct agents, deterministic for a seed.
pub fn distinct(n: usize, seed: u64) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ua = user_agent(&mut rng);
        if seen.insert(ua.clone()) {
            out.push(ua);
        }
    }
    out
}

/// `events` indexes into `n` agents, Zipf-distributed (exponent 1): the
/// first agent is the most frequent, as a site's top browser build is.
fn zipf(n: usize, events: usize, seed: u64) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(n);
    let mut total = 0.0;
    for k in 1..=n {
        total += 1.0 / k as f64;
        cumulative.push(total);
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..events)
        .map(|_| {
            let x = rng.random::<f64>() * total;
            cumulative.partition_point(|&c| c < x).min(n - 1)
        })
        .collect()
}

fn per_item(started: Instant, n: usize) -> f64 {
    started.elapsed().as_secs_f64() / n as f64
}

pub fn figures(runs: usize, figures: &mut Vec<Figure>) {
    let started = Instant::now();
    intake::ua::warm_up();
    let build_ms = started.elapsed().as_secs_f64() * 1e3;

    let (mut uncached, mut cached, mut mix) = (vec![], vec![], vec![]);
    let (mut misses, mut first) = (vec![], vec![]);
    for run in 0..runs.max(1) {
        let seed = 0x5EED_0000 + run as u64;
        let agents = distinct(DISTINCT, seed);
        // Every agent once, without the cache: what a miss costs.
        let t = Instant::now();
        for ua in &agents {
            black_box(intake::ua::parse_uncached(black_box(ua)));
        }
        uncached.push(per_item(t, agents.len()) * 1e6);
        // Look up again agents the cache holds (half its capacity, just put).
        let held = &agents[..(intake::ua::CACHE_CAPACITY / 2).min(agents.len())];
        for ua in held {
            black_box(intake::ua::parse(ua));
        }
        let missed = intake::ua::cache_misses();
        let t = Instant::now();
        for ua in held {
            black_box(intake::ua::parse(black_box(ua)));
        }
        cached.push(per_item(t, held.len()) * 1e9);
        assert_eq!(intake::ua::cache_misses(), missed, "the cached pass parsed");
        // The mix: fresh agents (no cache entry yet), Zipf over the set.
        let agents = distinct(DISTINCT, seed ^ 0xA5A5);
        let order = zipf(agents.len(), EVENTS, seed);
        let mut seen = std::collections::HashSet::new();
        let first_seen = order.iter().filter(|&&i| seen.insert(i)).count();
        let missed = intake::ua::cache_misses();
        let t = Instant::now();
        for &i in &order {
            black_box(intake::ua::parse(black_box(&agents[i])));
        }
        mix.push(per_item(t, order.len()) * 1e6);
        let missed = intake::ua::cache_misses() - missed;
        misses.push(missed as f64 / order.len() as f64 * 100.0);
        first.push(first_seen as f64 / order.len() as f64 * 100.0);
    }
    let (uncached, cached, mix) = (median(uncached), median(cached), median(mix));
    let (misses, first) = (median(misses), median(first));
    figures.push(Figure {
        name: "user-agent parser build, first call (uap-core's regexes, native)".into(),
        value: build_ms,
        unit: "ms",
        reference: "-".into(),
        ratio: None,
        target: "-".into(),
    });
    figures.push(Figure {
        name: format!(
            "user-agent parse of a distinct agent, uncached ({DISTINCT} generated agents)"
        ),
        value: uncached,
        unit: "µs",
        reference: "-".into(),
        ratio: None,
        target: "-".into(),
    });
    figures.push(Figure {
        name: "user-agent parse, cached lookup".into(),
        value: cached,
        unit: "ns",
        reference: "-".into(),
        ratio: None,
        target: "-".into(),
    });
    figures.push(Figure {
        name: format!(
            "user-agent parse, per event (realistic mix: {EVENTS} events, Zipf over {DISTINCT} agents; {misses:.1}% parsed, {first:.1}% first seen; cache of {})",
            intake::ua::CACHE_CAPACITY
        ),
        value: mix,
        unit: "µs",
        reference: "target 2".into(),
        ratio: Some(mix / 2.0),
        target: "≤ 2 µs per event".into(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_agents_are_distinct_and_parse_as_their_templates_say() {
        let agents = distinct(2_000, 1);
        let unique: std::collections::HashSet<_> = agents.iter().collect();
        assert_eq!(unique.len(), agents.len());
        let mut devices = std::collections::BTreeMap::new();
        for ua in &agents {
            let agent = intake::ua::parse_uncached(ua);
            *devices.entry(format!("{:?}", agent.device)).or_insert(0) += 1;
            if ua.starts_with("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit")
                && !ua.contains("Edg/")
            {
                assert_eq!(
                    (agent.browser.as_str(), agent.os.as_str()),
                    ("Chrome", "Windows"),
                    "{ua}"
                );
            }
        }
        for device in ["Desktop", "Mobile", "Tablet", "Bot", "Other"] {
            assert!(devices.get(device).is_some_and(|&n| n > 0), "{devices:?}");
        }
    }

    #[test]
    fn zipf_favours_the_first_agents() {
        let order = zipf(1000, 10_000, 1);
        let top = order.iter().filter(|&&i| i < 10).count();
        assert!(top > 3_000 && order.iter().all(|&i| i < 1000), "{top}");
    }
}
