//! Probes across namespaces: TCP servers (one that answers with its name), a client asking
//! them, and an HTTP GET.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::TestNs;

/// A TCP server in `ns` on `port` (all addresses) that answers every connection with `name`
/// and closes it; it stops when the returned flag is set. Panics when it cannot listen.
pub fn name_server(ns: &TestNs, port: u16, name: &'static str) -> Arc<AtomicBool> {
    tcp_server(ns, port, move |mut s| {
        let _ = s.write_all(name.as_bytes());
    })
}

/// A TCP server in `ns` on `port` (all addresses) that hands every connection it accepts to
/// `serve`, on its accepting thread, until the returned flag is set. Panics when it cannot
/// listen.
pub fn tcp_server(
    ns: &TestNs,
    port: u16,
    serve: impl Fn(TcpStream) + Send + 'static,
) -> Arc<AtomicBool> {
    let listener = ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap_or_else(|e| panic!("listen on {port} in {}: {e}", ns.name()));
    listener
        .set_nonblocking(true)
        .unwrap_or_else(|e| panic!("nonblocking listener: {e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => serve(s),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    stop
}

/// Connects from `ns` to `addr` (`a.b.c.d:port`) and reads the answer to its end; the error
/// kind when connecting or reading fails. Connecting waits at most 2 s.
pub fn ask(ns: &TestNs, addr: &str) -> Result<String, ErrorKind> {
    ask_within(ns, addr, Duration::from_secs(2))
}

/// [`ask`] with a connect timeout of `timeout` (reading still waits at most 2 s).
pub fn ask_within(ns: &TestNs, addr: &str, timeout: Duration) -> Result<String, ErrorKind> {
    let addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("not a socket address {addr:?}: {e}"));
    let mut s = ns
        .run(|| TcpStream::connect_timeout(&addr, timeout))
        .map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.kind())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.kind())?;
    Ok(out)
}

/// `GET path` from `ns` to `addr` (`a.b.c.d:port`) over HTTP/1.1: the status code (0 when the
/// answer has none) and the whole answer (headers and body) as text, or the error kind when
/// connecting, writing or reading fails. Connecting and reading wait at most 2 s each.
pub fn http_get(ns: &TestNs, addr: &str, path: &str) -> Result<(u16, String), ErrorKind> {
    let addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("not a socket address {addr:?}: {e}"));
    let mut s = ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.kind())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .map_err(|e| e.kind())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.kind())?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}
