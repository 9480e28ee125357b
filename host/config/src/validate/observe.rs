//! Tracing and access-log format checks.

use std::collections::BTreeMap;

use super::Found;
use crate::log_format;
use crate::schema::{Config, LogFormat, OtlpProtocol, Tracing};

pub(crate) fn check(config: &Config) -> Vec<Found> {
    let mut found = Vec::new();
    format(&mut found, "access_log", &config.access_log.log_format());
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(a) = &l.access_log
            && let Some(f) = a.log_format()
        {
            format(&mut found, &format!("listeners[{i}].access_log"), &f);
        }
        for (v, vh) in l.virtual_hosts.iter().enumerate() {
            for (r, route) in vh.routes.iter().enumerate() {
                if let Some(d) = &route.decorator
                    && d.operation.trim().is_empty()
                {
                    found.push((
                        format!(
                            "listeners[{i}].virtual_hosts[{v}].routes[{r}].decorator.operation"
                        ),
                        "must not be empty".into(),
                    ));
                }
            }
        }
    }
    if let Some(t) = &config.tracing {
        tracing(&mut found, t);
    }
    found
}

fn format(found: &mut Vec<Found>, path: &str, f: &LogFormat) {
    let set = [
        f.format.is_some(),
        f.text_format.is_some(),
        f.json_format.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        found.push((
            path.to_owned(),
            "set at most one of `format`, `text_format`, `json_format`".into(),
        ));
    }
    if let Some(t) = &f.text_format
        && let Err(e) = log_format::parse(t)
    {
        found.push((format!("{path}.text_format"), e.to_string()));
    }
    if let Some(j) = &f.json_format {
        json(found, &format!("{path}.json_format"), j);
    }
}

fn json(found: &mut Vec<Found>, path: &str, map: &BTreeMap<String, serde_json::Value>) {
    for (k, v) in map {
        let p = format!("{path}.{k}");
        match v {
            serde_json::Value::String(s) => {
                if let Err(e) = log_format::parse(s) {
                    found.push((p, e.to_string()));
                }
            }
            serde_json::Value::Object(o) => {
                let nested: BTreeMap<String, serde_json::Value> =
                    o.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                json(found, &p, &nested);
            }
            serde_json::Value::Array(_) => {
                found.push((
                    p,
                    "lists are not supported (Envoy's json_format neither)".into(),
                ));
            }
            _ => {}
        }
    }
}

fn tracing(found: &mut Vec<Found>, t: &Tracing) {
    let mut err = |field: &str, msg: String| found.push((format!("tracing.{field}"), msg));
    match t.collector.parse::<http::Uri>() {
        Ok(u) => {
            if u.scheme_str() != Some("http") {
                err(
                    "collector",
                    format!(
                        "`{}`: only `http://` collectors are supported (TLS to the collector is not implemented; run a local collector agent)",
                        t.collector
                    ),
                );
            } else if u.authority().is_none() {
                err("collector", format!("`{}` has no host", t.collector));
            } else if t.protocol == OtlpProtocol::Grpc && u.path() != "/" && !u.path().is_empty() {
                err(
                    "collector",
                    format!(
                        "`{}`: a gRPC collector is `http://host:port`, without a path",
                        t.collector
                    ),
                );
            }
        }
        Err(e) => err("collector", format!("`{}` is not a URL: {e}", t.collector)),
    }
    if t.service_name.trim().is_empty() {
        err("service_name", "must not be empty".into());
    }
    for (field, v) in [
        ("random_sampling", t.random_sampling),
        ("client_sampling", t.client_sampling),
        ("overall_sampling", t.overall_sampling),
    ] {
        if !(0.0..=100.0).contains(&v) {
            err(field, format!("{v} is not a percentage (0 to 100)"));
        }
    }
    if t.max_queue == 0 || t.max_queue > 1_000_000 {
        err(
            "max_queue",
            format!("{} is not between 1 and 1000000", t.max_queue),
        );
    }
    if t.batch_size == 0 || t.batch_size > t.max_queue {
        err(
            "batch_size",
            format!("{} is not between 1 and max_queue", t.batch_size),
        );
    }
    if t.batch_interval.is_zero() {
        err("batch_interval", "must be positive".into());
    }
    if t.timeout.is_zero() {
        err("timeout", "must be positive".into());
    }
}
