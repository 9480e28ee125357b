//! HTTP filters of the HTTP connection manager that Weft implements natively, accepted with the
//! configuration istiod renders into every sidecar listener, and not run as filters:
//!
//! | filter | type | in Weft |
//! | --- | --- | --- |
//! | `envoy.filters.http.fault` | `HTTPFault`, empty | the routes' faults (`typed_per_filter_config`, `route.rs`) |
//! | `envoy.filters.http.cors` | `Cors`, empty | nothing to do (route CORS policies NACK) |
//! | `envoy.filters.http.grpc_stats` | `grpc_stats.FilterConfig` | ignored: Envoy's own per-method stats |
//! | `istio.alpn` | `alpn.v2alpha1.FilterConfig` | ignored: Weft chooses the upstream ALPN per cluster |
//! | `istio.metadata_exchange` | `TypedStruct` of `io.istio.http.peer_metadata.Config` | Weft's native exchange (`telemetry.metrics.metadata_exchange`) |
//! | `istio.stats` | `stats.PluginConfig` | Weft's native Istio metrics; per-listener `metrics`/`definitions` overrides NACK |
//!
//! Anything else is not native: the caller NACKs it.

use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::google::protobuf::{Any, Struct};
use prost::Message;

/// `envoy.extensions.filters.http.fault.v3.HTTPFault`.
pub(crate) const FAULT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const GRPC_STATS: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";
const ISTIO_ALPN: &str =
    "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig";
const ISTIO_STATS: &str = "type.googleapis.com/stats.PluginConfig";
const PEER_METADATA: &str = "type.googleapis.com/io.istio.http.peer_metadata.Config";
const TYPED_STRUCTS: [&str; 2] = [
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];

/// `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` (the same wire form): a config given
/// as a `Struct` for the type `type_url`.
#[derive(Clone, PartialEq, Message)]
struct TypedStruct {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Struct>,
}

/// The part of Istio's `stats.PluginConfig` (istio/api `envoy/extensions/stats/config.proto`)
/// that changes what is reported: metric overrides, custom metrics, the gateway reporter.
/// The other fields (`tcp_reporting_duration`, `disable_host_header_fallback`, prefixes and
/// separators, expiry intervals) are read from Weft's own `telemetry.metrics`.
#[derive(Clone, PartialEq, Message)]
struct IstioStats {
    #[prost(bytes = "vec", repeated, tag = "8")]
    metrics: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    definitions: Vec<Vec<u8>>,
    #[prost(int32, tag = "10")]
    reporter: i32,
}

/// Whether the HTTP filter at `fpath` with config `any` is one Weft implements natively
/// (`Ok(true)`: accepted, nothing to run), not native (`Ok(false)`), or native with a
/// configuration Weft cannot honour (`Err`, naming the field).
pub(crate) fn http_filter(fpath: &str, any: &Any) -> Result<bool, String> {
    let tpath = format!("{fpath}.typed_config");
    match any.type_url.as_str() {
        FAULT => {
            let fault =
                HttpFault::decode(any.value.as_slice()).map_err(|e| format!("{tpath}: {e}"))?;
            if fault != HttpFault::default() {
                return Err(format!(
                    "{tpath}: a listener-wide fault is unimplemented (faults are read from \
                     each route's typed_per_filter_config, as istiod renders them)"
                ));
            }
            Ok(true)
        }
        CORS | GRPC_STATS | ISTIO_ALPN => Ok(true),
        ISTIO_STATS => {
            let stats =
                IstioStats::decode(any.value.as_slice()).map_err(|e| format!("{tpath}: {e}"))?;
            istio_stats(
                &tpath,
                !stats.metrics.is_empty(),
                !stats.definitions.is_empty(),
                stats.reporter != 0,
            )
        }
        t if TYPED_STRUCTS.contains(&t) => {
            let ts =
                TypedStruct::decode(any.value.as_slice()).map_err(|e| format!("{tpath}: {e}"))?;
            match ts.type_url.as_str() {
                PEER_METADATA => Ok(true),
                ISTIO_STATS => {
                    let has = |k: &str| ts.value.as_ref().is_some_and(|s| s.fields.contains_key(k));
                    istio_stats(&tpath, has("metrics"), has("definitions"), has("reporter"))
                }
                _ => Ok(false),
            }
        }
        _ => Ok(false),
    }
}

fn istio_stats(
    tpath: &str,
    metrics: bool,
    definitions: bool,
    reporter: bool,
) -> Result<bool, String> {
    let field = if metrics {
        "metrics"
    } else if definitions {
        "definitions"
    } else if reporter {
        "reporter"
    } else {
        return Ok(true);
    };
    Err(format!(
        "{tpath}.{field}: istio.stats overrides over xDS are unimplemented (Weft reports \
         Istio's metrics natively; set telemetry.metrics.overrides in the bootstrap)"
    ))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{Value, value::Kind};

    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
        }
    }

    #[test]
    fn accepts_what_istiod_renders_and_refuses_overrides_by_field() {
        assert_eq!(http_filter("f", &any(FAULT, Vec::new())), Ok(true));
        assert_eq!(http_filter("f", &any(CORS, Vec::new())), Ok(true));
        assert_eq!(
            http_filter("f", &any(GRPC_STATS, vec![0x08, 0x01])),
            Ok(true)
        );
        assert_eq!(http_filter("f", &any(ISTIO_ALPN, Vec::new())), Ok(true));
        let mx = TypedStruct {
            type_url: PEER_METADATA.into(),
            value: Some(Struct::default()),
        };
        assert_eq!(
            http_filter("f", &any(TYPED_STRUCTS[0], mx.encode_to_vec())),
            Ok(true)
        );
        // disable_host_header_fallback (6) and tcp_reporting_duration (7), as istiod sets them.
        let plain = vec![0x30, 0x01, 0x3a, 0x02, 0x08, 0x05];
        assert_eq!(http_filter("f", &any(ISTIO_STATS, plain)), Ok(true));
        let overrides = IstioStats {
            metrics: vec![vec![0x12, 0x01, b'x']],
            definitions: Vec::new(),
            reporter: 0,
        };
        let err = http_filter("f", &any(ISTIO_STATS, overrides.encode_to_vec())).unwrap_err();
        assert!(
            err.starts_with("f.typed_config.metrics: istio.stats overrides"),
            "{err}"
        );
        let stats_struct = TypedStruct {
            type_url: ISTIO_STATS.into(),
            value: Some(Struct {
                fields: [(
                    "definitions".to_owned(),
                    Value {
                        kind: Some(Kind::StringValue("x".into())),
                    },
                )]
                .into(),
            }),
        };
        let err =
            http_filter("f", &any(TYPED_STRUCTS[1], stats_struct.encode_to_vec())).unwrap_err();
        assert!(err.starts_with("f.typed_config.definitions:"), "{err}");

        let fault = HttpFault {
            upstream_cluster: "c".into(),
            ..Default::default()
        };
        let err = http_filter("f", &any(FAULT, fault.encode_to_vec())).unwrap_err();
        assert!(
            err.contains("a listener-wide fault is unimplemented"),
            "{err}"
        );
        assert_eq!(
            http_filter(
                "f",
                &any(
                    "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                    Vec::new()
                )
            ),
            Ok(false)
        );
    }
}
