//! The tests' one HTTP/1.1 client: small and hand-written, so every failure is classified exactly
//! (refused, reset, closed before the response, bad status) instead of being folded into a
//! library's retry logic, and so a test can send bytes no library would (a bad Host, a request
//! in two halves, an oversized body).
//!
//! Owns: [`Conn`] (one connection, keep-alive or not), [`exchange_raw`] (any bytes on a fresh
//! connection, the answer read to the server's close) and the one response parser both use.
//! Must not: retry, follow redirects, or hide a malformed response.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::Value;

use crate::support::DEADLINE;

/// How one request failed.
#[derive(Debug)]
pub enum HttpError {
    Connect(std::io::Error),
    /// The connection ended before any byte of the response (write failed, EOF, reset).
    NoResponse(String),
    /// The response started but broke off or was malformed.
    Broken(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "connect: {e}"),
            HttpError::NoResponse(e) => write!(f, "no response: {e}"),
            HttpError::Broken(e) => write!(f, "broken response: {e}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// In the order received, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The server announced it closes the connection after this response.
    pub close: bool,
}

impl HttpResponse {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics naming the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// One HTTP/1.1 connection.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
    /// The `Host` header: the address connected to, as a browser would send it.
    host: String,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Result<Conn, HttpError> {
        let stream = TcpStream::connect(addr).map_err(HttpError::Connect)?;
        stream.set_nodelay(true).ok();
        // A hung request fails the test rather than hanging it.
        stream.set_read_timeout(Some(DEADLINE)).ok();
        Ok(Conn {
            reader: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// Sends one request (a JSON `Content-Type`, a `Content-Length` even when empty) and reads
    /// its whole response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        keep_alive: bool,
    ) -> Result<HttpResponse, HttpError> {
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: {}\r\n\r\n",
            self.host,
            body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.reader
            .get_mut()
            .write_all(&req)
            .map_err(|e| HttpError::NoResponse(format!("write: {e}")))?;
        let mut resp = read_response(&mut self.reader)?;
        resp.close |= !keep_alive;
        Ok(resp)
    }
}

/// Writes `raw` on a fresh connection and reads the answer until the server closes (the server
/// may close before it read all of an oversized body: what it sent still counts).
pub fn exchange_raw(addr: SocketAddr, raw: &[u8]) -> Result<HttpResponse, HttpError> {
    let mut s = TcpStream::connect(addr).map_err(HttpError::Connect)?;
    s.set_read_timeout(Some(DEADLINE)).ok();
    s.write_all(raw)
        .map_err(|e| HttpError::NoResponse(format!("write: {e}")))?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    read_response(&mut &out[..])
}

/// Reads one response: status line, headers, then the body by `Content-Length`, chunks, or up
/// to the end of the stream.
fn read_response(reader: &mut impl BufRead) -> Result<HttpResponse, HttpError> {
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => return Err(HttpError::NoResponse("closed".into())),
        Ok(_) => {}
        Err(e) => return Err(HttpError::NoResponse(format!("read: {e}"))),
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Broken(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| HttpError::Broken(format!("headers: {e}")))?;
        if n == 0 {
            return Err(HttpError::Broken("closed in headers".into()));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
            headers.push((k.to_string(), v.to_string()));
        }
    }
    let body = if chunked {
        read_chunked(reader)?
    } else if let Some(n) = length {
        let mut b = vec![0; n];
        reader
            .read_exact(&mut b)
            .map_err(|e| HttpError::Broken(format!("body: {e}")))?;
        b
    } else if status == 204 || status == 304 {
        Vec::new()
    } else {
        let mut b = Vec::new();
        reader
            .read_to_end(&mut b)
            .map_err(|e| HttpError::Broken(format!("body: {e}")))?;
        close = true;
        b
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
        close,
    })
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, HttpError> {
    let broken = |e: std::io::Error| HttpError::Broken(format!("chunk: {e}"));
    let mut out = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).map_err(broken)?;
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| HttpError::Broken(format!("chunk size {size:?}")))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).map_err(broken)?;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..size]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_read_to_end_bodies() {
        let r = read_response(
            &mut &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhiEXTRA"[..],
        )
        .unwrap();
        assert_eq!(
            (r.status, r.text(), r.header("x-a")),
            (200, "hi".into(), Some("b"))
        );
        let r = read_response(
            &mut &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1;x\r\nc\r\n0\r\n\r\n"[..],
        )
        .unwrap();
        assert_eq!(r.text(), "abc");
        let r =
            read_response(&mut &b"HTTP/1.1 500 X\r\nConnection: close\r\n\r\nrest"[..]).unwrap();
        assert_eq!((r.status, r.text(), r.close), (500, "rest".into(), true));
    }

    #[test]
    fn a_broken_response_is_an_error_not_a_guess() {
        assert!(matches!(
            read_response(&mut &b""[..]),
            Err(HttpError::NoResponse(_))
        ));
        assert!(matches!(
            read_response(&mut &b"garbage\r\n\r\n"[..]),
            Err(HttpError::Broken(_))
        ));
        assert!(matches!(
            read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..]),
            Err(HttpError::Broken(_))
        ));
        assert!(matches!(
            read_response(
                &mut &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"[..]
            ),
            Err(HttpError::Broken(_))
        ));
    }
}
