//! The annotations (and labels) that opt a pod out of injection or tune its sidecar.
//!
//! Names follow Istio's with `weft.dev` for `istio.io`; each also answers to its Istio name
//! (checked after the Weft one), so manifests written for Istio keep their meaning.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

use crate::commands::{CaptureArgs, PORTS};

/// `"false"` skips injection (label or annotation; also `sidecar.istio.io/inject`).
pub const INJECT: &str = "sidecar.weft.dev/inject";
/// Written by `weft inject`: what it added (JSON, like `sidecar.istio.io/status`).
pub const STATUS: &str = "sidecar.weft.dev/status";
/// The sidecar's image.
pub const PROXY_IMAGE: &str = "sidecar.weft.dev/proxyImage";
/// The image's tag (replaces the tag of the image in use).
pub const PROXY_VERSION: &str = "sidecar.weft.dev/proxyVersion";
/// CPU request of the sidecar.
pub const PROXY_CPU: &str = "sidecar.weft.dev/proxyCPU";
/// CPU limit of the sidecar.
pub const PROXY_CPU_LIMIT: &str = "sidecar.weft.dev/proxyCPULimit";
/// Memory request of the sidecar.
pub const PROXY_MEMORY: &str = "sidecar.weft.dev/proxyMemory";
/// Memory limit of the sidecar.
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.weft.dev/proxyMemoryLimit";
/// Outbound destinations (CIDRs, or `*`) captured; default `*`.
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.weft.dev/includeOutboundIPRanges";
/// Outbound destinations (CIDRs) never captured.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.weft.dev/excludeOutboundIPRanges";
/// Inbound ports (or `*`) captured; default `*`.
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.weft.dev/includeInboundPorts";
/// Inbound ports never captured (the sidecar's own ports are always added).
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.weft.dev/excludeInboundPorts";
/// Outbound destination ports never captured.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.weft.dev/excludeOutboundPorts";
/// `"false"` leaves the pod's `prometheus.io/*` annotations alone.
pub const MERGE_METRICS: &str = "prometheus.weft.dev/merge-metrics";

/// Prometheus' scrape annotations.
pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
/// See [`PROMETHEUS_SCRAPE`].
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
/// See [`PROMETHEUS_SCRAPE`].
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";

/// The Istio name of a Weft annotation.
fn istio_name(name: &str) -> String {
    name.replace("weft.dev", "istio.io")
}

/// A bad annotation: its name and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnnotation {
    /// The annotation or label.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// A pod template's annotations and labels, looked up Weft name first, then Istio's.
pub struct Lookup<'a> {
    annotations: Option<&'a BTreeMap<String, String>>,
    labels: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Lookup<'a> {
    /// Over a template's annotations and labels.
    pub fn new(
        annotations: Option<&'a BTreeMap<String, String>>,
        labels: Option<&'a BTreeMap<String, String>>,
    ) -> Self {
        Lookup {
            annotations,
            labels,
        }
    }

    /// The annotation `name` (or its Istio name): `(name found, value)`.
    pub fn get(&self, name: &str) -> Option<(String, &'a str)> {
        let a = self.annotations?;
        if let Some(v) = a.get(name) {
            return Some((name.to_owned(), v.as_str()));
        }
        let istio = istio_name(name);
        a.get(&istio).map(|v| (istio, v.as_str()))
    }

    /// Whether injection is refused: labels before annotations, Weft before Istio, as Istio
    /// does; absent means wanted. `Some(where)` names the label or annotation that said no.
    pub fn opted_out(&self) -> Result<Option<String>, BadAnnotation> {
        let istio = istio_name(INJECT);
        for (map, what, name) in [
            (self.labels, "label", INJECT),
            (self.annotations, "annotation", INJECT),
            (self.labels, "label", istio.as_str()),
            (self.annotations, "annotation", istio.as_str()),
        ] {
            if let Some(v) = map.and_then(|m| m.get(name)) {
                return match parse_bool(v) {
                    Some(true) => Ok(None),
                    Some(false) => Ok(Some(format!("{what} {name} is `{v}`"))),
                    None => Err(BadAnnotation {
                        name: name.to_owned(),
                        message: format!("`{v}` is not true or false"),
                    }),
                };
            }
        }
        Ok(None)
    }

    /// An annotation that must be a boolean; `default` when absent.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, BadAnnotation> {
        match self.get(name) {
            None => Ok(default),
            Some((found, v)) => parse_bool(v).ok_or(BadAnnotation {
                name: found,
                message: format!("`{v}` is not true or false"),
            }),
        }
    }

    /// A resource quantity (`100m`, `128Mi`) annotation.
    pub fn quantity(&self, name: &str) -> Result<Option<String>, BadAnnotation> {
        match self.get(name) {
            None => Ok(None),
            Some((found, v)) => {
                let v = v.trim();
                if is_quantity(v) {
                    Ok(Some(v.to_owned()))
                } else {
                    Err(BadAnnotation {
                        name: found,
                        message: format!("`{v}` is not a Kubernetes quantity (like 100m or 128Mi)"),
                    })
                }
            }
        }
    }

    /// A non-empty value without whitespace (an image reference or a tag).
    pub fn word(&self, name: &str) -> Result<Option<String>, BadAnnotation> {
        match self.get(name) {
            None => Ok(None),
            Some((found, v)) => {
                let v = v.trim();
                if v.is_empty() || v.contains(char::is_whitespace) {
                    Err(BadAnnotation {
                        name: found,
                        message: format!("`{v}` must be one word"),
                    })
                } else {
                    Ok(Some(v.to_owned()))
                }
            }
        }
    }

    /// What `weft iptables` is told, from the traffic annotations.
    pub fn capture(&self) -> Result<CaptureArgs, BadAnnotation> {
        let own = [PORTS.merged_metrics, PORTS.health, PORTS.proxy_metrics]
            .map(|p| p.to_string())
            .join(",");
        let user_excluded = String::from(self.list(EXCLUDE_INBOUND_PORTS, parse_ports, false)?);
        let mut excluded: Vec<String> = own.split(',').map(str::to_owned).collect();
        for p in user_excluded.split(',').filter(|p| !p.is_empty()) {
            if !excluded.iter().any(|e| e == p) {
                excluded.push(p.to_owned());
            }
        }
        Ok(CaptureArgs {
            include_outbound_cidrs: self
                .list(INCLUDE_OUTBOUND_IP_RANGES, parse_cidrs, true)
                .map(|v| v.or_star())?,
            exclude_outbound_cidrs: self
                .list(EXCLUDE_OUTBOUND_IP_RANGES, parse_cidrs, false)?
                .into(),
            include_inbound_ports: self
                .list(INCLUDE_INBOUND_PORTS, parse_ports, true)
                .map(|v| v.or_star())?,
            exclude_inbound_ports: excluded.join(","),
            exclude_outbound_ports: self
                .list(EXCLUDE_OUTBOUND_PORTS, parse_ports, false)?
                .into(),
        })
    }

    /// A comma-separated list annotation, normalized (`a, b` → `a,b`); `*` only where
    /// `star` allows it. Absent means unset (the empty string).
    fn list(
        &self,
        name: &str,
        item: fn(&str) -> Result<(), String>,
        star: bool,
    ) -> Result<ListValue, BadAnnotation> {
        let Some((found, v)) = self.get(name) else {
            return Ok(ListValue(None));
        };
        let v = v.trim();
        if v == "*" {
            return if star {
                Ok(ListValue(Some("*".to_owned())))
            } else {
                Err(BadAnnotation {
                    name: found,
                    message: "`*` is not allowed here".to_owned(),
                })
            };
        }
        let mut items = Vec::new();
        for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            item(entry).map_err(|message| BadAnnotation {
                name: found.clone(),
                message,
            })?;
            items.push(entry);
        }
        Ok(ListValue(Some(items.join(","))))
    }
}

/// A list annotation's value; `None` when absent.
struct ListValue(Option<String>);

impl ListValue {
    /// The value, `*` when absent.
    fn or_star(self) -> String {
        self.0.unwrap_or_else(|| "*".to_owned())
    }
}

impl From<ListValue> for String {
    fn from(v: ListValue) -> String {
        v.0.unwrap_or_default()
    }
}

/// Go's `strconv.ParseBool` plus yes/no: what Istio accepts for `sidecar.istio.io/inject`.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "y" | "yes" | "on" => Some(true),
        "false" | "f" | "0" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_ports(entry: &str) -> Result<(), String> {
    match entry.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{entry}` is not a port (1-65535)")),
    }
}

fn parse_cidrs(entry: &str) -> Result<(), String> {
    let bad = || format!("`{entry}` is not a CIDR (like 10.0.0.0/8 or fd00::/8)");
    let (addr, len) = entry.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max { Err(bad()) } else { Ok(()) }
}

static QUANTITY: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$").ok()
});

/// Kubernetes' quantity syntax (`resource.MustParse`).
pub fn is_quantity(v: &str) -> bool {
    QUANTITY.as_ref().is_some_and(|r| r.is_match(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["100m", "1", "0.5", "128Mi", "2Gi", "1e3", ".5"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "100 m", "1.2.3", "12MB", "m"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn cidrs_and_ports() {
        assert!(parse_cidrs("10.0.0.0/8").is_ok());
        assert!(parse_cidrs("fd00::/8").is_ok());
        assert!(parse_cidrs("10.0.0.0/33").is_err());
        assert!(parse_cidrs("10.0.0.1").is_err());
        assert!(parse_ports("8080").is_ok());
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("70000").is_err());
    }
}
