//! Binding the HTTP listening socket: privitty-init binds it once and hands it to every edged
//! generation; an edged started on its own binds it itself. Both bind it here, the same way.
//!
//! Owns: the socket options and the backlog. Must not: accept (connections that arrive while no
//! one accepts wait in the backlog, which is what carries them across a swap).

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Queue length for connections that arrive during a swap or beyond edged's connection cap (the
/// kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr}: {source}; is another service using it? choose a free address with {} or --listen",
    crate::env::LISTEN
)]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Binds and listens on `addr` (port 0 picks a free port; see `local_addr`). The socket blocks;
/// a caller that serves it from an async runtime sets it non-blocking.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let wrap = |source| BindError { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(wrap)?;
    // A restarted container or edged must not wait for the previous one's TIME_WAIT connections.
    socket.set_reuse_address(true).map_err(wrap)?;
    socket.bind(&addr.into()).map_err(wrap)?;
    socket.listen(BACKLOG).map_err(wrap)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_wait_in_the_backlog_until_someone_accepts() {
        use std::io::{Read, Write};
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts yet: the connects still succeed, and what they send waits too.
        let mut clients: Vec<std::net::TcpStream> = (0..20)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect while nobody accepts"))
            .collect();
        for c in &mut clients {
            c.write_all(b"x").unwrap();
        }
        for _ in 0..20 {
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"x");
        }
    }

    #[test]
    fn a_taken_address_names_itself_and_the_fix() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr).unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
        assert!(err.contains("PRIVITTY_LISTEN"), "{err}");
        assert!(err.contains("--listen"), "{err}");
    }
}
