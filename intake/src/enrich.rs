//! Enrichment and privacy at the door: where a request came from (geo),
//! whether a bot sent it, and each environment's policy for the client's
//! address, its location and its bots. Both doors enrich through here
//! ([`crate::events::Meta::enrich`]), before an event leaves the door, so a
//! full address never reaches a queue, a dead letter, a log line or a shard
//! unless the environment keeps it.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What becomes of the client's address (the door's, and a client's own `context.ip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum IpPolicy {
    /// No address is stored.
    Drop,
    /// IPv4 to its /24, IPv6 to its /48.
    #[default]
    Truncate,
    /// The address as the door saw it.
    Keep,
}

/// How much of the location derived from the address is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum GeoPolicy {
    /// Everything, with postal code, latitude and longitude.
    Full,
    /// Down to the city: no postal code, latitude or longitude.
    #[default]
    City,
    /// Country, continent and whether it is in the EU.
    Country,
    /// No location at all (not even `context.country`).
    None,
}

/// What becomes of events a bot sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum BotPolicy {
    /// Stored like any other event, without a verdict.
    Keep,
    /// Stored with `context.bot: true | false`.
    #[default]
    Flag,
    /// Answered as accepted, not stored; the delivery ledger counts them
    /// `dropped` with reason `bot`.
    Drop,
}

/// An environment's privacy settings, as the doors apply them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
/// Read leniently (fields missing take their default, unknown ones are
/// ignored) so an edge reads records a newer backend wrote.
#[serde(default)]
pub struct Policy {
    pub ip: IpPolicy,
    pub geo: GeoPolicy,
    pub bots: BotPolicy,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ip={} geo={} bots={}", self.ip, self.geo, self.bots)
    }
}

/// The ledger's reason for bot events a [`BotPolicy::Drop`] environment drops.
pub const DROPPED_BOT: &str = "bot";

macro_rules! names {
    ($t:ty, $what:literal, $($variant:ident = $name:literal),+) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok(Self::$variant),)+
                    other => Err(format!(
                        concat!($what, " must be one of {}, not `{}`"),
                        [$($name),+].join(", "),
                        other
                    )),
                }
            }
        }
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
names!(
    IpPolicy,
    "ip",
    Drop = "drop",
    Truncate = "truncate",
    Keep = "keep"
);
names!(
    GeoPolicy,
    "geo",
    Full = "full",
    City = "city",
    Country = "country",
    None = "none"
);
names!(
    BotPolicy,
    "bots",
    Keep = "keep",
    Flag = "flag",
    Drop = "drop"
);

impl IpPolicy {
    /// `ip` as this policy stores it: as given, truncated, or not at all
    /// (also when it is no address: it cannot be truncated).
    pub fn apply(self, ip: &str) -> Option<String> {
        match self {
            Self::Drop => None,
            Self::Keep => Some(ip.to_owned()),
            Self::Truncate => ip
                .trim()
                .parse::<IpAddr>()
                .ok()
                .map(|a| truncate(a).to_string()),
        }
    }
}

/// IPv4 (and IPv4-mapped IPv6) to its /24, IPv6 to its /48.
pub fn truncate(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => truncate(IpAddr::V4(v4)),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 80) - 1))),
        },
    }
}

/// `text` with every token that reads as an IP address replaced as
/// `policy` says (`[ip]` when it drops them): for what a door keeps of a
/// request it could not read as events (a refused request's sample).
pub fn scrub(text: &str, policy: IpPolicy) -> Cow<'_, str> {
    if policy == IpPolicy::Keep {
        return Cow::Borrowed(text);
    }
    let is_part = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
    let mut out = String::new();
    let mut copied = 0;
    let mut rest = text.char_indices().peekable();
    while let Some((start, c)) = rest.next() {
        if !is_part(c) {
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, c)) = rest.peek() {
            if !is_part(c) {
                break;
            }
            end = i + c.len_utf8();
            rest.next();
        }
        let token = text[start..end].trim_end_matches(['.', ':']);
        if !(token.contains('.') || token.contains(':')) {
            continue;
        }
        if let Ok(ip) = token.parse::<IpAddr>() {
            out.push_str(&text[copied..start]);
            match policy {
                IpPolicy::Truncate => out.push_str(&truncate(ip).to_string()),
                _ => out.push_str("[ip]"),
            }
            copied = start + token.len();
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Where the client is, as the runtime tells it (`request.cf` at the edge;
/// a trusted proxy's country header at the backend).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Geo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eu: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_org: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

/// Longest text a geo field keeps.
const MAX_GEO_CHARS: usize = 100;

impl Geo {
    /// Read leniently from a `request.cf` object: text fields that are
    /// text, `asn` as a number (or numeric text), coordinates as numbers or
    /// numeric text within range, `isEUCountry` as `"1"` (or `true`).
    pub fn from_cf(cf: &Value) -> Self {
        let text = |name: &str| {
            cf.get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| crate::text::prefix(s, MAX_GEO_CHARS).to_owned())
        };
        let number = |name: &str| {
            match cf.get(name) {
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|n| n.is_finite())
        };
        let coordinate = |name: &str, max: f64| number(name).filter(|n| n.abs() <= max);
        Self {
            country: text("country"),
            continent: text("continent"),
            eu: match cf.get("isEUCountry") {
                Some(Value::String(s)) => Some(s == "1"),
                Some(Value::Bool(b)) => Some(*b),
                _ => None,
            },
            region: text("region"),
            region_code: text("regionCode"),
            city: text("city"),
            timezone: text("timezone"),
            asn: number("asn")
                .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX))
                .map(|n| n as u32),
            as_org: text("asOrganization"),
            postal_code: text("postalCode"),
            latitude: coordinate("latitude", 90.0),
            longitude: coordinate("longitude", 180.0),
        }
    }

    /// What `policy` lets an event keep of this location.
    pub fn under(&self, policy: GeoPolicy) -> Self {
        match policy {
            GeoPolicy::Full => self.clone(),
            GeoPolicy::City => Self {
                postal_code: None,
                latitude: None,
                longitude: None,
                ..self.clone()
            },
            GeoPolicy::Country => Self {
                country: self.country.clone(),
                continent: self.continent.clone(),
                eu: self.eu,
                ..Self::default()
            },
            GeoPolicy::None => Self::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What the runtime says about whether a bot sent the request
/// (`request.cf.botManagement`, where the zone has Bot Management).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BotSignal {
    pub verified_bot: bool,
    /// 1 (automated) to 99 (human), when present.
    pub score: Option<u8>,
}

/// Below this Bot Management score a request counts as a bot's
/// (Cloudflare: 1 automated, 2–29 likely automated).
pub const BOT_SCORE_BELOW: u8 = 30;

impl BotSignal {
    pub fn from_cf(cf: &Value) -> Self {
        let Some(bm) = cf.get("botManagement") else {
            return Self::default();
        };
        Self {
            verified_bot: bm.get("verifiedBot").and_then(Value::as_bool) == Some(true),
            score: bm
                .get("score")
                .and_then(Value::as_u64)
                .and_then(|s| u8::try_from(s).ok())
                .filter(|s| (1..=99).contains(s)),
        }
    }

    /// Whether the runtime says bot. It never clears a parser's verdict: a
    /// human-looking score does not make a crawler's user agent human.
    pub fn says_bot(&self) -> bool {
        self.verified_bot || self.score.is_some_and(|s| s < BOT_SCORE_BELOW)
    }
}

/// What a door knows of the client beyond the request's body: from
/// `request.cf` and `CF-Connecting-IP` at the edge, from the socket and
/// trusted proxies' headers at the backend. Never stored as is: the
/// environment's [`Policy`] decides what of it an event keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Client {
    pub ip: Option<String>,
    /// The data centre that took the request (the edge's `cf.colo`).
    pub colo: Option<String>,
    pub geo: Geo,
    pub bot: BotSignal,
}

impl Client {
    /// The client as `request.cf` and `CF-Connecting-IP` describe it.
    pub fn from_cf(cf: &Value, ip: Option<String>) -> Self {
        Self {
            ip,
            colo: cf
                .get("colo")
                .and_then(Value::as_str)
                .map(|s| crate::text::prefix(s, MAX_GEO_CHARS).to_owned()),
            geo: Geo::from_cf(cf),
            bot: BotSignal::from_cf(cf),
        }
    }
}

/// The enrichment one request's events get, the environment's policy
/// applied once: the same for every event of the request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enrichment {
    pub policy: Policy,
    /// `context.country` (what the counters group by).
    pub country: Option<String>,
    pub colo: Option<String>,
    /// `context.geo`, as the policy allows it.
    pub geo: Option<Value>,
    /// The door's address for the client, as the policy stores it.
    pub ip: Option<String>,
    pub bot: BotSignal,
}

impl Enrichment {
    pub fn new(client: Client, policy: Policy) -> Self {
        let geo = client.geo.under(policy.geo);
        Self {
            policy,
            country: geo.country.clone(),
            colo: client.colo,
            geo: (!geo.is_empty())
                .then(|| serde_json::to_value(&geo).ok())
                .flatten(),
            ip: client.ip.as_deref().and_then(|ip| policy.ip.apply(ip)),
            bot: client.bot,
        }
    }

    /// Applies the policy to what the client put in `context` itself: its
    /// `ip` (kept, truncated or removed), and fills in what the door knows.
    /// The door's country, colo and geo win over the client's.
    pub fn apply(&self, context: &mut Map<String, Value>) {
        match context.get("ip") {
            Some(Value::String(ip)) => match self.policy.ip.apply(ip) {
                Some(kept) => {
                    context.insert("ip".into(), Value::String(kept));
                }
                None => {
                    context.remove("ip");
                }
            },
            Some(_) if self.policy.ip != IpPolicy::Keep => {
                context.remove("ip");
            }
            Some(_) => {}
            None => {
                if let Some(ip) = &self.ip {
                    context.insert("ip".into(), Value::String(ip.clone()));
                }
            }
        }
        for (key, value) in [("country", &self.country), ("colo", &self.colo)] {
            if let Some(value) = value {
                context.insert(key.into(), Value::String(value.clone()));
            }
        }
        if self.policy.geo == GeoPolicy::None {
            context.remove("country");
        }
        if let Some(geo) = &self.geo {
            context.insert("geo".into(), geo.clone());
        }
    }

    /// The runtime's bot verdict (Bot Management at the edge), written to
    /// `context.bot` unless the policy keeps bots unflagged. The parser's
    /// verdict is added at the write ([`at_write`]).
    pub fn judge(&self, context: &mut Map<String, Value>) -> bool {
        let bot = self.bot.says_bot();
        if self.policy.bots != BotPolicy::Keep {
            context.insert("bot".into(), Value::Bool(bot));
        }
        bot
    }
}

/// What the backend's write adds to an event the door enriched: `context.ua`
/// from the raw `context.user_agent` ([`crate::ua`], cached per distinct
/// agent), and the parser's bot verdict, which sets `context.bot` (never
/// clears the door's) unless the environment keeps bots unflagged. Returns
/// the ledger's reason when the environment does not store the event
/// ([`BotPolicy::Drop`] and the parser says bot).
pub fn at_write(context: &mut Map<String, Value>, policy: Policy) -> Option<&'static str> {
    let agent = match context.get("user_agent") {
        Some(Value::String(ua)) if !ua.is_empty() => crate::ua::parse(ua),
        _ => return None,
    };
    let bot = agent.is_bot();
    context.insert("ua".into(), agent.to_json());
    if !bot {
        return None;
    }
    match policy.bots {
        BotPolicy::Keep => None,
        BotPolicy::Flag => {
            context.insert("bot".into(), Value::Bool(true));
            None
        }
        BotPolicy::Drop => Some(DROPPED_BOT),
    }
}

/// Takes out the events a [`BotPolicy::Drop`] environment does not store
/// (those [`Enrichment::judge`] flagged), returning how many it took.
pub fn drop_bots(envelopes: &mut Vec<protocol::Envelope>, policy: Policy) -> u64 {
    if policy.bots != BotPolicy::Drop {
        return 0;
    }
    let before = envelopes.len();
    envelopes.retain(|e| e.context.get("bot") != Some(&Value::Bool(true)));
    (before - envelopes.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policies_parse_and_default() {
        assert_eq!(Policy::default().ip, IpPolicy::Truncate);
        assert_eq!(Policy::default().geo, GeoPolicy::City);
        assert_eq!(Policy::default().bots, BotPolicy::Flag);
        assert_eq!("KEEP".parse::<IpPolicy>(), Ok(IpPolicy::Keep));
        assert_eq!("none".parse::<GeoPolicy>(), Ok(GeoPolicy::None));
        let e = "sometimes".parse::<BotPolicy>().unwrap_err();
        assert!(e.contains("keep, flag, drop"), "{e}");
        let p: Policy = serde_json::from_value(json!({"ip": "keep"})).unwrap();
        assert_eq!(
            p,
            Policy {
                ip: IpPolicy::Keep,
                ..Policy::default()
            }
        );
        assert!(serde_json::from_value::<Policy>(json!({"ip": "maybe"})).is_err());
        assert!(serde_json::from_value::<Policy>(json!({"ua": "parse"})).is_ok());
        assert_eq!(
            serde_json::to_value(Policy::default()).unwrap(),
            json!({"ip": "truncate", "geo": "city", "bots": "flag"})
        );
    }

    #[test]
    fn addresses_truncate() {
        let t = |s: &str| IpPolicy::Truncate.apply(s);
        assert_eq!(t("203.0.113.77").as_deref(), Some("203.0.113.0"));
        assert_eq!(
            t("2001:db8:85a3:8d3:1319:8a2e:370:7348").as_deref(),
            Some("2001:db8:85a3::")
        );
        assert_eq!(t("::ffff:198.51.100.9").as_deref(), Some("198.51.100.0"));
        assert_eq!(t(" 10.1.2.3 ").as_deref(), Some("10.1.2.0"));
        assert_eq!(t("not an address"), None);
        assert_eq!(IpPolicy::Drop.apply("203.0.113.77"), None);
        assert_eq!(
            IpPolicy::Keep.apply("203.0.113.77").as_deref(),
            Some("203.0.113.77")
        );
    }

    #[test]
    fn scrubs_addresses_out_of_text() {
        let text = r#"{"context":{"ip":"203.0.113.77"},"v":"2001:db8:85a3:8d3:1319:8a2e:370:7348","t":"12:30:45","n":1.5} at 198.51.100.9."#;
        let truncated = scrub(text, IpPolicy::Truncate);
        assert!(
            !truncated.contains("203.0.113.77") && truncated.contains("203.0.113.0"),
            "{truncated}"
        );
        assert!(
            truncated.contains("2001:db8:85a3::") && !truncated.contains("8a2e"),
            "{truncated}"
        );
        assert!(
            truncated.contains("12:30:45") && truncated.contains("1.5"),
            "{truncated}"
        );
        assert!(truncated.ends_with("at 198.51.100.0."), "{truncated}");
        let dropped = scrub(text, IpPolicy::Drop);
        assert!(
            dropped.contains(r#""ip":"[ip]""#) && !dropped.contains("198.51"),
            "{dropped}"
        );
        assert!(matches!(
            scrub("no address here: 1.2", IpPolicy::Drop),
            Cow::Borrowed(_)
        ));
        assert!(matches!(scrub(text, IpPolicy::Keep), Cow::Borrowed(_)));
        assert_eq!(scrub("é1.2.3.4é", IpPolicy::Truncate), "é1.2.3.0é");
    }

    fn cf() -> Value {
        // What workerd hands over: not everything is text.
        json!({
            "colo": "FRA", "country": "DE", "continent": "EU", "isEUCountry": "1",
            "region": "Hesse", "regionCode": "HE", "city": "Frankfurt am Main",
            "postalCode": "60313", "timezone": "Europe/Berlin",
            "latitude": "50.11550", "longitude": 8.68417, "asn": 3320,
            "asOrganization": "Deutsche Telekom AG",
            "botManagement": {"verifiedBot": false, "score": 99, "corporateProxy": false},
            "tlsVersion": "TLSv1.3", "httpProtocol": "HTTP/2"
        })
    }

    #[test]
    fn geo_reads_cf_leniently() {
        let geo = Geo::from_cf(&cf());
        assert_eq!(geo.country.as_deref(), Some("DE"));
        assert_eq!(geo.eu, Some(true));
        assert_eq!(geo.asn, Some(3320));
        assert_eq!(geo.latitude, Some(50.1155));
        assert_eq!(geo.longitude, Some(8.68417));
        assert_eq!(geo.region_code.as_deref(), Some("HE"));
        let odd = Geo::from_cf(
            &json!({"asn": "13335", "latitude": 91, "city": 7, "isEUCountry": "0", "country": " "}),
        );
        assert_eq!(odd.asn, Some(13335));
        assert_eq!(
            (odd.latitude, odd.city, odd.eu, odd.country),
            (None, None, Some(false), None)
        );
        assert!(Geo::from_cf(&json!(null)).is_empty());
        assert!(Geo::from_cf(&json!({"asn": -1, "longitude": "east"})).is_empty());
    }

    #[test]
    fn geo_policy_cuts() {
        let geo = Geo::from_cf(&cf());
        let city = geo.under(GeoPolicy::City);
        assert!(city.city.is_some() && city.asn.is_some());
        assert!(city.latitude.is_none() && city.longitude.is_none() && city.postal_code.is_none());
        let country = geo.under(GeoPolicy::Country);
        assert_eq!(
            serde_json::to_value(&country).unwrap(),
            json!({"country": "DE", "continent": "EU", "eu": true})
        );
        assert!(geo.under(GeoPolicy::None).is_empty());
        assert_eq!(geo.under(GeoPolicy::Full), geo);
    }

    #[test]
    fn bot_management_and_the_parser_add_up() {
        let miniflare = BotSignal::from_cf(&cf());
        assert!(!miniflare.says_bot());
        assert!(
            BotSignal::from_cf(&json!({"botManagement": {"verifiedBot": true, "score": 99}}))
                .says_bot()
        );
        assert!(BotSignal::from_cf(&json!({"botManagement": {"score": 12}})).says_bot());
        assert!(!BotSignal::from_cf(&json!({"botManagement": {"score": "low"}})).says_bot());

        const GOOGLEBOT: &str =
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                              (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let door = |cf: Value, policy: Policy, ua: &str| {
            let mut context = Map::new();
            context.insert("user_agent".into(), Value::String(ua.into()));
            Enrichment::new(Client::from_cf(&cf, None), policy).judge(&mut context);
            context
        };
        // Miniflare's score 99 at the door, the parser at the write: a crawler stays one.
        let mut context = door(cf(), Policy::default(), GOOGLEBOT);
        assert_eq!(context["bot"], false);
        assert_eq!(at_write(&mut context, Policy::default()), None);
        assert_eq!(context["bot"], true);
        assert_eq!(context["ua"]["device"], "bot");
        // Bot Management's verdict is never cleared by a browser's user agent.
        let verified = json!({"botManagement": {"verifiedBot": true}});
        let mut context = door(verified, Policy::default(), CHROME);
        assert_eq!(at_write(&mut context, Policy::default()), None);
        assert_eq!(
            (&context["bot"], &context["ua"]["browser"]),
            (&json!(true), &json!("Chrome"))
        );
        // keep: no verdict stored; drop: the write is told why it drops.
        let keep = Policy {
            bots: BotPolicy::Keep,
            ..Policy::default()
        };
        let mut context = door(cf(), keep, GOOGLEBOT);
        assert_eq!(at_write(&mut context, keep), None);
        assert!(!context.contains_key("bot"));
        let drop = Policy {
            bots: BotPolicy::Drop,
            ..Policy::default()
        };
        let mut context = door(cf(), drop, GOOGLEBOT);
        assert_eq!(at_write(&mut context, drop), Some(DROPPED_BOT));
        let mut context = door(cf(), drop, CHROME);
        assert_eq!(at_write(&mut context, drop), None);
        // No user agent: nothing parsed.
        let mut context = Map::new();
        assert_eq!(at_write(&mut context, drop), None);
        assert!(!context.contains_key("ua"));
    }

    #[test]
    fn enrichment_applies_the_policy() {
        let client = Client::from_cf(&cf(), Some("203.0.113.77".into()));
        let apply = |policy: Policy, context: Value| {
            let Value::Object(mut context) = context else {
                unreachable!()
            };
            Enrichment::new(client.clone(), policy).apply(&mut context);
            Value::Object(context)
        };
        let c = apply(
            Policy::default(),
            json!({"ip": "2001:db8:1:2:3:4:5:6", "country": "XX"}),
        );
        assert_eq!(c["ip"], "2001:db8:1::");
        assert_eq!(c["country"], "DE");
        assert_eq!(c["colo"], "FRA");
        assert_eq!(c["geo"]["city"], "Frankfurt am Main");
        assert!(c["geo"].get("latitude").is_none());
        let c = apply(Policy::default(), json!({}));
        assert_eq!(c["ip"], "203.0.113.0");
        let drop = Policy {
            ip: IpPolicy::Drop,
            geo: GeoPolicy::None,
            ..Policy::default()
        };
        let c = apply(drop, json!({"ip": "198.51.100.9", "country": "XX"}));
        assert!(
            c.get("ip").is_none() && c.get("geo").is_none() && c.get("country").is_none(),
            "{c}"
        );
        let c = apply(
            Policy {
                ip: IpPolicy::Truncate,
                ..drop
            },
            json!({"ip": ["203.0.113.77"]}),
        );
        assert!(
            c.get("ip").is_none(),
            "what cannot be truncated is not kept: {c}"
        );
        let keep = Policy {
            ip: IpPolicy::Keep,
            geo: GeoPolicy::Full,
            ..Policy::default()
        };
        let c = apply(keep, json!({}));
        assert_eq!(c["ip"], "203.0.113.77");
        assert_eq!(c["geo"]["postal_code"], "60313");
    }
}
