//! A realistic population of clients for the storage figure: each user has
//! one of thousands of distinct user agents and one of thousands of cities,
//! and every event's context is what the door and the backend's write make
//! of it (`intake::events::Meta::enrich`: geo under the default
//! policy, the address truncated, the bot verdict; then
//! `intake::enrich::at_write`: the parsed user agent), so the stored
//! contexts have the cardinality of real traffic rather than a handful of
//! fixed ones.

use protocol::Envelope;
use serde_json::{json, Map, Value};

/// Distinct user agents and cities in the population.
pub const USER_AGENTS: u64 = 5_000;
pub const CITIES: u64 = 2_000;

const COUNTRIES: [(&str, &str, &str); 10] = [
    ("DE", "EU", "Europe/Berlin"),
    ("US", "NA", "America/New_York"),
    ("FR", "EU", "Europe/Paris"),
    ("BR", "SA", "America/Sao_Paulo"),
    ("JP", "AS", "Asia/Tokyo"),
    ("GB", "EU", "Europe/London"),
    ("IN", "AS", "Asia/Kolkata"),
    ("CA", "NA", "America/Toronto"),
    ("AU", "OC", "Australia/Sydney"),
    ("NL", "EU", "Europe/Amsterdam"),
];

/// The `i`-th user agent (of [`USER_AGENTS`]): real browser and OS
/// templates with many versions.
pub fn user_agent(i: u64) -> String {
    let v = i / 5;
    match i % 5 {
        0 => format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.{}.{} Safari/537.36",
            100 + v % 30,
            5000 + v,
            v % 200
        ),
        1 => format!(
            "Mozilla/5.0 (iPhone; CPU iPhone OS {}_{} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{}.{} Mobile/{}E{} Safari/604.1",
            14 + v % 5,
            v / 5 % 8,
            14 + v % 5,
            v / 5 % 8,
            15 + v / 40,
            100 + v % 40
        ),
        2 => format!(
            "Mozilla/5.0 (X11; Linux x86_64; rv:{}.0) Gecko/20100101 Firefox/{}.{}",
            90 + v % 40,
            90 + v % 40,
            v / 40
        ),
        3 => format!(
            "Mozilla/5.0 (Linux; Android {}; SM-G{}) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/{}.0 Chrome/{}.0.0.0 Mobile Safari/537.36",
            10 + v % 5,
            900 + v % 100,
            18 + v / 100,
            100 + v % 30
        ),
        _ => format!(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_{}) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{}.{} Safari/605.1.15",
            v % 8,
            14 + v % 4,
            v / 4
        ),
    }
}

/// `request.cf` of a client in the `i`-th city (of [`CITIES`]).
pub fn cf(i: u64) -> Value {
    let (country, continent, timezone) = COUNTRIES[(i % COUNTRIES.len() as u64) as usize];
    let asn = 1_000 + i % 300;
    let colo = ["FRA", "AMS", "IAD", "GRU", "NRT"][(i % 5) as usize];
    json!({
        "colo": colo,
        "country": country, "continent": continent,
        "isEUCountry": if continent == "EU" { Some("1") } else { None },
        "region": format!("Region {}", i / 10), "regionCode": format!("R{}", i / 10),
        "city": format!("City {i}"), "postalCode": format!("{:05}", i * 7 % 100_000),
        "timezone": timezone,
        "latitude": format!("{:.4}", (i as f64 * 0.0731) % 180.0 - 90.0),
        "longitude": format!("{:.4}", (i as f64 * 0.1379) % 360.0 - 180.0),
        "asn": asn, "asOrganization": format!("Carrier {asn}"),
        "botManagement": {"verifiedBot": false, "score": 99},
    })
}

/// A stable hash of a user's id: which user agent, city and address it has.
fn of_user(user: &str) -> u64 {
    user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Replaces each envelope's context with what is stored for its
/// user's client (the library it was sent with kept).
pub fn enrich(rows: &mut [Envelope]) {
    for row in rows {
        let user = of_user(row.user_id.as_deref().unwrap_or(""));
        let ip = format!("10.{}.{}.{}", user >> 16 & 255, user >> 8 & 255, user & 255);
        let meta = intake::events::Meta {
            env_id: row.env_id,
            received_at: row.received_at,
            user_agent: Some(user_agent(user % USER_AGENTS)),
            enrichment: intake::enrich::Enrichment::new(
                intake::enrich::Client::from_cf(&cf(user / USER_AGENTS % CITIES), Some(ip)),
                intake::enrich::Policy::default(),
            ),
        };
        let mut context = Map::new();
        context.insert("library".into(), json!("sluice-js/1.0"));
        meta.enrich(&mut context, None);
        intake::enrich::at_write(&mut context, intake::enrich::Policy::default());
        row.context = context;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_population_has_thousands_of_agents_and_cities() {
        let agents: std::collections::HashSet<_> = (0..USER_AGENTS).map(user_agent).collect();
        assert_eq!(agents.len() as u64, USER_AGENTS);
        let cities: std::collections::HashSet<_> =
            (0..CITIES).map(|i| cf(i)["city"].to_string()).collect();
        assert_eq!(cities.len() as u64, CITIES);
        let mut rows = vec![Envelope {
            user_id: Some("user-7".into()),
            ..Envelope::default()
        }];
        enrich(&mut rows);
        let c = &rows[0].context;
        assert!(
            c["geo"]["city"].as_str().unwrap().starts_with("City "),
            "{c:?}"
        );
        assert!(
            c["ip"].as_str().unwrap().ends_with(".0"),
            "truncated: {c:?}"
        );
        assert!(c["user_agent"].as_str().unwrap().starts_with("Mozilla/5.0"));
    }
}
