//! Property tests: environment parsing (Go's integer and duration syntax, ranges, secrets never
//! echoed), header merging, and the error-document encoder, over generated input.

use connector_core::config::{Secret, Vars, parse_go_duration, parse_go_int};
use connector_core::error_doc::{ErrorDocument, Extras};
use connector_core::headers::{HeaderFamily, HeaderSet};
use connector_core::{ConfigError, Settings};
use proptest::prelude::*;
use std::time::Duration;

/// Inserts single underscores between digits (never first, last or doubled), as Go allows.
fn underscored(digits: &str, at: &[usize]) -> String {
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && at.contains(&i) {
            out.push('_');
        }
        out.push(c);
    }
    out
}

/// How Go's decoder reads bytes: each byte that does not start a valid UTF-8 sequence becomes
/// one U+FFFD (Rust's `from_utf8_lossy` folds a broken sequence into one instead).
fn go_lossy(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (1..=4)
            .filter(|n| i + n <= bytes.len())
            .find_map(|n| std::str::from_utf8(&bytes[i..i + n]).ok().map(|s| (s, n)));
        match decoded {
            Some((s, n)) => {
                out.push_str(s);
                i += n;
            }
            None => {
                out.push('\u{fffd}');
                i += 1;
            }
        }
    }
    out
}

fn base_env() -> Vec<(String, String)> {
    [
        ("TOPIC", "in"),
        ("HTTP_ENDPOINT", "http://127.0.0.1:1/fn"),
        ("MAX_RETRIES", "3"),
        ("CONTENT_TYPE", "text/plain"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

fn with(mut env: Vec<(String, String)>, k: &str, v: &str) -> Vec<(String, String)> {
    env.retain(|(key, _)| key != k);
    env.push((k.to_owned(), v.to_owned()));
    env
}

proptest! {
    // No regression files written into the tree by CI runs; a failure prints its minimal input.
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn go_integers_in_every_base(n in any::<i64>(), at in prop::collection::vec(1usize..20, 0..3)) {
        let sign = if n < 0 { "-" } else { "" };
        let m = n.unsigned_abs();
        let decimal = underscored(&m.to_string(), &at);
        // A leading zero means octal in Go, so decimal never starts with one (except "0").
        prop_assert_eq!(parse_go_int(&format!("{sign}{decimal}")), Some(n));
        for (prefix, digits) in [
            ("0x", format!("{m:x}")),
            ("0X", format!("{m:X}")),
            ("0o", format!("{m:o}")),
            ("0b", format!("{m:b}")),
        ] {
            let text = format!("{sign}{prefix}{}", underscored(&digits, &at));
            prop_assert_eq!(parse_go_int(&text), Some(n), "{}", text);
        }
        if m != 0 {
            prop_assert_eq!(parse_go_int(&format!("{sign}0{m:o}")), Some(n));
        }
    }

    #[test]
    fn go_integers_reject_what_go_rejects(s in "[-+]?[0-9a-fA-FxXoObB_]{0,12}") {
        // Whatever is accepted must be a well-formed Go literal: no doubled, leading or
        // trailing underscores, at least one digit.
        if let Some(v) = parse_go_int(&s) {
            let body = s.trim_start_matches(['-', '+']);
            prop_assert!(!body.contains("__") && !body.ends_with('_'), "{} -> {}", s, v);
            prop_assert!(body.chars().any(|c| c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn overflow_is_refused(extra in 1u64..1000) {
        let too_big = (i64::MAX as u128 + u128::from(extra)).to_string();
        prop_assert_eq!(parse_go_int(&too_big), None);
        let too_small = format!("-{}", i64::MAX as u128 + 1 + u128::from(extra));
        prop_assert_eq!(parse_go_int(&too_small), None);
    }

    #[test]
    fn go_durations_add_up(
        h in 0u64..100, m in 0u64..100, s in 0u64..100,
        ms in 0u64..1000, us in 0u64..1000, ns in 0u64..1000,
        mask in 1u8..64,
    ) {
        let parts = [(h, "h", 3_600_000_000_000u64), (m, "m", 60_000_000_000), (s, "s", 1_000_000_000),
                     (ms, "ms", 1_000_000), (us, "us", 1_000), (ns, "ns", 1)];
        let mut text = String::new();
        let mut total = 0u64;
        for (i, (v, unit, scale)) in parts.iter().enumerate() {
            if mask & (1 << i) != 0 {
                text.push_str(&format!("{v}{unit}"));
                total += v * scale;
            }
        }
        prop_assert_eq!(parse_go_duration(&text), Some(Duration::from_nanos(total)), "{}", text);
        prop_assert_eq!(parse_go_duration(&format!("-{text}")), None);
    }

    #[test]
    fn duration_parser_never_panics(s in "\\PC{0,16}") {
        let _ = parse_go_duration(&s);
        let _ = parse_go_int(&s);
    }

    #[test]
    fn ranged_integers_are_in_range_or_name_the_variable(value in "\\PC{0,8}|-?[0-9]{1,6}") {
        let env = [("MAX_IN_FLIGHT", value.as_str())];
        match Vars::new(&env).int_in_range("MAX_IN_FLIGHT", 10, 1, 1000) {
            Ok(v) => prop_assert!((1..=1000).contains(&v)),
            Err(e) => {
                prop_assert_eq!(e.var(), "MAX_IN_FLIGHT");
                prop_assert!(e.to_string().contains("MAX_IN_FLIGHT"));
                prop_assert_eq!(e.to_string().lines().count(), 1);
            }
        }
    }

    #[test]
    fn a_secret_never_appears_in_an_error_or_debug(
        secret in "[A-Za-z0-9+/=_-]{12,40}",
        var in prop::sample::select(vec!["MAX_RETRIES", "HTTP_ENDPOINT", "DRAIN_TIMEOUT", "RETRY_ON", "ADMIN_ADDR"]),
        bad in prop::sample::select(vec!["", "x", "-1", "http//", "99999999999999999999"]),
    ) {
        // The secret is set, another variable is bad: the one-line error must not carry it.
        let env = with(with(base_env(), "FISSION_INTERNAL_AUTH_SECRET", &secret), var, bad);
        let err: Result<Settings, ConfigError> = Settings::from_env(&env);
        let shown = match &err {
            Err(e) => format!("{e}\n{e:?}"),
            Ok(settings) => format!("{settings:?}"),
        };
        prop_assert!(!shown.contains(&secret), "secret shown: {}", shown);
        let debug = format!("{:?}", Secret::new(secret.clone()));
        prop_assert!(!debug.contains(&secret));
    }

    #[test]
    fn inbound_headers_replace_defaults_case_insensitively_last_wins(
        inbound in prop::collection::vec(
            (prop::sample::select(vec!["keda-topic", "KEDA-TOPIC", "Content-Type", "content-type", "X-Trace", "x-trace", "Bad Name", "X-Ctl"]),
             "[ -~]{0,8}|\\PC{0,3}|\u{7f}|\n"),
            0..12),
    ) {
        let settings = Settings::from_env(&base_env()).unwrap();
        let defaults = HeaderSet::connector_defaults(HeaderFamily::Keda, &settings.common);
        let mut merged = defaults.clone();
        let pairs: Vec<(&str, &str)> = inbound.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let skipped = merged.merge(pairs.iter().copied());

        let sendable = |k: &str, v: &str| {
            http::HeaderName::from_bytes(k.as_bytes()).is_ok() && http::HeaderValue::from_str(v).is_ok()
        };
        prop_assert_eq!(skipped, pairs.iter().filter(|(k, v)| !sendable(k, v)).count());
        for name in ["KEDA-Topic", "Content-Type", "X-Trace", "KEDA-Source-Name"] {
            let last = pairs.iter().rev().find(|(k, v)| k.eq_ignore_ascii_case(name) && sendable(k, v));
            let expected = last.map(|(_, v)| *v).or_else(|| defaults.get(name));
            prop_assert_eq!(merged.get(name), expected, "{}", name);
        }
        // One entry per name, whatever the spelling, and the wire form carries all of them.
        let sorted = merged.sorted();
        let mut lower: Vec<String> = sorted.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
        lower.dedup();
        prop_assert_eq!(lower.len(), sorted.len());
        prop_assert_eq!(merged.to_header_map().len(), sorted.iter().map(|(_, v)| v.len()).sum::<usize>());
    }

    #[test]
    fn error_documents_are_json_that_says_what_happened(
        message in prop::collection::vec(any::<u8>(), 0..64),
        body in prop::collection::vec(any::<u8>(), 0..64),
        status in prop::option::of(100u16..600),
        source in "\\PC{0,10}",
        endpoint in "http://[a-z<>&]{1,8}/[ -~]{0,8}",
        extras in any::<bool>(),
    ) {
        let settings = Settings::from_env(&base_env()).unwrap();
        let headers = HeaderSet::connector_defaults(HeaderFamily::Keda, &settings.common);
        let doc = ErrorDocument {
            message: &message,
            http_endpoint: &endpoint,
            headers: &headers,
            response_body: &body,
            status,
            source_name: &source,
            extras: extras.then_some(Extras { attempts: 4, last_error: None }),
            reason: None,
        };
        let bytes = doc.encode();
        // Go's HTML-safe escaping: no raw <, > or & anywhere.
        prop_assert!(!bytes.iter().any(|b| b"<>&".contains(b)));
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("valid JSON");
        let request = &v["FunctionHTTPRequest"];
        prop_assert_eq!(request["Message"].as_str().unwrap(), go_lossy(&message));
        prop_assert_eq!(request["HTTPEndpoint"].as_str().unwrap(), endpoint.as_str());
        prop_assert_eq!(request["Headers"]["KEDA-Topic"][0].as_str(), Some("in"));
        let response = &v["FunctionHTTPResponse"];
        prop_assert_eq!(response["ResponseBody"].as_str().unwrap(), go_lossy(&body));
        prop_assert_eq!(response["StatusCode"].as_u64(), Some(u64::from(status.unwrap_or(500))));
        prop_assert_eq!(response["ErrorString"].as_str().unwrap(), doc.error_string());
        // The original's fields first, in its order; ours only with extras.
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        prop_assert_eq!(keys.len(), if extras { 3 } else { 2 });
        if extras {
            let details = &v["ConnectorDetails"];
            prop_assert_eq!(details["Attempts"].as_u64(), Some(4));
            // Non-UTF-8 payloads stay recoverable byte for byte.
            if std::str::from_utf8(&message).is_err() {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(details["MessageBase64"].as_str().unwrap())
                    .unwrap();
                prop_assert_eq!(raw, message.clone());
            } else {
                prop_assert!(details.get("MessageBase64").is_none());
            }
        }
    }
}
