//! OTLP/HTTP JSON encoding of spans (`opentelemetry/proto/trace/v1`, JSON mapping): ids as
//! lower-case hex, 64-bit integers and nanosecond timestamps as decimal strings, enums as
//! numbers.
//!
//! Spans are encoded one by one when a request ends ([`encode_span`]) and queued as text; an
//! export request is the queued spans spliced into one envelope ([`encode_request`]).

use serde_json::{Value, json};

use crate::traceparent::hex;

/// `SPAN_KIND_SERVER`.
pub const KIND_SERVER: u8 = 2;

/// `STATUS_CODE_ERROR`.
pub const STATUS_ERROR: u8 = 2;

/// The instrumentation scope name in every export.
pub const SCOPE: &str = "weft-telemetry";

/// An attribute value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// `stringValue`.
    Str(String),
    /// `intValue` (encoded as a decimal string, as proto3 JSON does for int64).
    Int(i64),
}

/// A finished server span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// This span's id.
    pub span_id: [u8; 8],
    /// The caller's span id, when the trace was continued.
    pub parent_span_id: Option<[u8; 8]>,
    /// Span name.
    pub name: String,
    /// Start, Unix nanoseconds.
    pub start_unix_nano: u64,
    /// End, Unix nanoseconds.
    pub end_unix_nano: u64,
    /// Attributes, in order.
    pub attributes: Vec<(String, AttrValue)>,
    /// `Some(message)` marks the span as failed (`STATUS_CODE_ERROR`).
    pub error: Option<String>,
}

/// One span as an OTLP JSON `Span` object.
pub fn encode_span(span: &Span) -> String {
    let attributes: Vec<Value> = span.attributes.iter().map(attribute).collect();
    let mut obj = json!({
        "traceId": hex(&span.trace_id),
        "spanId": hex(&span.span_id),
        "name": span.name,
        "kind": KIND_SERVER,
        "startTimeUnixNano": span.start_unix_nano.to_string(),
        "endTimeUnixNano": span.end_unix_nano.max(span.start_unix_nano).to_string(),
        "attributes": attributes,
        "status": match &span.error {
            Some(message) => json!({ "code": STATUS_ERROR, "message": message }),
            None => json!({}),
        },
    });
    if let (Some(parent), Some(map)) = (span.parent_span_id, obj.as_object_mut()) {
        map.insert("parentSpanId".into(), Value::String(hex(&parent)));
    }
    obj.to_string()
}

/// An `ExportTraceServiceRequest` carrying `spans` (each the output of [`encode_span`]) for
/// one resource.
pub fn encode_request(
    service_name: &str,
    resource_attributes: &[(String, String)],
    spans: &[String],
) -> String {
    let mut attrs = vec![attribute(&(
        "service.name".to_owned(),
        AttrValue::Str(service_name.to_owned()),
    ))];
    attrs.extend(
        resource_attributes
            .iter()
            .filter(|(k, _)| k != "service.name")
            .map(|(k, v)| attribute(&(k.clone(), AttrValue::Str(v.clone())))),
    );
    let head = json!({ "attributes": attrs }).to_string();
    let scope = json!({ "name": SCOPE }).to_string();
    let len = spans.iter().map(|s| s.len() + 1).sum::<usize>();
    let mut out = String::with_capacity(len + head.len() + scope.len() + 64);
    out.push_str(r#"{"resourceSpans":[{"resource":"#);
    out.push_str(&head);
    out.push_str(r#","scopeSpans":[{"scope":"#);
    out.push_str(&scope);
    out.push_str(r#","spans":["#);
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(s);
    }
    out.push_str("]}]}]}");
    out
}

fn attribute((key, value): &(String, AttrValue)) -> Value {
    let value = match value {
        AttrValue::Str(s) => json!({ "stringValue": s }),
        AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
    };
    json!({ "key": key, "value": value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(error: bool, parent: bool) -> Span {
        Span {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            parent_span_id: parent.then_some([0x02; 8]),
            name: "GET /x \"quoted\"".into(),
            start_unix_nano: 1_700_000_000_000_000_000,
            end_unix_nano: 1_700_000_000_003_000_000,
            attributes: vec![
                ("http.request.method".into(), AttrValue::Str("GET".into())),
                ("http.response.status_code".into(), AttrValue::Int(503)),
            ],
            error: error.then(|| "HTTP 503".to_owned()),
        }
    }

    #[test]
    fn a_span_follows_the_otlp_json_mapping() {
        let v: Value = serde_json::from_str(&encode_span(&span(true, true))).expect("json");
        assert_eq!(v["traceId"], "abababababababababababababababab");
        assert_eq!(v["spanId"], "0101010101010101");
        assert_eq!(v["parentSpanId"], "0202020202020202");
        assert_eq!(v["name"], "GET /x \"quoted\"");
        assert_eq!(v["kind"], 2);
        assert_eq!(v["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(v["endTimeUnixNano"], "1700000000003000000");
        assert_eq!(v["attributes"][0]["key"], "http.request.method");
        assert_eq!(v["attributes"][0]["value"]["stringValue"], "GET");
        assert_eq!(v["attributes"][1]["value"]["intValue"], "503");
        assert_eq!(v["status"]["code"], 2);
        assert_eq!(v["status"]["message"], "HTTP 503");
    }

    #[test]
    fn a_root_span_has_no_parent_and_an_unset_status() {
        let v: Value = serde_json::from_str(&encode_span(&span(false, false))).expect("json");
        assert!(v.get("parentSpanId").is_none());
        assert_eq!(v["status"], json!({}));
        let mut s = span(false, false);
        s.end_unix_nano = 5;
        let v: Value = serde_json::from_str(&encode_span(&s)).expect("json");
        assert_eq!(
            v["endTimeUnixNano"], v["startTimeUnixNano"],
            "end never before start"
        );
    }

    #[test]
    fn a_request_wraps_spans_under_one_resource_and_scope() {
        let spans = vec![
            encode_span(&span(false, false)),
            encode_span(&span(true, true)),
        ];
        let body = encode_request(
            "checkout",
            &[
                ("deployment.environment".into(), "prod".into()),
                ("service.name".into(), "ignored".into()),
            ],
            &spans,
        );
        let v: Value = serde_json::from_str(&body).expect("json");
        let rs = &v["resourceSpans"][0];
        let attrs = rs["resource"]["attributes"].as_array().expect("attrs");
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0]["key"], "service.name");
        assert_eq!(attrs[0]["value"]["stringValue"], "checkout");
        assert_eq!(attrs[1]["value"]["stringValue"], "prod");
        assert_eq!(rs["scopeSpans"][0]["scope"]["name"], SCOPE);
        assert_eq!(
            rs["scopeSpans"][0]["spans"].as_array().map(Vec::len),
            Some(2)
        );
        let empty: Value = serde_json::from_str(&encode_request("s", &[], &[])).expect("json");
        assert_eq!(
            empty["resourceSpans"][0]["scopeSpans"][0]["spans"],
            json!([])
        );
    }
}
