//! Checks of the `xds` section against the rest of the file.

use crate::schema::{Config, UpstreamProtocol};

/// Checks the `xds` section against the rest of the file.
pub(crate) fn xds(config: &Config) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let Some(x) = &config.xds else {
        return found;
    };
    match config.clusters.iter().find(|c| c.name == x.cluster) {
        None => found.push((
            "xds.cluster".to_owned(),
            format!("unknown cluster `{}`", x.cluster),
        )),
        Some(c) => {
            if c.protocol != UpstreamProtocol::Http2 {
                found.push((
                    "xds.cluster".to_owned(),
                    format!(
                        "cluster `{}` must have `protocol: http2` (xDS is gRPC)",
                        c.name
                    ),
                ));
            }
            if let Some(t) = &c.tls {
                for (field, file) in [
                    ("cert_file", &t.cert_file),
                    ("key_file", &t.key_file),
                    ("trust_bundle_file", &t.trust_bundle_file),
                ] {
                    if !std::path::Path::new(file).is_absolute() {
                        found.push((
                            "xds.cluster".to_owned(),
                            format!(
                                "cluster `{}`: tls.{field} must be an absolute path for the \
                                 control plane's cluster",
                                c.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    if x.node.id.trim().is_empty() {
        found.push(("xds.node.id".to_owned(), "must not be empty".to_owned()));
    }
    if x.reconnect_base.is_zero() || x.reconnect_base > x.reconnect_max {
        found.push((
            "xds.reconnect_base".to_owned(),
            "must be more than zero and at most `reconnect_max`".to_owned(),
        ));
    }
    found
}
