//! A raw-recording HTTP/1.1 upstream: it keeps every byte it receives, splits the stream into
//! requests with `httparse` and the framing the heads declare (strictly: one `Content-Length`
//! or `Transfer-Encoding: chunked`), answers each with `200 ok`, and counts what it saw. A
//! smuggling test uses it to prove the proxy never lets one client request become two.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request head the upstream received.
#[derive(Debug, Clone)]
pub struct SeenHead {
    /// Method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Header fields, names lowercased, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The head's framing was ambiguous or unsupported (several `Content-Length`s, both
    /// `Content-Length` and `Transfer-Encoding`, a coding other than `chunked`, a bad length).
    pub ambiguous: bool,
}

/// What the upstream saw so far.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Request heads, in arrival order (across connections).
    pub heads: Vec<SeenHead>,
    /// Bytes that could not be parsed as a request head or chunked body (each entry: the
    /// rest of that connection's buffer when parsing failed).
    pub garbage: Vec<Vec<u8>>,
    /// Raw bytes of every connection, in accept order.
    pub raw: Vec<Vec<u8>>,
}

/// A running recording upstream.
#[derive(Clone)]
pub struct Recording {
    /// Its address.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Recorded>>,
}

impl Recording {
    /// Number of request heads received so far.
    pub fn heads(&self) -> usize {
        self.seen.lock().heads.len()
    }

    /// A copy of the heads received after the first `from`.
    pub fn heads_since(&self, from: usize) -> Vec<SeenHead> {
        self.seen
            .lock()
            .heads
            .get(from..)
            .unwrap_or_default()
            .to_vec()
    }

    /// Number of unparseable byte runs seen so far.
    pub fn garbage(&self) -> usize {
        self.seen.lock().garbage.len()
    }

    /// The raw bytes of every connection so far, lossily as text (for failure messages).
    pub fn raw_text(&self) -> String {
        self.seen
            .lock()
            .raw
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

/// Starts a recording upstream on an ephemeral port.
pub async fn recording() -> Recording {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Recorded::default()));
    let rec = Recording {
        addr,
        seen: seen.clone(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(serve(s, seen));
        }
    });
    rec
}

enum Step {
    /// A complete request (head and body) of this many bytes.
    Request(usize, SeenHead),
    /// More bytes needed.
    Partial,
    /// Not HTTP/1.1 as the head declared it.
    Invalid,
}

async fn serve(mut s: tokio::net::TcpStream, seen: Arc<Mutex<Recorded>>) {
    let index = {
        let mut g = seen.lock();
        g.raw.push(Vec::new());
        g.raw.len() - 1
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    seen.lock().garbage.push(std::mem::take(&mut buf));
                }
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(conn) = seen.lock().raw.get_mut(index) {
            conn.extend_from_slice(&chunk[..n]);
        }
        loop {
            match parse_request(&buf) {
                Step::Request(len, head) => {
                    buf.drain(..len);
                    seen.lock().heads.push(head);
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Step::Partial => break,
                Step::Invalid => {
                    seen.lock().garbage.push(std::mem::take(&mut buf));
                    return;
                }
            }
        }
    }
}

fn parse_request(buf: &[u8]) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Step::Partial,
        Err(_) => return Step::Invalid,
    };
    let fields: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let lengths: Vec<&[u8]> = fields
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_slice())
        .collect();
    let codings: Vec<&[u8]> = fields
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.as_slice())
        .collect();
    let length = match lengths.as_slice() {
        [] => None,
        [one] => std::str::from_utf8(one)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<usize>().ok()),
        _ => None,
    };
    let chunked = matches!(codings.as_slice(), [one] if one.eq_ignore_ascii_case(b"chunked"));
    let ambiguous = lengths.len() > 1
        || (!lengths.is_empty() && length.is_none())
        || (!codings.is_empty() && (!chunked || !lengths.is_empty()));
    let has_length = !lengths.is_empty();
    let head = SeenHead {
        method: req.method.unwrap_or_default().to_owned(),
        path: req.path.unwrap_or_default().to_owned(),
        headers: fields,
        ambiguous,
    };
    let rest = &buf[head_len..];
    let body_len = if chunked && !has_length {
        match chunked_len(rest) {
            Some(Ok(n)) => n,
            Some(Err(())) => return Step::Invalid,
            None => return Step::Partial,
        }
    } else if ambiguous {
        return Step::Invalid;
    } else {
        let n = length.unwrap_or(0);
        if rest.len() < n {
            return Step::Partial;
        }
        n
    };
    Step::Request(head_len + body_len, head)
}

/// The length of a complete chunked body at the start of `buf` (trailers included): `None`
/// when incomplete, `Err` when malformed.
fn chunked_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    let mut at = 0;
    loop {
        let (size_line, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete((n, size))) => (n, size),
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some(Err(())),
        };
        at += size_line;
        if size == 0 {
            // Trailer section: lines until an empty one.
            loop {
                let rest = buf.get(at..)?;
                let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
                at += line_end + 2;
                if line_end == 0 {
                    return Some(Ok(at));
                }
            }
        }
        let size = usize::try_from(size).ok()?;
        let end = at.checked_add(size)?.checked_add(2)?;
        if buf.len() < end {
            return None;
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Some(Err(()));
        }
        at = end;
    }
}
