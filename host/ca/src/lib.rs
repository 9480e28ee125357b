//! Weft's certificate authority (Citadel's role), apart from the workload-identity code in
//! `weft-tls` that every sidecar runs.
//!
//! - [`authority`]: the CA itself — a root or an intermediate, saved in Istio's plugged-in CA
//!   layout, issuing SPIFFE workload certificates directly or by signing a CSR.
//! - [`server`]: its signing endpoint (`weft ca serve`), HTTPS over hyper, which the sidecars'
//!   renewing agent (`weft_tls::agent`) calls with the protocol of `weft_tls::ca_protocol`.
//!
//! Errors are `weft_tls::TlsError` (mostly its `Ca` variant), like the agent's.

#![forbid(unsafe_code)]

pub mod authority;
pub mod server;

pub use authority::{Ca, IssueRequest, Issued, MAX_WORKLOAD_TTL, csr_uri};
