//! The HTTP protocol between the sidecar's certificate agent ([`crate::agent`]) and the CA's
//! signing endpoint (`weft ca serve`, crate `weft-ca`): HTTPS, HTTP/1.1.
//!
//! - `POST /v1/sign` ([`SIGN_PATH`]) with a PEM CSR as the body (at most [`MAX_CSR_BYTES`]).
//!   The caller is authenticated by its current workload certificate (mTLS: it may only renew
//!   its own SPIFFE ID) or by a bootstrap token (`authorization: Bearer <token>`: it may ask for
//!   IDs matching the token's pattern). The optional [`TTL_HEADER`] asks for a lifetime in
//!   seconds (capped by the CA). The answer is the PEM chain, leaf first. Only public keys
//!   travel: the workload keeps its private key.
//! - `GET /v1/bundle` ([`BUNDLE_PATH`]): the trust bundle (root certificates), PEM.
//!
//! Any status but 200 is a refusal, its body a one-line reason. The endpoint presents a
//! certificate for [`ca_identity`]; agents accept no other.

/// Where CSRs are posted.
pub const SIGN_PATH: &str = "/v1/sign";
/// Where the trust bundle is fetched.
pub const BUNDLE_PATH: &str = "/v1/bundle";
/// Requested lifetime in seconds.
pub const TTL_HEADER: &str = "x-weft-ttl";
/// The only ALPN protocol spoken.
pub const ALPN: &[u8] = b"http/1.1";
/// Largest CSR the endpoint accepts.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Largest answer (chain or bundle) the agent reads.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The identity the signing endpoint presents (agents accept no other):
/// `spiffe://<td>/ns/weft-system/sa/weft-ca`.
pub fn ca_identity(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/ns/weft-system/sa/weft-ca")
}
