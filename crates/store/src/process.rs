//! [`EtcdProcess`]: a single-member etcd server on loopback, for the lab and integration tests.
//!
//! Blocking (std only) so it can be used before or outside a tokio runtime; readiness is
//! checked with a plain HTTP `GET /health` on the client port.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::StoreError;

/// How long [`EtcdProcess::start`] waits for the server to report healthy.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
const HEALTH_IO_TIMEOUT: Duration = Duration::from_millis(500);
/// Fresh ports can be taken by someone else between picking and etcd binding them.
const START_ATTEMPTS: usize = 3;
/// Bytes of `etcd.log` quoted in a start error.
const LOG_TAIL: u64 = 1500;

/// The etcd binary to run: `$FLATNET_ETCD`, else `/usr/bin/etcd`, else the first `etcd` on
/// `PATH`, else plain `etcd` (and spawning reports it missing).
pub fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLATNET_ETCD").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let debian = Path::new("/usr/bin/etcd");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// A running etcd server; dropping it kills the server (SIGKILL) and reaps it.
///
/// Data lives in `<dir>/etcd`, output goes to `<dir>/etcd.log`. The server stays in the
/// caller's process group, so a daemonising caller detaches itself first.
#[derive(Debug)]
pub struct EtcdProcess {
    /// `http://127.0.0.1:<client port>`.
    pub endpoint: String,
    /// The server's process id.
    pub pid: u32,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

impl EtcdProcess {
    /// Start on two free loopback ports and wait until it answers (at most [`START_TIMEOUT`]).
    pub fn start(dir: &Path) -> Result<Self, StoreError> {
        Self::start_with(dir, false)
    }

    /// Like [`EtcdProcess::start`], but the server runs in a session of its own, so it
    /// outlives the caller's terminal and process group (the lab daemonises it this way).
    pub fn start_in_own_session(dir: &Path) -> Result<Self, StoreError> {
        Self::start_with(dir, true)
    }

    fn start_with(dir: &Path, own_session: bool) -> Result<Self, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (client_port, peer_port) = free_ports()?;
            match Self::spawn(dir, client_port, peer_port, own_session) {
                Err(StoreError::Other(msg))
                    if attempt < START_ATTEMPTS && msg.contains("exited") =>
                {
                    tracing::debug!(%msg, "etcd exited at start, retrying on other ports");
                }
                other => return other,
            }
        }
    }

    /// Start on the given ports with the data under `dir`: after [`EtcdProcess::stop`], the
    /// same ports and data dir bring the same member (and its keys) back.
    pub fn start_on(dir: &Path, client_port: u16, peer_port: u16) -> Result<Self, StoreError> {
        Self::spawn(dir, client_port, peer_port, false)
    }

    /// [`EtcdProcess::start_on`] in a session of its own (see [`EtcdProcess::start_in_own_session`]).
    pub fn start_on_in_own_session(
        dir: &Path,
        client_port: u16,
        peer_port: u16,
    ) -> Result<Self, StoreError> {
        Self::spawn(dir, client_port, peer_port, true)
    }

    fn spawn(
        dir: &Path,
        client_port: u16,
        peer_port: u16,
        own_session: bool,
    ) -> Result<Self, StoreError> {
        let io_err = |what: &str, e: std::io::Error| {
            StoreError::Other(format!("start etcd in {}: {what}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(|e| io_err("create dir", e))?;
        let log_path = dir.join("etcd.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_err("open etcd.log", e))?;
        let log_err = log.try_clone().map_err(|e| io_err("open etcd.log", e))?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data_dir = dir.join("etcd");
        let binary = etcd_binary();

        let mut command = Command::new(&binary);
        command
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("default={peer_url}"))
            // etcd 3.4 ignores --log-level with its default (capnslog) logger.
            .args(["--logger", "zap", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // ETCD_* variables would override or conflict with the flags above.
        for (name, _) in std::env::vars_os() {
            let is_etcd = name.to_str().is_some_and(|n| n.starts_with("ETCD_"));
            if is_etcd && name != "ETCD_UNSUPPORTED_ARCH" {
                command.env_remove(name);
            }
        }
        if own_session {
            use std::os::unix::process::CommandExt;
            // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .map_err(|e| StoreError::Other(format!("start etcd {}: {e}", binary.display())))?;
        let mut process = EtcdProcess {
            endpoint: client_url,
            pid: child.id(),
            child: Some(child),
            client_port,
            peer_port,
            dir: dir.to_path_buf(),
        };
        // On error `process` drops here, which kills the half-started server.
        process.wait_ready(START_TIMEOUT)?;
        tracing::debug!(endpoint = %process.endpoint, pid = process.pid, "etcd started");
        Ok(process)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        return Err(StoreError::Other(format!(
                            "etcd on {} exited ({status}) before answering; {}",
                            self.endpoint,
                            self.log_tail()
                        )));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        return Err(StoreError::Other(format!(
                            "etcd on {}: wait: {e}",
                            self.endpoint
                        )));
                    }
                }
            }
            if healthy(self.client_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "etcd on {} not healthy within {}s; {}",
                    self.endpoint,
                    limit.as_secs(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn log_tail(&self) -> String {
        let path = self.log_path();
        let tail = File::open(&path).and_then(|mut f| {
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)))?;
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        });
        match tail {
            Ok(t) => format!("end of {}: {}", path.display(), t.trim()),
            Err(e) => format!("cannot read {}: {e}", path.display()),
        }
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The port peers would connect to (on 127.0.0.1; unused by a single member).
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The directory given at start (holds `etcd/` and `etcd.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/etcd.log`, the server's output.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// True while the server process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kill (SIGKILL) and reap the server; does nothing if already stopped or detached.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                tracing::debug!(pid = self.pid, error = %e, "kill etcd");
            }
            if let Err(e) = child.wait() {
                tracing::warn!(pid = self.pid, error = %e, "wait for etcd");
            }
        }
    }

    /// Leave the server running past this guard; returns its pid (stop it with a signal).
    pub fn detach(mut self) -> u32 {
        // Dropping a std Child neither kills nor waits for the process.
        drop(self.child.take());
        self.pid
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two distinct free loopback ports (both held while picking so they differ).
fn free_ports() -> Result<(u16, u16), StoreError> {
    let bind = || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(|e| StoreError::Other(format!("pick a free port on 127.0.0.1: {e}")))
    };
    let (client, _client_listener) = bind()?;
    let (peer, _peer_listener) = bind()?;
    Ok((client, peer))
}

/// `GET /health` answers `{"health":"true"}` once the member has a leader and serves requests.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, HEALTH_IO_TIMEOUT) else {
        return false;
    };
    let setup = stream
        .set_read_timeout(Some(HEALTH_IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HEALTH_IO_TIMEOUT)))
        .and_then(|()| stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"));
    if setup.is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let (a, b) = free_ports().unwrap();
        assert_ne!(a, b);
        assert!(a > 0 && b > 0);
    }

    #[test]
    fn nothing_listening_is_not_healthy() {
        let (port, _) = free_ports().unwrap();
        assert!(!healthy(port));
    }
}
