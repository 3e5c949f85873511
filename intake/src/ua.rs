//! User agent → browser, OS and a device class, with uap-core's data and
//! family names (`Chrome`, `Mobile Safari`, `Firefox`; `Windows`, `iOS`,
//! `Mac OS X`, `Android`, `Linux`; `Other` when nothing matches).
//!
//! The matching is the ua-parser project's own Rust port (`ua-parser`);
//! the data is uap-core's `regexes.yaml`, vendored under
//! `intake/data/uap-core/` and turned into static tables by `build.rs`.
//! The three extractors (~1,180 regexes) are built on the first call, and
//! each distinct user agent is parsed once: the results are kept in a
//! bounded cache shared by every caller of the process.
//!
//! **What it costs** (BENCHMARKS.md "User-agent parsing"): natively the
//! build takes ~0.2 s and ~25 MB once per process, a distinct agent
//! ~12 µs, an event of a realistic mix ~1.3 µs. In the edge worker the same
//! build takes ~0.6 s (more on a busy machine) of the first request with a
//! user agent in every new isolate, and the parser adds ~390 KB of gzipped
//! wasm. So only the backend's write calls it
//! ([`crate::enrich::at_write`], natively, with [`warm_up`] at start-up);
//! the doors keep the raw user agent, and the linker leaves this module out
//! of the worker, which never calls it.
//!
//! uap-core has no device *class*, so [`Device`] is decided here:
//! - `bot`: uap-core says `Spider` (its device parsers, which look for
//!   crawler and bot names, or its user-agent parsers). Command-line tools
//!   and HTTP libraries are not bots unless uap-core says so: `curl`,
//!   `Wget`, `python-requests`, `Go-http-client` are `other`, while
//!   `Python-urllib` is on uap-core's spider list and is a `bot`.
//! - `other` for TVs, consoles and set-top boxes (`SmartTV`, `HbbTV`,
//!   `CrKey`, `AppleTV`, `Roku`, `Web0S`, `PlayStation`, `Xbox`, …).
//! - `tablet`: an iPad, a Kindle (`Kindle`, `Silk`), a PlayBook, a UA that
//!   says `Tablet` (not Windows' `Tablet PC`), and an Android *browser*
//!   without the `Mobile` token (Google's rule for Android phones vs
//!   tablets).
//! - `mobile`: an iPhone or iPod, Android with `Mobile` (and Android apps
//!   that are no browser, e.g. `Dalvik/…`: most are phones), Windows
//!   Phone / Mobile / CE, the mobile OS families (BlackBerry, Symbian,
//!   KaiOS, Firefox OS, …), or a `Mobi` token.
//! - `desktop`: a desktop OS family (Windows, Mac OS X, Linux and its
//!   distributions, Chrome OS, the BSDs, Solaris) in a browser's user agent
//!   (starting `Mozilla/` or `Opera/`); a tool or native app on those OSes is
//!   `other`.
//! - `other`: anything else (an empty user agent too).
//!
//! iPadOS's Safari sends a Mac's user agent by default, so it is `desktop`
//! with `Mac OS X`: no parser of the user agent alone can tell.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, LazyLock, Mutex,
    },
};

use serde::Serialize;
use serde_json::{Map, Value};
use ua_parser::{device, os, user_agent};

/// uap-core's parsers as static tables (`build.rs`).
mod data {
    include!(concat!(env!("OUT_DIR"), "/uap_core.rs"));
}

/// Distinct user agents the cache keeps; when it is full it starts over.
pub const CACHE_CAPACITY: usize = 4096;

/// Longest user agent [`parse`] reads, in bytes (the doors keep 512
/// characters; a longer one is cut at a character boundary).
pub const MAX_BYTES: usize = 2048;

/// What kind of device sent the user agent (see the module's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Desktop,
    Mobile,
    Tablet,
    Bot,
    Other,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Desktop => "desktop",
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
            Device::Bot => "bot",
            Device::Other => "other",
        }
    }
}

/// A parsed user agent. Versions are uap-core's `major.minor.patch` (as
/// many parts as it found, e.g. `120.0.6099`), `None` when it found none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agent {
    pub browser: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser_version: Option<String>,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub device: Device,
}

impl Agent {
    pub fn is_bot(&self) -> bool {
        self.device == Device::Bot
    }

    /// `{browser, browser_version, os, os_version, device}`, the versions
    /// left out when unknown.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("browser".into(), Value::String(self.browser.clone()));
        if let Some(v) = &self.browser_version {
            map.insert("browser_version".into(), Value::String(v.clone()));
        }
        map.insert("os".into(), Value::String(self.os.clone()));
        if let Some(v) = &self.os_version {
            map.insert("os_version".into(), Value::String(v.clone()));
        }
        map.insert("device".into(), Value::String(self.device.as_str().into()));
        Value::Object(map)
    }
}

/// Parsed once per distinct user agent (bounded cache shared by callers;
/// thread-safe natively, fine on wasm's single thread).
pub fn parse(user_agent: &str) -> Arc<Agent> {
    static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| Mutex::new(Cache::new(CACHE_CAPACITY)));
    let user_agent = cut(user_agent);
    let cache = || CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(agent) = cache().get(user_agent) {
        return agent;
    }
    // Parsed outside the lock: another thread may parse the same agent
    // meanwhile, and both get equal answers.
    MISSES.fetch_add(1, Ordering::Relaxed);
    let agent = Arc::new(parse_uncached(user_agent));
    cache().insert(user_agent, Arc::clone(&agent));
    agent
}

static MISSES: AtomicU64 = AtomicU64::new(0);

/// How many [`parse`] calls so far found no cached agent and parsed one.
pub fn cache_misses() -> u64 {
    MISSES.load(Ordering::Relaxed)
}

/// At most `capacity` agents, evicted by CLOCK (second chance): a hit
/// marks its slot used; when the cache is full, the hand sweeps the slots,
/// clearing marks, and replaces the first one not used since its last
/// sweep. Close to least-recently-used (7.0 % of events parsed against LRU's
/// 7.1 % in a simulation of the bench's mix, "clear when full" 14 %), with
/// no list to keep in order.
struct Cache {
    index: HashMap<Arc<str>, usize>,
    slots: Vec<Slot>,
    hand: usize,
    capacity: usize,
}

struct Slot {
    user_agent: Arc<str>,
    agent: Arc<Agent>,
    used: bool,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            index: HashMap::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            hand: 0,
            capacity,
        }
    }

    fn get(&mut self, user_agent: &str) -> Option<Arc<Agent>> {
        let slot = &mut self.slots[*self.index.get(user_agent)?];
        slot.used = true;
        Some(Arc::clone(&slot.agent))
    }

    fn insert(&mut self, user_agent: &str, agent: Arc<Agent>) {
        if self.index.contains_key(user_agent) {
            return; // another caller parsed it meanwhile
        }
        let user_agent: Arc<str> = user_agent.into();
        let slot = Slot {
            user_agent: Arc::clone(&user_agent),
            agent,
            used: false,
        };
        let at = if self.slots.len() < self.capacity {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            while self.slots[self.hand].used {
                self.slots[self.hand].used = false;
                self.hand = (self.hand + 1) % self.capacity;
            }
            let at = self.hand;
            self.index.remove(&self.slots[at].user_agent);
            self.slots[at] = slot;
            self.hand = (at + 1) % self.capacity;
            at
        };
        self.index.insert(user_agent, at);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

/// [`parse`] without the cache (what a cache miss costs).
pub fn parse_uncached(user_agent: &str) -> Agent {
    let user_agent = cut(user_agent);
    let parsers = parsers();
    let (browser, browser_version) = match parsers.user_agent.extract(user_agent) {
        Some(v) => (family(v.family), version([v.major, v.minor, v.patch])),
        None => (other(), None),
    };
    let (os, os_version) = match parsers.os.extract(user_agent) {
        Some(v) => (
            family(v.os),
            version([v.major.as_deref(), v.minor.as_deref(), v.patch.as_deref()]),
        ),
        None => (other(), None),
    };
    let spider = browser == "Spider"
        || parsers
            .device
            .extract(user_agent)
            .is_some_and(|d| d.device == "Spider");
    let device = classify(user_agent, &os, spider);
    Agent {
        browser,
        browser_version,
        os,
        os_version,
        device,
    }
}

/// Builds the extractors now rather than on the first user agent (~0.2 s
/// natively): for a process to call at start-up, off its request path.
pub fn warm_up() {
    parsers();
}

fn cut(user_agent: &str) -> &str {
    if user_agent.len() <= MAX_BYTES {
        return user_agent;
    }
    let mut end = MAX_BYTES;
    while !user_agent.is_char_boundary(end) {
        end -= 1;
    }
    &user_agent[..end]
}

fn other() -> String {
    "Other".into()
}

fn family(name: Cow<'_, str>) -> String {
    let name = name.trim();
    if name.is_empty() {
        other()
    } else {
        name.to_owned()
    }
}

/// `major[.minor[.patch]]`, as far as the parts go.
fn version(parts: [Option<&str>; 3]) -> Option<String> {
    let mut out = String::new();
    for part in parts {
        match part.map(str::trim).filter(|p| !p.is_empty()) {
            Some(part) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(part);
            }
            None => break,
        }
    }
    (!out.is_empty()).then_some(out)
}

const TV_OR_CONSOLE: [&str; 15] = [
    "smarttv",
    "smart-tv",
    "smart tv",
    "hbbtv",
    "googletv",
    "android tv",
    "appletv",
    "apple tv",
    "crkey",
    "roku",
    "web0s",
    "netcast",
    "playstation",
    "xbox",
    "nintendo",
];

const TV_OS: [&str; 6] = [
    "tvOS",
    "ATV OS X",
    "Chromecast",
    "FireHbbTV",
    "webOS",
    "Roku",
];

const MOBILE_OS: [&str; 17] = [
    "iOS",
    "Android",
    "Windows Phone",
    "Windows Mobile",
    "BlackBerry OS",
    "Symbian OS",
    "Symbian^3",
    "Symbian^3 Anna",
    "Symbian^3 Belle",
    "Nokia Series 40",
    "Nokia Series 30 Plus",
    "KaiOS",
    "Firefox OS",
    "Brew MP",
    "Bada",
    "Sailfish",
    "MeeGo",
];

const DESKTOP_OS: [&str; 27] = [
    "Windows",
    "Mac OS X",
    "Mac OS",
    "Linux",
    "Chrome OS",
    "Ubuntu",
    "Kubuntu",
    "Lubuntu",
    "Debian",
    "debian",
    "Fedora",
    "Red Hat",
    "CentOS",
    "openSUSE",
    "SUSE",
    "Arch Linux",
    "Gentoo",
    "Slackware",
    "Mageia",
    "Mandriva",
    "Linux Mint",
    "PCLinuxOS",
    "Puppy",
    "FreeBSD",
    "OpenBSD",
    "NetBSD",
    "Solaris",
];

fn classify(ua: &str, os: &str, spider: bool) -> Device {
    if spider {
        return Device::Bot;
    }
    let lower = ua.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    if TV_OS.contains(&os) || TV_OR_CONSOLE.iter().any(|marker| has(marker)) {
        return Device::Other;
    }
    let browser = lower.starts_with("mozilla/") || lower.starts_with("opera/");
    let android = os == "Android" || has("android");
    if has("ipad")
        || has("kindle")
        || has("silk/")
        || has("playbook")
        || os == "BlackBerry Tablet OS"
        || (has("tablet") && !has("tablet pc"))
        || (android && browser && !has("mobile"))
    {
        return Device::Tablet;
    }
    if has("iphone")
        || has("ipod")
        || android
        || has("windows phone")
        || has("windows ce")
        || has("iemobile")
        || has("mobi")
        || MOBILE_OS.contains(&os)
    {
        return Device::Mobile;
    }
    if browser && DESKTOP_OS.contains(&os) {
        return Device::Desktop;
    }
    Device::Other
}

struct Parsers {
    user_agent: user_agent::Extractor<'static>,
    os: os::Extractor<'static>,
    device: device::Extractor<'static>,
}

fn parsers() -> &'static Parsers {
    static PARSERS: LazyLock<Parsers> = LazyLock::new(|| {
        build().unwrap_or_else(|e| panic!("uap-core's regexes.yaml does not build: {e}"))
    });
    &PARSERS
}

fn s(value: Option<&'static str>) -> Option<Cow<'static, str>> {
    value.map(Cow::Borrowed)
}

fn build() -> Result<Parsers, ua_parser::Error> {
    let user_agent = user_agent::Builder::new()
        .push_all(
            data::USER_AGENT
                .iter()
                .map(|[regex, family, v1, v2, v3, v4]| user_agent::Parser {
                    regex: Cow::Borrowed(regex.unwrap_or_default()),
                    family_replacement: s(*family),
                    v1_replacement: s(*v1),
                    v2_replacement: s(*v2),
                    v3_replacement: s(*v3),
                    v4_replacement: s(*v4),
                }),
        )?
        .build()?;
    let os = os::Builder::new()
        .push_all(
            data::OS
                .iter()
                .map(|[regex, os, v1, v2, v3, v4]| os::Parser {
                    regex: Cow::Borrowed(regex.unwrap_or_default()),
                    os_replacement: s(*os),
                    os_v1_replacement: s(*v1),
                    os_v2_replacement: s(*v2),
                    os_v3_replacement: s(*v3),
                    os_v4_replacement: s(*v4),
                }),
        )?
        .build()?;
    let device = device::Builder::new()
        .push_all(
            data::DEVICE
                .iter()
                .map(|[regex, flag, device, brand, model]| device::Parser {
                    regex: Cow::Borrowed(regex.unwrap_or_default()),
                    regex_flag: (*flag == Some("i")).then_some(device::Flag::IgnoreCase),
                    device_replacement: s(*device),
                    brand_replacement: s(*brand),
                    model_replacement: s(*model),
                }),
        )?
        .build()?;
    Ok(Parsers {
        user_agent,
        os,
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_keeps_the_agents_in_use() {
        let agent = Arc::new(parse_uncached(""));
        let mut cache = Cache::new(3);
        for ua in ["a", "b", "c"] {
            cache.insert(ua, Arc::clone(&agent));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get("a").is_some()); // in use
        cache.insert("d", Arc::clone(&agent));
        assert_eq!(cache.len(), 3);
        assert!(cache.get("a").is_some(), "in use: kept");
        assert!(cache.get("b").is_none(), "unused: replaced");
        assert!(cache.get("c").is_some() && cache.get("d").is_some());
        cache.insert("d", Arc::clone(&agent)); // twice: one entry
        assert_eq!(cache.len(), 3);
        for i in 0..1000 {
            cache.insert(&format!("x{i}"), Arc::clone(&agent));
            assert_eq!(cache.len(), 3);
            assert_eq!(cache.slots.len(), 3);
            if i % 2 == 0 {
                assert!(cache.get("a").is_some(), "used between sweeps: kept");
            }
        }
        let mut one = Cache::new(1);
        one.insert("a", Arc::clone(&agent));
        assert!(one.get("a").is_some());
        one.insert("b", Arc::clone(&agent));
        assert!(one.get("a").is_none() && one.get("b").is_some());
    }

    #[test]
    fn versions_stop_at_the_first_missing_part() {
        assert_eq!(
            version([Some("1"), Some("2"), Some("3")]).as_deref(),
            Some("1.2.3")
        );
        assert_eq!(version([Some("1"), None, Some("3")]).as_deref(), Some("1"));
        assert_eq!(version([Some(" "), Some("2"), None]), None);
        assert_eq!(version([None, None, None]), None);
    }

    #[test]
    fn a_long_user_agent_is_cut_at_a_character_boundary() {
        let ua = format!("a{}", "é".repeat(MAX_BYTES));
        let cut = cut(&ua);
        assert!(cut.len() <= MAX_BYTES && cut.len() >= MAX_BYTES - 1);
        assert!(ua.starts_with(cut));
    }
}
