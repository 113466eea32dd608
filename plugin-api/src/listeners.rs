//! Listening sockets that outlive the components using them, so that a reload rebuilding a
//! receiver on the same address hands the socket over instead of closing it: no connection is
//! refused in between.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Listeners {
    open: Mutex<HashMap<String, TcpListener>>,
}

impl Listeners {
    /// A listener on `address` (`host:port`) for component `owner`: the one already open there,
    /// or a new one. Port 0 means a free port of the component's own, kept for it across reloads.
    /// Non-blocking, ready for tokio.
    pub fn bind(&self, owner: &str, address: &str) -> std::io::Result<TcpListener> {
        let key = if address.ends_with(":0") {
            format!("{owner}@{address}")
        } else {
            address.to_owned()
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(listener) = open.get(&key) {
            return listener.try_clone();
        }
        let listener = TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        let handed_out = listener.try_clone()?;
        open.insert(key, listener);
        Ok(handed_out)
    }

    /// Lets go of the sockets not bound to one of `in_use` (a component still serving on one
    /// keeps it open until it stops).
    pub fn keep_serving(&self, in_use: &[std::net::SocketAddr]) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, listener| listener.local_addr().is_ok_and(|a| in_use.contains(&a)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_address_gives_the_same_socket() {
        let listeners = Listeners::default();
        let first = listeners.bind("http", "127.0.0.1:0").unwrap();
        let second = listeners.bind("http", "127.0.0.1:0").unwrap();
        assert_eq!(first.local_addr().unwrap(), second.local_addr().unwrap());
        let other = listeners.bind("prometheus", "127.0.0.1:0").unwrap();
        assert_ne!(other.local_addr().unwrap(), first.local_addr().unwrap());
        listeners.keep_serving(&[]);
        let third = listeners.bind("http", "127.0.0.1:0").unwrap();
        drop((first, second));
        assert!(third.local_addr().is_ok());
    }
}
