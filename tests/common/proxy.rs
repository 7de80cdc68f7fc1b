//! A TCP proxy a test can cut: every open connection is dropped and new ones are refused until
//! it is restored — a database server that restarts, fails over or drops off the network, as
//! the client sees it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A running proxy from a local port to `upstream`; stopped on drop.
pub struct CuttableProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    upstream: SocketAddr,
    open: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every proxied connection, to be shut down by a cut.
    streams: Mutex<Vec<TcpStream>>,
}

impl CuttableProxy {
    /// Listens on a free local port and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = Arc::new(State {
            upstream,
            open: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let accepting = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                accepting.forward(client);
            }
        });
        Self { addr, state }
    }

    /// Drops every open connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        let mut streams = self.state.streams.lock().expect("proxy streams");
        self.state.open.store(false, Ordering::SeqCst);
        for stream in streams.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }
}

impl State {
    /// Connects to the upstream and copies bytes both ways until either side closes — unless
    /// the proxy is cut, checked under the same lock a cut takes, so no connection opened while
    /// a cut drains the list survives it.
    fn forward(&self, client: TcpStream) {
        let mut streams = self.streams.lock().expect("proxy streams");
        if !self.open.load(Ordering::SeqCst) {
            return;
        }
        let Ok(server) = TcpStream::connect(self.upstream) else { return };
        let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else { return };
        streams.extend(client.try_clone().ok());
        streams.extend(server.try_clone().ok());
        drop(streams);
        std::thread::spawn(move || pump(client, server));
        std::thread::spawn(move || pump(server_copy, client_copy));
    }
}

/// Copies `from` into `to` until either fails, then shuts both down.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(read) = from.read(&mut buffer) {
        if read == 0 || to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr);
    }
}
