//! A scripted raw-TCP backend and a gateway in front of it, shared by the tests that drive the
//! whole gateway over loopback.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ingress::pool::Pool;
use ingress::routes::{ClassFilter, Snapshot, compile};
use ingress::{Proxy, Shared};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// What a scripted backend does with one request.
pub struct Answer {
    /// Written one after another, with a short pause between (to split reads).
    pub pieces: Vec<Vec<u8>>,
    /// Close the connection after writing.
    pub close: bool,
}

pub fn answer(pieces: &[&[u8]], close: bool) -> Answer {
    Answer {
        pieces: pieces.iter().map(|p| p.to_vec()).collect(),
        close,
    }
}

/// A raw-TCP backend: reads each request (head and body), records it, and answers it with
/// `script(connection number, request number on that connection, raw request)`.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

pub type Script = dyn Fn(usize, usize, &str) -> Answer + Send + Sync;

pub async fn backend(script: Arc<Script>) -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (acc, reqs) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let conn_no = acc.fetch_add(1, Ordering::SeqCst);
            let (script, reqs) = (script.clone(), reqs.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for req_no in 0.. {
                    let Some(raw) = read_request(&mut s, &mut buf).await else {
                        return;
                    };
                    reqs.lock().unwrap().push(raw.clone());
                    let a = script(conn_no, req_no, &raw);
                    for (i, p) in a.pieces.iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if s.write_all(p).await.is_err() {
                            return;
                        }
                    }
                    if a.close {
                        return;
                    }
                }
            });
        }
    });
    Backend {
        addr,
        accepted,
        requests,
    }
}

/// One request off the stream (head, then a Content-Length or chunked body); None at EOF.
/// Chunks are read one by one as a strict server reads them: at a chunk-size line that is not
/// `1*HEXDIG [";" ...]` the request ends (the script sees it and may answer 400).
pub async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let end = if let Some(n) = len {
        while buf.len() < head_end + n {
            fill(s, buf).await?;
        }
        head_end + n
    } else if head.contains("transfer-encoding: chunked") {
        let mut at = head_end;
        loop {
            let line_end = line(s, buf, at).await?;
            let size = buf[at..line_end].split(|b| *b == b';').next().unwrap();
            let size = size.trim_ascii_end();
            let size = std::str::from_utf8(size)
                .ok()
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|t| u64::from_str_radix(t, 16).ok());
            at = line_end + 2;
            match size {
                None => break at,
                Some(0) => loop {
                    // Trailer lines up to an empty one.
                    let end = line(s, buf, at).await?;
                    let empty = end == at;
                    at = end + 2;
                    if empty {
                        break;
                    }
                },
                Some(n) => {
                    while buf.len() < at + n as usize + 2 {
                        fill(s, buf).await?;
                    }
                    at += n as usize + 2;
                    continue;
                }
            }
            break at;
        }
    } else {
        head_end
    };
    let raw = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Some(raw)
}

/// Where the CRLF ending the line at `buf[at..]` is (reading more as needed); None at EOF.
async fn line(s: &mut TcpStream, buf: &mut Vec<u8>, at: usize) -> Option<usize> {
    loop {
        if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
            return Some(at + i);
        }
        fill(s, buf).await?;
    }
}

pub async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A gateway routing host `b.test` to `backend`; returns its address and the proxy.
pub async fn gateway(backend: SocketAddr) -> (SocketAddr, Arc<Proxy>) {
    gateway_with(backend, Pool::default()).await
}

/// [`gateway`] forwarding through `pool`.
pub async fn gateway_with(backend: SocketAddr, pool: Pool) -> (SocketAddr, Arc<Proxy>) {
    let mut snap = Snapshot {
        ingresses: vec![ingress(
            "default",
            "gw",
            json!({"rules": [rule(Some("b.test"), vec![path("Prefix", "/", be("b", 80))])]}),
        )],
        ..Default::default()
    };
    snap.services.push(service("default", "b", 80, None));
    snap.slices.push(slice(
        "default",
        "b",
        None,
        backend.port(),
        &[("127.0.0.1", true)],
    ));
    let shared = Arc::new(Shared::default());
    shared.publish(compile(&snap, &ClassFilter::default()));
    let proxy = Arc::new(Proxy::with_pool(shared, pool));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(ingress::proxy::serve(l, None, proxy.clone()));
    (addr, proxy)
}
