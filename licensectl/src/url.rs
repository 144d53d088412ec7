//! The delivery URL `<scheme>://<host>[:port]/v1/license/<TOKEN>`: parsing, the https/loopback rule,
//! and redaction. The TOKEN is a secret: `Display` and `Debug` never show it.
//!
//! Owns: the URL grammar of license-protocol.md ("Delivery URL"). Must not: log, or put the TOKEN in
//! an error (errors show [`DeliveryUrl::redacted`]-style text only).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::Error;

/// Longest TOKEN the protocol allows.
pub const MAX_TOKEN_LEN: usize = 256;
const PATH_PREFIX: &str = "/v1/license/";

#[derive(Clone, PartialEq, Eq)]
pub struct DeliveryUrl {
    full: String,
    /// `https` or `http`, lowercase.
    scheme: &'static str,
    /// host[:port] as written (IPv6 in brackets).
    authority: String,
    token: String,
}

impl DeliveryUrl {
    /// Validates scheme (https, or http to a loopback host), path and TOKEN syntax.
    /// Surrounding whitespace (a newline from a file) is ignored.
    pub fn parse(input: &str) -> Result<DeliveryUrl, Error> {
        let input = input.trim();
        let bad = |shown: String, problem: &str| Error::InvalidUrl {
            shown,
            problem: problem.to_string(),
        };
        let Some((scheme_raw, rest)) = input.split_once("://") else {
            return Err(bad("(not shown)".into(), "it does not start with https://"));
        };
        let scheme = match scheme_raw.to_ascii_lowercase().as_str() {
            "https" => "https",
            "http" => "http",
            // What precedes "://" is not echoed: pasted text such as "<TOKEN> https://…" would be.
            _ => return Err(bad("(not shown)".into(), "the scheme must be https")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let shown_base = format!("{scheme}://{authority}");
        if authority.contains('@') {
            return Err(bad(
                format!("{scheme}://…"),
                "user names or passwords in the URL are not supported",
            ));
        }
        let host = parse_authority(authority).map_err(|p| bad(shown_base.clone(), p))?;
        let Some(token) = path.strip_prefix(PATH_PREFIX) else {
            return Err(bad(
                format!("{shown_base}/…"),
                "the path must be /v1/license/<TOKEN>",
            ));
        };
        let shown = format!("{shown_base}{PATH_PREFIX}…(redacted)");
        if token.is_empty() {
            return Err(bad(shown, "the TOKEN is missing"));
        }
        if token.contains(['?', '#']) {
            return Err(bad(shown, "query strings and fragments are not allowed"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(bad(shown, "the TOKEN is longer than 256 characters"));
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
        {
            return Err(bad(shown, "the TOKEN may contain only A-Z a-z 0-9 . _ ~ -"));
        }
        if scheme == "http" && !host.is_loopback() {
            return Err(Error::InsecureUrl {
                host: authority.to_string(),
            });
        }
        Ok(DeliveryUrl {
            full: format!("{scheme}://{authority}{PATH_PREFIX}{token}"),
            scheme,
            authority: authority.to_string(),
            token: token.to_string(),
        })
    }

    /// The full URL including the TOKEN. Only for building requests and `license_server.txt`.
    pub fn expose_secret(&self) -> &str {
        &self.full
    }

    /// e.g. `https://license.example.com/v1/license/TOK…(redacted)`. A short TOKEN shows no prefix,
    /// so the redacted form never contains the whole TOKEN.
    pub fn redacted(&self) -> String {
        let prefix = if self.token.len() >= 12 {
            &self.token[..3]
        } else {
            ""
        };
        format!(
            "{}://{}{PATH_PREFIX}{prefix}…(redacted)",
            self.scheme, self.authority
        )
    }

    /// host[:port], for error messages.
    pub fn host(&self) -> String {
        self.authority.clone()
    }

    /// The URL of a call relative to the delivery URL, e.g. `devices/<uuid>/sync`.
    pub fn join(&self, relative: &str) -> String {
        format!("{}/{relative}", self.full)
    }

    /// Replaces every occurrence of the TOKEN in `text` (server-provided messages, library errors)
    /// by `(redacted)`.
    pub fn scrub(&self, text: &str) -> String {
        text.replace(&self.token, "(redacted)")
    }
}

/// Replaces the TOKEN after every `/v1/license/` in `text` by `…(redacted)`: for text that echoes
/// user input verbatim, such as command-line parse errors.
pub(crate) fn redact_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(PATH_PREFIX) {
        let (head, tail) = rest.split_at(i + PATH_PREFIX.len());
        out.push_str(head);
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')))
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str("…(redacted)");
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    fn is_loopback(&self) -> bool {
        match self {
            Host::Ip(ip) => ip.is_loopback(),
            Host::Name(n) => n.eq_ignore_ascii_case("localhost"),
        }
    }
}

fn parse_authority(authority: &str) -> Result<Host, &'static str> {
    if authority.is_empty() {
        return Err("the host is missing");
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err("the IPv6 address is missing its closing ]");
        };
        let ip: Ipv6Addr = v6.parse().map_err(|_| "the IPv6 address is invalid")?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("unexpected text after the IPv6 address")?,
            ),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (h, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if h.is_empty() {
            return Err("the host is missing");
        }
        let host = if let Ok(ip) = h.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if h.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) {
            Host::Name(h.to_string())
        } else {
            return Err("the host name is invalid");
        };
        (host, port)
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err("the port must be a number from 1 to 65535"),
        }
    }
    Ok(host)
}

impl std::fmt::Display for DeliveryUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for DeliveryUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeliveryUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn https_and_loopback_http_are_accepted() {
        for ok in [
            "https://license.example.com/v1/license/TOKEN123",
            "https://license.example.com:8443/v1/license/a.b_c~d-e",
            "HTTPS://license.example.com/v1/license/T\n",
            "http://127.0.0.1:8080/v1/license/T",
            "http://127.9.8.7/v1/license/T",
            "http://[::1]:9/v1/license/T",
            "http://localhost:9/v1/license/T",
            "http://LocalHost/v1/license/T",
        ] {
            let url = DeliveryUrl::parse(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            assert!(url.expose_secret().contains("/v1/license/"), "{ok:?}");
        }
        let url = DeliveryUrl::parse("http://[::1]:9/v1/license/T").unwrap();
        assert_eq!(url.host(), "[::1]:9");
        assert_eq!(
            url.join("devices/x"),
            "http://[::1]:9/v1/license/T/devices/x"
        );
    }

    #[test]
    fn http_to_other_hosts_is_refused_as_usage() {
        for bad in [
            "http://license.example.com/v1/license/T",
            "http://10.0.0.1/v1/license/T",
            "http://[::2]/v1/license/T",
            "http://localhost.example.com/v1/license/T",
        ] {
            let e = DeliveryUrl::parse(bad).unwrap_err();
            assert!(matches!(e, Error::InsecureUrl { .. }), "{bad}: {e}");
            assert_eq!(e.kind(), ErrorKind::Usage);
        }
    }

    #[test]
    fn malformed_urls_are_usage_errors_without_the_token() {
        let secret = "SECRETTOKENVALUE";
        for bad in [
            format!("ftp://h/v1/license/{secret}"),
            format!("https://h/v2/license/{secret}"),
            format!("https://h/v1/license/{secret}?x=1"),
            format!("https://h/v1/license/{secret}/extra"),
            format!("https://u:p@h/v1/license/{secret}"),
            format!("https://h:0/v1/license/{secret}"),
            format!("https://h:99999/v1/license/{secret}"),
            format!("https://h x/v1/license/{secret}"),
            format!("https:///v1/license/{secret}"),
            format!("https://h/v1/license/{secret}%20"),
            format!("https://h/v1/license/{secret}!"),
            format!("{secret} https://h/v1/license/x"),
            format!("{secret}://h/v1/license/x"),
            "https://h/v1/license/".to_string(),
            secret.to_string(),
        ] {
            let e = DeliveryUrl::parse(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Usage, "{bad}");
            assert!(!e.to_string().contains(secret), "{bad}: {e}");
        }
    }

    #[test]
    fn tokens_in_echoed_text_are_redacted() {
        assert_eq!(
            redact_in("unrecognized 'https://h/v1/license/SECRET-1.x~y_z' and /v1/license/T2!"),
            "unrecognized 'https://h/v1/license/…(redacted)' and /v1/license/…(redacted)!"
        );
        assert_eq!(
            redact_in("nothing /v1/license/ here"),
            "nothing /v1/license/ here"
        );
    }

    #[test]
    fn token_length_limit_is_256() {
        let ok = format!("https://h/v1/license/{}", "a".repeat(256));
        assert!(DeliveryUrl::parse(&ok).is_ok());
        let bad = format!("https://h/v1/license/{}", "a".repeat(257));
        assert_eq!(
            DeliveryUrl::parse(&bad).unwrap_err().kind(),
            ErrorKind::Usage
        );
    }

    #[test]
    fn redaction_never_shows_the_token() {
        let url =
            DeliveryUrl::parse("https://license.example.com/v1/license/TOKEN1234567890").unwrap();
        assert_eq!(
            url.redacted(),
            "https://license.example.com/v1/license/TOK…(redacted)"
        );
        assert_eq!(url.to_string(), url.redacted());
        assert!(!format!("{url:?}").contains("TOKEN1234567890"));
        let short = DeliveryUrl::parse("https://h/v1/license/abc").unwrap();
        assert_eq!(short.redacted(), "https://h/v1/license/…(redacted)");
        assert_eq!(url.scrub("bad TOKEN1234567890 here"), "bad (redacted) here");
    }
}
