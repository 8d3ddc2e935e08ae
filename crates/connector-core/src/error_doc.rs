//! The error document written to `ERROR_TOPIC`, byte-compatible with the Go original
//! (reference §1.5): compact JSON, PascalCase fields in a fixed order, Go's string escaping.
//!
//! Written by hand rather than with serde_json because Go's encoder escapes `<`, `>`, `&`,
//! U+2028/U+2029 and invalid UTF-8 in ways serde_json does not, and consumers diff these bytes.

use crate::headers::HeaderSet;
use base64::Engine as _;

/// Everything the document says about one failed message.
#[derive(Debug, Clone, Copy)]
pub struct ErrorDocument<'a> {
    /// The message payload (written lossily, as Go did; see `message_base64` in the extras).
    pub message: &'a [u8],
    /// `HTTP_ENDPOINT` as configured.
    pub http_endpoint: &'a str,
    /// The request headers in their stored spelling.
    pub headers: &'a HeaderSet,
    /// Body of the final response; empty when there was none.
    pub response_body: &'a [u8],
    /// Status of the final response; `None` when the final attempt got no response.
    pub status: Option<u16>,
    /// `SOURCE_NAME`, quoted in `ErrorString`.
    pub source_name: &'a str,
    /// Our additive fields, written after all of the original's; `None` for the exact original.
    pub extras: Option<Extras<'a>>,
    /// Why the message went to the error destination when not because the function failed
    /// (a delivery rule, a refused response); `None` for a failed call.
    pub reason: Option<Reason<'a>>,
}

/// A reason other than the function failing (see [`crate::delivery::Diversion`]).
#[derive(Debug, Clone, Copy)]
pub struct Reason<'a> {
    /// The documented code: `ConnectorDetails.Reason`.
    pub code: &'a str,
    /// One sentence, opening `ErrorString`.
    pub detail: &'a str,
}

/// Fields the original did not have. Appended as a last top-level object, `ConnectorDetails`.
#[derive(Debug, Clone, Copy)]
pub struct Extras<'a> {
    /// How many HTTP attempts were made.
    pub attempts: u32,
    /// The transport error of the final attempt (connection refused, timeout…), if any.
    pub last_error: Option<&'a str>,
}

impl ErrorDocument<'_> {
    /// `ErrorString`, with the original's two exact texts.
    pub fn error_string(&self) -> String {
        if let Some(reason) = &self.reason {
            return format!(
                "{}. http_endpoint: {}, source: {}",
                reason.detail, self.http_endpoint, self.source_name
            );
        }
        match self.status {
            Some(code) => format!(
                "request returned failure: {code}. http_endpoint: {}, source: {}",
                self.http_endpoint, self.source_name
            ),
            None => format!(
                "every function invocation retry failed; final retry gave empty response. http_endpoint: {}, source: {}",
                self.http_endpoint, self.source_name
            ),
        }
    }

    /// The document's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.message.len() + self.response_body.len());
        out.extend_from_slice(b"{\"FunctionHTTPRequest\":{\"Message\":");
        write_go_string(&mut out, self.message);
        out.extend_from_slice(b",\"HTTPEndpoint\":");
        write_go_string(&mut out, self.http_endpoint.as_bytes());
        out.extend_from_slice(b",\"Headers\":{");
        for (i, (key, values)) in self.headers.sorted().into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_go_string(&mut out, key.as_bytes());
            out.extend_from_slice(b":[");
            for (j, v) in values.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                write_go_string(&mut out, v.as_bytes());
            }
            out.push(b']');
        }
        out.extend_from_slice(b"}},\"FunctionHTTPResponse\":{\"ResponseBody\":");
        write_go_string(&mut out, self.response_body);
        out.extend_from_slice(b",\"StatusCode\":");
        out.extend_from_slice(self.status.unwrap_or(500).to_string().as_bytes());
        out.extend_from_slice(b",\"ErrorString\":");
        write_go_string(&mut out, self.error_string().as_bytes());
        out.push(b'}');
        if let Some(extras) = &self.extras {
            out.extend_from_slice(b",\"ConnectorDetails\":{\"Attempts\":");
            out.extend_from_slice(extras.attempts.to_string().as_bytes());
            if let Some(e) = extras.last_error {
                out.extend_from_slice(b",\"LastError\":");
                write_go_string(&mut out, e.as_bytes());
            }
            if let Some(reason) = &self.reason {
                out.extend_from_slice(b",\"Reason\":");
                write_go_string(&mut out, reason.code.as_bytes());
            }
            // `Message` replaced invalid UTF-8 with U+FFFD; keep the real bytes recoverable.
            if std::str::from_utf8(self.message).is_err() {
                out.extend_from_slice(b",\"MessageBase64\":\"");
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(self.message)
                        .as_bytes(),
                );
                out.push(b'"');
            }
            out.push(b'}');
        }
        out.push(b'}');
        out
    }
}

/// Writes `bytes` as a JSON string exactly as Go's `encoding/json` (with HTML escaping) does.
pub fn write_go_string(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut rest = bytes;
    loop {
        let (valid, bad_len) = match std::str::from_utf8(rest) {
            Ok(s) => (s, 0),
            Err(e) => {
                let (good, _) = rest.split_at(e.valid_up_to());
                // SAFETY-free: `valid_up_to` marks a UTF-8 prefix.
                let s = std::str::from_utf8(good).unwrap_or_default();
                (s, e.error_len().unwrap_or(rest.len() - e.valid_up_to()))
            }
        };
        for c in valid.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\u{8}' => out.extend_from_slice(b"\\b"),
                '\u{c}' => out.extend_from_slice(b"\\f"),
                '<' | '>' | '&' | '\u{0}'..='\u{1f}' => {
                    let b = c as u8;
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[(b >> 4) as usize]);
                    out.push(HEX[(b & 0xf) as usize]);
                }
                '\u{2028}' => out.extend_from_slice(b"\\u2028"),
                '\u{2029}' => out.extend_from_slice(b"\\u2029"),
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if bad_len == 0 {
            break;
        }
        // Go decodes invalid UTF-8 one byte at a time, each becoming its own U+FFFD escape.
        for _ in 0..bad_len {
            out.extend_from_slice(b"\\ufffd");
        }
        rest = &rest[valid.len() + bad_len..];
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(b: &[u8]) -> String {
        let mut v = Vec::new();
        write_go_string(&mut v, b);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn go_escapes() {
        assert_eq!(enc(b"<&>"), r#""\u003c\u0026\u003e""#);
        assert_eq!(enc("x\u{2028}y\tz\nw".as_bytes()), r#""x\u2028y\tz\nw""#);
        assert_eq!(enc(b"\xff\xfehello"), r#""\ufffd\ufffdhello""#);
        assert_eq!(enc(b"\x08\x0c\x00\x1f\x7f"), "\"\\b\\f\\u0000\\u001f\x7f\"");
        assert_eq!(enc(b"\xe2\x82"), r#""\ufffd\ufffd""#);
        assert_eq!(enc(b"\xed\xa0\x80"), r#""\ufffd\ufffd\ufffd""#);
        assert_eq!(enc("\u{1F600}\u{FFFD}".as_bytes()), "\"\u{1F600}\u{FFFD}\"");
    }
}
