//! The request header contract (reference §1.2) and inbound-header merging.
//!
//! A [`HeaderSet`] keeps keys exactly as the original stored them, because that spelling is what
//! the error document shows (`KEDA-Topic`), while the wire form is derived from it.

use crate::config::CommonConfig;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Which header names a connector sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFamily {
    /// `KEDA-Topic`, `KEDA-Response-Topic`, `KEDA-Error-Topic`, `Content-Type`,
    /// `KEDA-Source-Name`: Kafka, RabbitMQ, SQS, Kinesis, GCP Pub/Sub, Redis.
    Keda,
    /// `Topic`, `RespTopic`, `ErrorTopic`, `Content-Type`, `Source-Name`: the NATS connectors.
    Nats,
}

/// An ordered multimap of header keys (as stored) to values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderSet {
    entries: Vec<(String, Vec<String>)>,
}

impl HeaderSet {
    /// The connector's own headers, sent with every request — even the empty ones, as upstream.
    pub fn connector_defaults(family: HeaderFamily, common: &CommonConfig) -> Self {
        let resp = common.response_topic.clone().unwrap_or_default();
        let err = common.error_topic.clone().unwrap_or_default();
        let pairs: [(&str, String); 5] = match family {
            HeaderFamily::Keda => [
                ("KEDA-Topic", common.topic.clone()),
                ("KEDA-Response-Topic", resp),
                ("KEDA-Error-Topic", err),
                ("Content-Type", common.content_type.clone()),
                ("KEDA-Source-Name", common.source_name.clone()),
            ],
            HeaderFamily::Nats => [
                ("Topic", common.topic.clone()),
                ("RespTopic", resp),
                ("ErrorTopic", err),
                ("Content-Type", common.content_type.clone()),
                ("Source-Name", common.source_name.clone()),
            ],
        };
        Self {
            entries: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), vec![v]))
                .collect(),
        }
    }

    /// Sets `key` to the single `value`, replacing any key equal to it case-insensitively (the
    /// stored spelling of an existing key is kept). A new key is stored in Go's canonical form,
    /// as the original stored broker headers. Returns `false`, changing nothing, when the name or
    /// value could not be sent over HTTP (control characters, illegal name characters).
    pub fn set(&mut self, key: &str, value: &str) -> bool {
        if HeaderName::from_bytes(key.as_bytes()).is_err() || HeaderValue::from_str(value).is_err()
        {
            return false;
        }
        match self
            .entries
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            Some((_, values)) => *values = vec![value.to_owned()],
            None => self
                .entries
                .push((canonical_key(key), vec![value.to_owned()])),
        }
        true
    }

    /// Applies inbound message headers over these: each replaces the header of the same name
    /// (case-insensitively); a repeated inbound name keeps its last value. Headers that cannot
    /// travel over HTTP are skipped; the count of skipped ones is returned.
    pub fn merge<'a>(&mut self, inbound: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
        inbound.into_iter().filter(|(k, v)| !self.set(k, v)).count()
    }

    /// Entries sorted by key bytes, as Go's JSON encoder orders map keys.
    pub fn sorted(&self) -> Vec<(&str, &[String])> {
        let mut v: Vec<(&str, &[String])> = self
            .entries
            .iter()
            .map(|(k, vs)| (k.as_str(), vs.as_slice()))
            .collect();
        v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        v
    }

    /// The stored keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Removes `key` (case-insensitively).
    pub fn remove(&mut self, key: &str) {
        self.entries.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
    }

    /// The first value of `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, vs)| vs.first().map(String::as_str))
    }

    /// The wire form. Every entry was validated on the way in.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.entries.len());
        for (k, vs) in &self.entries {
            let (Ok(name), values) = (HeaderName::from_bytes(k.as_bytes()), vs) else {
                continue;
            };
            for v in values {
                if let Ok(value) = HeaderValue::from_str(v) {
                    map.append(name.clone(), value);
                }
            }
        }
        map
    }
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: upper-case the first letter and every letter after
/// `-`, lower-case the rest; keys with characters outside the token set are left as they are.
pub fn canonical_key(key: &str) -> String {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !key.bytes().all(token) {
        return key.to_owned();
    }
    let mut upper = true;
    key.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn common() -> CommonConfig {
        Settings::from_env(&[
            ("TOPIC", "golden-in"),
            ("HTTP_ENDPOINT", "http://127.0.0.1:1/x"),
            ("MAX_RETRIES", "1"),
            ("CONTENT_TYPE", "application/json"),
            ("RESPONSE_TOPIC", "golden-resp"),
        ])
        .unwrap()
        .common
    }

    #[test]
    fn canonical() {
        assert_eq!(canonical_key("traceparent"), "Traceparent");
        assert_eq!(canonical_key("x-lower-case"), "X-Lower-Case");
        assert_eq!(canonical_key("KEDA-Topic"), "Keda-Topic");
        assert_eq!(canonical_key("bad key"), "bad key");
    }

    #[test]
    fn defaults_include_empty_values() {
        let h = HeaderSet::connector_defaults(HeaderFamily::Keda, &common());
        assert_eq!(h.get("keda-error-topic"), Some(""));
        let keys: Vec<&str> = h.sorted().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "Content-Type",
                "KEDA-Error-Topic",
                "KEDA-Response-Topic",
                "KEDA-Source-Name",
                "KEDA-Topic"
            ]
        );
        let n = HeaderSet::connector_defaults(HeaderFamily::Nats, &common());
        assert_eq!(n.get("RespTopic"), Some("golden-resp"));
    }

    #[test]
    fn inbound_replaces_case_insensitively_last_wins() {
        let mut h = HeaderSet::connector_defaults(HeaderFamily::Keda, &common());
        let skipped = h.merge([
            ("KEDA-Topic", "rec-topic"),
            ("content-type", "text/csv"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("bad", "line\nbreak"),
        ]);
        assert_eq!(skipped, 1);
        assert_eq!(h.get("KEDA-Topic"), Some("rec-topic"));
        assert_eq!(h.get("Content-Type"), Some("text/csv"));
        let sorted = h.sorted();
        assert_eq!(
            sorted
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("keda-topic"))
                .count(),
            1
        );
        assert!(sorted.contains(&("X-Multi", &["b".to_owned()][..])));
        let wire = h.to_header_map();
        assert_eq!(wire.get_all("keda-topic").iter().count(), 1);
        assert_eq!(wire.get_all("x-multi").iter().count(), 1);
    }
}
