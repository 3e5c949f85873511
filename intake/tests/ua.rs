//! `intake::ua` on real user agents: uap-core's families and versions, and
//! the device class (see the rules in intake/src/ua.rs).

use std::{sync::Arc, time::Instant};

use intake::ua::{parse, parse_uncached, Agent, Device};
use serde_json::json;

fn agent(browser: &str, bv: Option<&str>, os: &str, ov: Option<&str>, device: Device) -> Agent {
    Agent {
        browser: browser.into(),
        browser_version: bv.map(Into::into),
        os: os.into(),
        os_version: ov.map(Into::into),
        device,
    }
}

#[track_caller]
fn check(ua: &str, expected: Agent) {
    assert_eq!(*parse(ua), expected, "{ua}");
}

#[test]
fn chrome_on_windows() {
    check(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.109 Safari/537.36",
        agent("Chrome", Some("120.0.6099"), "Windows", Some("10"), Device::Desktop),
    );
    check(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
        agent("Edge", Some("120.0.2210"), "Windows", Some("10"), Device::Desktop),
    );
}

#[test]
fn safari_on_iphone_and_ipad() {
    check(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1",
        agent("Mobile Safari", Some("17.1.2"), "iOS", Some("17.1.2"), Device::Mobile),
    );
    check(
        "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
        agent("Mobile Safari", Some("16.6"), "iOS", Some("16.6"), Device::Tablet),
    );
    check(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
        agent("Chrome Mobile iOS", Some("120.0.6099"), "iOS", Some("17.1"), Device::Mobile),
    );
}

#[test]
fn safari_on_a_mac() {
    check(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
        agent("Safari", Some("17.1"), "Mac OS X", Some("10.15.7"), Device::Desktop),
    );
}

#[test]
fn firefox_on_linux() {
    check(
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        agent("Firefox", Some("121.0"), "Linux", None, Device::Desktop),
    );
    check(
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0",
        agent("Firefox", Some("115.0"), "Ubuntu", None, Device::Desktop),
    );
    check(
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        agent("Chrome", Some("120.0.0"), "Chrome OS", Some("14541.0.0"), Device::Desktop),
    );
}

#[test]
fn android_phones() {
    check(
        "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
        agent("Samsung Internet", Some("23.0"), "Android", Some("13"), Device::Mobile),
    );
    check(
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
        agent("Chrome Mobile", Some("120.0.0"), "Android", Some("10"), Device::Mobile),
    );
    check(
        "Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0",
        agent(
            "Firefox Mobile",
            Some("121.0"),
            "Android",
            Some("14"),
            Device::Mobile,
        ),
    );
    // uap-core's catch-all spider pattern has `bot` in it; the phone brand
    // CUBOT is caught by a device parser before it.
    check(
        "Mozilla/5.0 (Linux; Android 12; CUBOT X50) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
        agent("Chrome Mobile", Some("120.0.0"), "Android", Some("12"), Device::Mobile),
    );
    // An Android app's HTTP stack, no browser: no tablet marker either way.
    check(
        "Dalvik/2.1.0 (Linux; U; Android 13; Pixel 7 Build/TQ3A.230901.001)",
        agent("Android", Some("13"), "Android", Some("13"), Device::Mobile),
    );
}

#[test]
fn android_tablets() {
    check(
        "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Safari/537.36",
        agent("Chrome", Some("120.0.6099"), "Android", Some("13"), Device::Tablet),
    );
    check(
        "Mozilla/5.0 (Android 14; Tablet; rv:121.0) Gecko/121.0 Firefox/121.0",
        agent(
            "Firefox Mobile",
            Some("121.0"),
            "Android",
            Some("14"),
            Device::Tablet,
        ),
    );
    check(
        "Mozilla/5.0 (Linux; U; Android 4.0.3; en-us; KFTT Build/IML74K) AppleWebKit/535.19 (KHTML, like Gecko) Silk/3.68 Safari/535.19 Silk-Accelerated=true",
        agent("Amazon Silk", Some("3.68"), "Android", Some("4.0.3"), Device::Tablet),
    );
}

#[test]
fn bots() {
    check(
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        agent("Googlebot", Some("2.1"), "Other", None, Device::Bot),
    );
    check(
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.199 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        agent("Googlebot", Some("2.1"), "Android", Some("6.0.1"), Device::Bot),
    );
    check(
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        agent("bingbot", Some("2.0"), "Other", None, Device::Bot),
    );
    check(
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
        agent("bingbot", Some("2.0"), "Other", None, Device::Bot),
    );
    check(
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        agent("FacebookBot", Some("1.1"), "Other", None, Device::Bot),
    );
    assert!(
        parse("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)").is_bot()
    );
}

#[test]
fn tools_are_other_unless_uap_core_calls_them_spiders() {
    check(
        "curl/8.4.0",
        agent("curl", Some("8.4.0"), "Other", None, Device::Other),
    );
    check(
        "Wget/1.12 (linux-gnu)",
        agent("Wget", Some("1.12"), "Linux", None, Device::Other),
    );
    check(
        "python-requests/2.31.0",
        agent(
            "Python Requests",
            Some("2.31"),
            "Other",
            None,
            Device::Other,
        ),
    );
    check(
        "Go-http-client/1.1",
        agent("Go-http-client", Some("1.1"), "Other", None, Device::Other),
    );
    // On uap-core's spider list.
    check(
        "Python-urllib/3.11",
        agent("Python-urllib", Some("3.11"), "Other", None, Device::Bot),
    );
    assert!(!parse("curl/8.4.0").is_bot());
}

#[test]
fn tvs_and_consoles_are_other() {
    check(
        "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/538.1 (KHTML, like Gecko) Version/6.0 TV Safari/538.1",
        agent("Safari", Some("6.0"), "Tizen", Some("6.0"), Device::Other),
    );
    check(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19041",
        agent("Edge", Some("18.19041"), "Windows", Some("10"), Device::Other),
    );
}

#[test]
fn an_empty_user_agent() {
    check("", agent("Other", None, "Other", None, Device::Other));
    check("   ", agent("Other", None, "Other", None, Device::Other));
}

#[test]
fn a_512_character_user_agent_is_parsed_in_bounded_time() {
    // A real in-app browser's agent with more tokens appended, cut where
    // the door cuts it.
    let mut long = "Mozilla/5.0 (Linux; Android 13; SM-S911B Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.144 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/443.0.0.34.118;]".to_string();
    while long.len() < 512 {
        long.push_str(" IABMV/1");
    }
    long.truncate(512);
    // Pathological ones: long runs of the characters the patterns repeat.
    let runs = [
        long.clone(),
        format!("Mozilla/5.0 ({}", ";".repeat(600)),
        format!("Mozilla/5.0 (Linux; Android {}", "1.".repeat(300)),
        "a".repeat(600),
        "(iPhone; ".repeat(60),
        format!("Mozilla/5.0 (compatible; {}", "Bot-Mobile/1 ".repeat(50)),
        "é".repeat(600),
    ]
    .map(|ua| ua.chars().take(512).collect::<String>());
    parse(""); // builds the extractors
    for ua in &runs {
        assert_eq!(ua.chars().count(), 512);
        let started = Instant::now();
        let agent = parse_uncached(ua);
        // Linear-time regexes: milliseconds even unoptimized; a second
        // would mean backtracking.
        assert!(
            started.elapsed().as_secs_f64() < 1.0,
            "{ua}: {:?}",
            started.elapsed()
        );
        assert!(!agent.browser.is_empty() && !agent.os.is_empty());
    }
    check(
        &long,
        agent(
            "Facebook",
            Some("443.0.0"),
            "Android",
            Some("13"),
            Device::Mobile,
        ),
    );
    // Longer than any door keeps: read up to intake::ua::MAX_BYTES.
    assert_eq!(parse(&"x".repeat(100_000)).device, Device::Other);
}

#[test]
fn a_user_agent_is_parsed_once() {
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
    assert!(Arc::ptr_eq(&parse(ua), &parse(ua)));
}

#[test]
fn json_leaves_unknown_versions_out() {
    let chrome = parse("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.109 Safari/537.36");
    let expected = json!({
        "browser": "Chrome", "browser_version": "120.0.6099",
        "os": "Windows", "os_version": "10", "device": "desktop"
    });
    assert_eq!(chrome.to_json(), expected);
    assert_eq!(serde_json::to_value(&*chrome).unwrap(), expected);
    let empty = json!({"browser": "Other", "os": "Other", "device": "other"});
    assert_eq!(parse("").to_json(), empty);
    assert_eq!(serde_json::to_value(&*parse("")).unwrap(), empty);
    assert_eq!(serde_json::to_value(Device::Bot).unwrap(), json!("bot"));
}
