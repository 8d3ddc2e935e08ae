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
            None => format!("{:032x}", rand::random::<u128>()),
        };
        let time = message
            .published_at
            .unwrap_or_else(std::time::SystemTime::now);
        let time = chrono::DateTime::<chrono::Utc>::from(time)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
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
