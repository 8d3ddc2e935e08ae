//! `HTTP_FORMAT=cloudevents`: every call is a CloudEvent in the HTTP binding's *binary content
//! mode* (CloudEvents 1.0: the payload is the body, the attributes are `ce-` headers), so a
//! function written for Knative Eventing can be fed by these connectors. Off by default: the
//! original sent plain POSTs, and so do we unless asked (docs/configuration.md, "CloudEvents").
//!
//! A message that already is a CloudEvent is passed on as one, not wrapped:
//! - binary mode on the broker: its attributes arrive as message headers under the prefix of that
//!   broker's binding (`ce_` for Kafka, `cloudEvents:` or `cloudEvents_` for AMQP, `ce-`
//!   elsewhere) and become `ce-` headers, unchanged;
//! - structured mode: a body that is a JSON CloudEvent (or comes with an
//!   `application/cloudevents…` content type) goes as it is, with that content type and no
//!   `ce-` headers, as the HTTP binding's structured mode.

use crate::config::{ConfigError, Vars};
use crate::dispatch::Message;
use crate::headers::HeaderSet;

/// The CloudEvents version written.
pub const SPEC_VERSION: &str = "1.0";

/// The content type of a structured-mode JSON event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// What `HTTP_FORMAT=cloudevents` and its companions say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEventsSettings {
    /// `CLOUDEVENTS_SOURCE`: `ce-source` of the events the connector makes.
    pub source: String,
    /// `CLOUDEVENTS_TYPE`: their `ce-type`.
    pub event_type: String,
}

impl CloudEventsSettings {
    /// `None` unless `HTTP_FORMAT=cloudevents`. The default source is `/<SOURCE_NAME>/<TOPIC>`
    /// (percent-encoded), the default type `dev.keda.connector.message`.
    pub fn from_vars(
        vars: &Vars<'_>,
        source_name: &str,
        topic: &str,
    ) -> Result<Option<Self>, ConfigError> {
        let on = vars.choice(
            "HTTP_FORMAT",
            false,
            &[("original", false), ("cloudevents", true)],
        )?;
        let companions = ["CLOUDEVENTS_SOURCE", "CLOUDEVENTS_TYPE"];
        if !on {
            if let Some(var) = companions
                .into_iter()
                .find(|v| vars.optional_trimmed(v).is_some())
            {
                return Err(ConfigError::conflict(
                    var,
                    "is set but HTTP_FORMAT is not cloudevents",
                ));
            }
            return Ok(None);
        }
        let segment = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let header_text = |var: &str, default: String| match vars.optional_trimmed(var) {
            None => Ok(default),
            Some(v) if http::HeaderValue::from_str(&v).is_ok() => Ok(v),
            Some(v) => Err(ConfigError::invalid(
                var,
                "text that can be an HTTP header value",
                &v,
            )),
        };
        Ok(Some(Self {
            source: header_text(
                "CLOUDEVENTS_SOURCE",
                format!("/{}/{}", segment(source_name), segment(topic)),
            )?,
            event_type: header_text("CLOUDEVENTS_TYPE", "dev.keda.connector.message".to_owned())?,
        }))
    }

    /// Makes `h` (the request's headers, the message's own already merged in) describe
    /// `message` as a CloudEvent. `id` is the message's stable id where the broker has one.
    pub fn apply(&self, h: &mut HeaderSet, message: &Message, id: Option<&str>) {
        if is_structured(h, &message.payload) {
            h.set("Content-Type", STRUCTURED_CONTENT_TYPE);
            return;
        }
        // Attributes the message brought under its broker's prefix become `ce-` headers. They
        // are read from the message, not from `h`: an AMQP name such as `cloudEvents:id` is no
        // HTTP header name and was not merged; the ones that were (`ce_id`) give way.
        let carried: Vec<(String, &str)> = message
            .headers
            .iter()
            .filter_map(|(k, v)| Some((format!("ce-{}", attribute_name(k)?), v.as_str())))
            .collect();
        let merged: Vec<String> = h
            .keys()
            .filter(|k| attribute_name(k).is_some())
            .map(str::to_owned)
            .collect();
        for k in merged {
            h.remove(&k);
        }
        for (a, v) in &carried {
            h.set(a, v);
        }
        let is_event = carried.iter().any(|(a, _)| a == "ce-specversion");
        if is_event {
            return;
        }
        let id = match id {
            Some(id) => id.to_owned(),
            // Unique rather than derived from the payload: two equal payloads on a list are
            // two events.
            None => unique_id(),
        };
        let time = message
            .published_at
            .unwrap_or_else(std::time::SystemTime::now);
        let time = rfc3339_micros(time);
        h.set("ce-specversion", SPEC_VERSION);
        h.set("ce-id", &id);
        h.set("ce-source", &self.source);
        h.set("ce-type", &self.event_type);
        h.set("ce-time", &time);
        // The key says what the event is about, where the broker has one; a key that cannot
        // be a header value is left out (`set` refuses it).
        if let Some(key) = message
            .key
            .as_ref()
            .and_then(|k| std::str::from_utf8(k).ok())
        {
            h.set("ce-subject", key);
        }
    }
}

/// 128 bits in hex, different for every call in this process and across processes: the
/// standard library's randomly keyed hasher over a counter (no random-number crate for this;
/// the images have a size budget, docs/deployment.md).
fn unique_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let keyed = RandomState::new();
    format!("{:016x}{:016x}", keyed.hash_one(n), keyed.hash_one(!n))
}

/// RFC 3339 in UTC with microseconds (`2023-11-14T22:13:20.000000Z`), the form of `ce-time`.
/// The calendar date from the day count is H. Hinnant's `civil_from_days`.
fn rfc3339_micros(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (hour, minute, second) = (secs % 86_400 / 3_600, secs % 3_600 / 60, secs % 60);
    let z = i64::try_from(secs / 86_400).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:06}Z",
        since.subsec_micros()
    )
}

/// The CloudEvents attribute a message header carries under a binding's prefix, lower-cased.
fn attribute_name(header: &str) -> Option<String> {
    let lower = header.to_ascii_lowercase();
    ["ce-", "ce_", "cloudevents:", "cloudevents_"]
        .iter()
        .find_map(|p| lower.strip_prefix(p))
        .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_owned)
}

/// Whether the message is a structured-mode event: its content type says so, or its body is a
/// JSON object with the required attributes.
fn is_structured(h: &HeaderSet, payload: &[u8]) -> bool {
    let content_type = h
        .get("Content-Type")
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if content_type.starts_with("application/cloudevents") {
        return true;
    }
    // Cheap checks first: most payloads are not JSON objects naming a specversion.
    let starts_as_object = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !starts_as_object || !payload.windows(13).any(|w| w == b"\"specversion\"") {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(payload).is_ok_and(|v| {
        ["specversion", "id", "source", "type"]
            .iter()
            .all(|a| v.get(a).is_some_and(serde_json::Value::is_string))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_and_ids_unique() {
        let at = |s: u64, us: u64| {
            rfc3339_micros(
                std::time::UNIX_EPOCH + std::time::Duration::from_micros(s * 1_000_000 + us),
            )
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_700_000_000, 0), "2023-11-14T22:13:20.000000Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        let (a, b) = (unique_id(), unique_id());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn binding_prefixes_name_attributes() {
        assert_eq!(attribute_name("ce_id").as_deref(), Some("id"));
        assert_eq!(attribute_name("Ce-Source").as_deref(), Some("source"));
        assert_eq!(attribute_name("cloudEvents:type").as_deref(), Some("type"));
        assert_eq!(attribute_name("cloudEvents_time").as_deref(), Some("time"));
        assert_eq!(attribute_name("ce-"), None);
        assert_eq!(attribute_name("cell"), None);
        assert_eq!(attribute_name("ce_a.b"), None);
    }

    #[test]
    fn a_json_event_is_structured_other_json_is_not() {
        let h = HeaderSet::default();
        let event = br#" {"specversion":"1.0","id":"1","source":"/s","type":"t","data":{}}"#;
        assert!(is_structured(&h, event));
        assert!(!is_structured(&h, br#"{"specversion":"1.0","id":"1"}"#));
        assert!(!is_structured(&h, br#"{"order":1}"#));
        assert!(!is_structured(&h, b"specversion"));
    }
}
