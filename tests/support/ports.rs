//! Free loopback ports for the nodes, the tests and the bench.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free loopback port below the kernel's ephemeral range (which starts at 32768), so that no port picked
/// here can be handed out meanwhile to a server binding a random port (`:-1`), as the nats-servers' monitoring
/// listeners do.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 500) * 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 12_000) as u16;
        if port < 32_000 && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `n` distinct free ports (see [`free_port`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}
