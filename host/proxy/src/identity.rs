//! The workload identity: the certificate agent and the `/certs` admin view.

use std::path::Path;

use weft_config::schema;
use weft_tls::TlsError;
use weft_tls::creds::Credentials;
use weft_upstream::tls::resolve;

/// Starts the certificate agent of the `identity` block: a valid certificate is in place when
/// this returns, and renewals run in the background.
pub async fn start_agent(id: &schema::Identity, base_dir: &Path) -> Result<(), TlsError> {
    weft_tls::agent::start(weft_tls::agent::AgentConfig {
        ca_address: id.ca_address.clone(),
        ca_bundle: resolve(base_dir, &id.ca_trust_bundle_file),
        token_file: id
            .bootstrap_token_file
            .as_deref()
            .map(|f| resolve(base_dir, f)),
        spiffe_id: id.spiffe_id.clone(),
        out_dir: resolve(base_dir, &id.output_dir),
        ttl: id.ttl,
        renew_fraction: id.renew_fraction,
    })
    .await
}

fn creds_json(owner: String, creds: &Credentials) -> serde_json::Value {
    let m = creds.current();
    serde_json::json!({
        "owner": owner,
        "cert_file": creds.files().cert.display().to_string(),
        "identity": m.identity.as_ref().map(ToString::to_string),
        "valid_from": weft_tls::creds::rfc3339(m.not_before),
        "expiration_time": weft_tls::creds::rfc3339(m.not_after),
        "days_until_expiration": (m.not_after - weft_tls::creds::unix_now()) / 86_400,
        "rotations": creds.rotations.load(std::sync::atomic::Ordering::Relaxed),
        "refused_rotations": creds.refusals.load(std::sync::atomic::Ordering::Relaxed),
        "last_refusal": creds.last_error(),
    })
}

/// `GET /certs`: the certificates in use (Envoy's admin endpoint of that name), with rotation
/// state.
pub fn certs_json(g: &crate::generation::Generation) -> serde_json::Value {
    let mut out = Vec::new();
    let mut names: Vec<&String> = g.listeners.keys().collect();
    names.sort();
    for name in names {
        if let Some(weft_transport::ListenerGen::Http(h)) = g.listeners.get(name).map(|l| &**l)
            && let Some(t) = &h.tls
        {
            out.push(creds_json(format!("listener {name}"), &t.creds));
        }
    }
    for c in g.clusters.iter() {
        if let Some(t) = &c.tls {
            out.push(creds_json(format!("cluster {}", c.name), &t.creds));
        }
    }
    serde_json::json!({ "certificates": out })
}

/// `Err(why)` unless every certificate the generation serves or connects with is within its
/// validity period (the readiness of a sidecar with an `identity`).
pub fn certificates_valid(g: &crate::generation::Generation) -> Result<(), String> {
    let now = weft_tls::creds::unix_now();
    let mut all: Vec<(String, &Credentials)> = Vec::new();
    for (name, l) in &g.listeners {
        if let weft_transport::ListenerGen::Http(h) = &**l
            && let Some(t) = &h.tls
        {
            all.push((format!("listener {name}"), &t.creds));
        }
    }
    for c in g.clusters.iter() {
        if let Some(t) = &c.tls {
            all.push((format!("cluster {}", c.name), &t.creds));
        }
    }
    for (owner, creds) in all {
        let m = creds.current();
        if m.not_before > now || m.not_after <= now {
            return Err(format!("{owner}: no valid certificate"));
        }
    }
    Ok(())
}
