//! The listening socket the supervisor binds once and hands to every generation.
//!
//! Owns: binding `PRIVITTY_LISTEN` with the options a hand-over needs. Must not accept: connections
//! that arrive while no generation accepts wait in this socket's backlog, and the backlog lives as
//! long as we keep the socket open — which is our whole life.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Queue length for connections that arrive during a swap (the kernel caps it at `somaxconn`).
pub const BACKLOG: i32 = 1024;

/// The `LISTEN_FDNAMES` entry edged's socket gets.
pub const FD_NAME: &str = "http";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr}: {source}; choose a free address with PRIVITTY_LISTEN or --listen"
)]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Binds and listens on `addr` (port 0 picks a free port; see `local_addr`).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let wrap = |source| BindError { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(wrap)?;
    // A restarted container must not wait for the previous one's TIME_WAIT connections.
    socket.set_reuse_address(true).map_err(wrap)?;
    socket.bind(&addr.into()).map_err(wrap)?;
    socket.listen(BACKLOG).map_err(wrap)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn connections_wait_in_the_backlog_until_someone_accepts() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // nobody accepts yet: the connects still succeed
        let mut clients: Vec<TcpStream> = (0..20)
            .map(|_| TcpStream::connect(addr).expect("connect while nobody accepts"))
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
    }
}
