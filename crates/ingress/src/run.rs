//! The process: which thread lives in which network namespace.
//!
//! The gateway starts in the namespace it serves from (in the lab, the pod's; on a real host,
//! the host's). There it binds its listeners and builds the proxy runtime on the calling
//! thread, so every worker thread, every accepted connection and every backend connection is
//! made in that namespace (threads inherit the namespace of the thread that creates them).
//! The store client gets a thread of its own which, when `store_netns` is given, first moves
//! itself into that namespace (setns) and then builds a small current-thread runtime for etcd:
//! in the lab, etcd listens on the root namespace's loopback, which pods cannot reach. The two
//! halves share only [`Shared`] (route and certificate tables swapped atomically).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::proxy::{self, Proxy, Shared};
use crate::tls;
use crate::watch::{self, WatchConfig};

/// Why the gateway could not start, or its store side stopped. The crate's own errors it holds
/// (`error`, `Tls`, `Store`) are part of the message, not chained as a `source`: the binary
/// prints the chain (`{:#}`), which would say them twice.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listener could not be bound (address in use, or not on this namespace's interfaces).
    #[error("bind {addr}: {source}")]
    Bind {
        /// The `--http` or `--https` address.
        addr: SocketAddr,
        /// The bind (or making the socket non-blocking) failed.
        source: std::io::Error,
    },
    /// The store's network namespace could not be opened.
    #[error("store namespace {path}: {error}")]
    StoreNetns {
        /// The `--store-netns` path: a namespace file or a pid file.
        path: PathBuf,
        /// Why it could not be opened.
        error: NetnsError,
    },
    /// The store client's thread could not move into the store's network namespace.
    #[error("store namespace {path}: setns: {error}")]
    StoreSetns {
        /// The `--store-netns` path: a namespace file or a pid file.
        path: PathBuf,
        /// What setns said.
        error: nix::errno::Errno,
    },
    /// A thread or tokio runtime could not be made, or a listener not registered with it.
    #[error("runtime: {0}")]
    Runtime(std::io::Error),
    /// The TLS server configuration could not be built.
    #[error("tls: {0}")]
    Tls(tls::ConfigError),
    /// The store (etcd) could not be reached at start.
    #[error("store: {0}")]
    Store(store::StoreError),
    /// Neither `--http` nor `--https` is given.
    #[error("--http and --https are both off: nothing to serve")]
    NothingToServe,
}

/// How the gateway runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// etcd endpoints (`http://host:port`).
    pub etcd: Vec<String>,
    /// The key prefix of the flatnet objects in etcd.
    pub store_prefix: String,
    /// Namespace file (or pid file of a process in it) the store client moves to; None: stay.
    pub store_netns: Option<PathBuf>,
    /// Address of the cleartext HTTP listener (HTTP/1.1 and h2c); None: no cleartext listener.
    pub http: Option<SocketAddr>,
    /// Address of the TLS listener (SNI, ALPN h2/http/1.1); None: no TLS listener.
    pub https: Option<SocketAddr>,
    /// Proxy worker threads; 1 runs everything on the calling thread.
    pub workers: usize,
    /// What the store side follows and publishes.
    pub watch: WatchConfig,
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, GatewayError> {
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| GatewayError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| GatewayError::Bind { addr, source })?;
    Ok(l)
}

/// Runs the gateway until `shutdown` resolves (on the proxy runtime) or the store side fails
/// to start. Blocks the calling thread.
pub fn run<F>(opts: Options, shutdown: F) -> Result<(), GatewayError>
where
    F: std::future::Future<Output = ()>,
{
    if opts.http.is_none() && opts.https.is_none() {
        return Err(GatewayError::NothingToServe);
    }
    let http = opts.http.map(bind).transpose()?;
    let https = opts.https.map(bind).transpose()?;
    let shared = Arc::new(Shared::default());

    // The store side: its own thread, namespace and runtime.
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<GatewayError>();
    {
        let shared = shared.clone();
        let opts = opts.clone();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                if let Err(e) = store_thread(opts, shared) {
                    let _ = fail_tx.send(e);
                }
            })
            .map_err(GatewayError::Runtime)?;
    }

    let rt = if opts.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.workers)
            .enable_all()
            .build()
    }
    .map_err(GatewayError::Runtime)?;
    rt.block_on(async move {
        let proxy = Arc::new(Proxy::new(shared.clone()));
        if let Some(l) = http {
            let l = tokio::net::TcpListener::from_std(l).map_err(GatewayError::Runtime)?;
            tracing::info!(addr = ?l.local_addr().ok(), "serving http");
            tokio::spawn(proxy::serve(l, None, proxy.clone()));
        }
        if let Some(l) = https {
            let l = tokio::net::TcpListener::from_std(l).map_err(GatewayError::Runtime)?;
            let cfg = tls::server_config(shared.certs.clone()).map_err(GatewayError::Tls)?;
            tracing::info!(addr = ?l.local_addr().ok(), "serving https");
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
            tokio::spawn(proxy::serve(l, Some(acceptor), proxy.clone()));
        }
        tokio::select! {
            () = shutdown => Ok(()),
            Ok(e) = fail_rx => Err(e),
        }
    })
}

/// Why [`netns_file`] could not open a network namespace. The messages leave the path out:
/// callers put it first (`store namespace <path>: ...`, `--store-netns <path>: ...`).
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("{source}")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// The path is a pid file, and that process's namespace could not be opened (the process
    /// is gone, or `/proc` refuses).
    #[error("pid file names {pid}: {}: {source}", .ns.display())]
    Pid {
        /// The pid file.
        path: PathBuf,
        /// The pid it holds.
        pid: u32,
        /// `/proc/<pid>/ns/net`.
        ns: PathBuf,
        /// Why it could not be opened.
        source: std::io::Error,
    },
}

/// Opens a network namespace file, or, when `path` is a pid file (a number), the namespace of
/// that process (`/proc/<pid>/ns/net`), so a lab can name "where etcd runs" by etcd's pid file
/// (some sandboxes refuse to open `/proc/1/ns/net`).
pub fn netns_file(path: &Path) -> Result<std::fs::File, NetnsError> {
    // Reading a namespace file fails (EINVAL); a pid file reads as a number.
    if let Ok(text) = std::fs::read_to_string(path)
        && let Ok(pid) = text.trim().parse::<u32>()
    {
        let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        return std::fs::File::open(&ns).map_err(|source| NetnsError::Pid {
            path: path.to_path_buf(),
            pid,
            ns,
            source,
        });
    }
    std::fs::File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn store_thread(opts: Options, shared: Arc<Shared>) -> Result<(), GatewayError> {
    if let Some(path) = &opts.store_netns {
        let f = netns_file(path).map_err(|error| GatewayError::StoreNetns {
            path: path.clone(),
            error,
        })?;
        // Only this thread moves: the proxy threads stay where the listeners are.
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|error| {
            GatewayError::StoreSetns {
                path: path.clone(),
                error,
            }
        })?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(GatewayError::Runtime)?;
    rt.block_on(async move {
        let store = store::EtcdStore::connect(&opts.etcd, &opts.store_prefix)
            .await
            .map_err(GatewayError::Store)?;
        tracing::info!(etcd = ?opts.etcd, "store connected");
        watch::run(store, shared, opts.watch).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The binary's `anyhow` edge takes these as they are.
    #[test]
    fn errors_can_cross_threads_into_anyhow() {
        fn boxable<E: std::error::Error + Send + Sync + 'static>() {}
        boxable::<GatewayError>();
        boxable::<NetnsError>();
    }

    #[test]
    fn netns_errors_name_the_file_and_keep_their_text() {
        let missing = Path::new("/nonexistent/flatnet-netns");
        let e = netns_file(missing).unwrap_err();
        assert!(
            matches!(&e, NetnsError::Open { path, .. } if path == missing),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "No such file or directory (os error 2)");
        // A pid file naming a process that cannot exist.
        let pid_file =
            std::env::temp_dir().join(format!("flatnet-netns-{}.pid", std::process::id()));
        std::fs::write(&pid_file, "4294967295\n").unwrap();
        let e = netns_file(&pid_file).unwrap_err();
        // Removed before any assertion can fail (netns_file does not panic).
        std::fs::remove_file(&pid_file).unwrap();
        assert!(
            matches!(&e, NetnsError::Pid { path, pid: 4294967295, .. } if *path == pid_file),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "pid file names 4294967295: /proc/4294967295/ns/net: No such file or directory (os error 2)"
        );
    }
}
