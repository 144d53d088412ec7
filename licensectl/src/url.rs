//! The delivery URL `<scheme>://<host>[:port]/v1/license/<TOKEN>`: parsing, the https/loopback rule,
//! and redaction. The TOKEN is a secret: `Display` and `Debug` never show it.

use crate::Error;

#[derive(Clone, PartialEq, Eq)]
pub struct DeliveryUrl {
    full: String,
}

impl DeliveryUrl {
    /// Validates scheme (https, or http to a loopback host), path and TOKEN syntax.
    pub fn parse(input: &str) -> Result<DeliveryUrl, Error> {
        let _ = input;
        todo!("licensectl: DeliveryUrl::parse")
    }

    /// The full URL including the TOKEN. Only for building requests and `license_server.txt`.
    pub fn expose_secret(&self) -> &str {
        &self.full
    }

    /// e.g. `https://license.example.com/v1/license/TOK…(redacted)`.
    pub fn redacted(&self) -> String {
        todo!("licensectl: DeliveryUrl::redacted")
    }

    /// host[:port], for error messages.
    pub fn host(&self) -> String {
        todo!("licensectl: DeliveryUrl::host")
    }
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
