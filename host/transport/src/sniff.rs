//! Protocol detection on a fresh connection, by peeking (nothing is consumed): the HTTP/2
//! connection preface (prior knowledge, h2c) and the TLS handshake record.

use std::time::Duration;

use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads ahead (without consuming) until the bytes either start the HTTP/2 preface or cannot.
pub(crate) async fn is_h2_prior_knowledge(stream: &TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 24];
    let probe = async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if buf[..n] != H2_PREFACE[..n] {
                return false;
            }
            if n == H2_PREFACE.len() {
                return true;
            }
            // A partial preface: wait for more bytes.
            if stream.readable().await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(deadline, probe).await.unwrap_or(false)
}

/// Waits (up to `deadline`) for the first byte: a TLS handshake record starts with 0x16, which
/// no HTTP/1 method or HTTP/2 preface does (permissive mode's detection).
pub(crate) async fn starts_with_tls(stream: &TcpStream, deadline: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(deadline, stream.peek(&mut first)).await,
        Ok(Ok(1))
    ) && first[0] == 0x16
}
