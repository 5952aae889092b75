//! The built-in container: serves every declared port with the pod's name, like
//! `agnhost serve-hostname`. TCP speaks HTTP/1.1 (any request gets `200 OK` with the name as
//! the body, keep-alive honoured; `GET /clientip` answers with the client's `IP:port` as
//! agnhost's netexec does, which shows whether traffic was NATed); UDP answers every
//! datagram with the name.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// Serves forever (until killed). Errors binding a port end the process with that error.
pub fn serve(name: &str, tcp: &[u16], udp: &[u16]) -> std::io::Result<()> {
    let mut threads = Vec::new();
    for &port in tcp {
        let listener = TcpListener::bind(("0.0.0.0", port))?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = http(conn, &name);
                });
            }
        }));
    }
    for &port in udp {
        let socket = UdpSocket::bind(("0.0.0.0", port))?;
        let name = name.to_string();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(name.as_bytes(), peer);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Answers requests on one connection until the client closes it or asks to.
fn http(conn: TcpStream, name: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut close = request_line.trim_end().ends_with("HTTP/1.0");
        let mut body_len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                if k == "connection" {
                    close = v == "close";
                } else if k == "content-length" {
                    body_len = v.parse().unwrap_or(0);
                }
            }
        }
        if body_len > 0 {
            std::io::copy(
                &mut (&mut reader).take(body_len as u64),
                &mut std::io::sink(),
            )?;
        }
        let conn_hdr = if close { "close" } else { "keep-alive" };
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let body = if path == "/clientip" {
            peer.as_str()
        } else {
            name
        };
        // One write per response, so a client sees it in one segment.
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn_hdr}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

use std::io::Read;
