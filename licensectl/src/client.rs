//! The protocol v1 HTTP client: reqwest with rustls trusting the system roots plus `SSL_CERT_FILE`,
//! proxies from the environment, connect 10 s / request 30 s timeouts, 64 KiB response cap.
