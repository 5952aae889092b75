//! IP address management for one node's pod CIDR, stored in files.
//!
//! # Layout
//! One directory per network: `<dataDir>/<network>/`, holding
//! - one record per allocated IP, named after the IP, holding `<containerID>\n<ifname>\n<ip>`;
//!   a record appears atomically (written to a temporary file, then hard-linked into place,
//!   which fails if the IP is taken), so a crash never leaves a half-written record;
//! - an index per attachment, `a-<16 hex digits of a hash of containerID and ifname>`: a second
//!   hard link to the same record, made *before* the record appears under its IP and removed
//!   *after* it disappears, so "who holds what" is one `stat` and allocation reads no file
//!   contents at all; an index whose inode no IP name shares is a leftover and counts for nothing;
//! - `last_reserved_ip`: where the round-robin search starts next (replaced atomically);
//! - `lock`: every operation holds an exclusive `flock` on it for its whole duration.
//!
//! The network address, the first host address (kept for the node, like a gateway) and the
//! broadcast address are never handed out.
//!
//! This crate must not touch the network: it only keeps the books.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

/// Why an address could not be allocated, looked up or released.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A file of the store could not be read, written or locked.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The subnet has no address to hand out once network, gateway and broadcast are kept back.
    #[error("subnet {0} is too small to allocate from (needs a prefix of /30 or shorter)")]
    SubnetTooSmall(Ipv4Net),
    /// Every allocatable address of the subnet is held.
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    /// A requested address is outside the subnet or one of the addresses kept back.
    #[error("requested address {ip} is not allocatable in {subnet}")]
    NotInRange {
        /// The address asked for.
        ip: Ipv4Addr,
        /// The network's subnet.
        subnet: Ipv4Net,
    },
    /// A requested address is held by another attachment.
    #[error("requested address {ip} is already allocated to {owner}")]
    Taken {
        /// The address asked for.
        ip: Ipv4Addr,
        /// Who holds it, `<containerID>/<ifname>`.
        owner: String,
    },
    /// The attachment already holds an address (ADD twice without a DEL).
    #[error("{container_id}/{ifname} already holds {ip}; delete it before adding it again")]
    Duplicate {
        /// The container ID of the attachment.
        container_id: String,
        /// Its interface name.
        ifname: String,
        /// The address it holds.
        ip: Ipv4Addr,
    },
}

/// Index name of an attachment (FNV-1a over `containerID \0 ifname`).
fn index_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("a-{h:016x}")
}

/// (containerID, ifname, ip) of a record's text.
fn parse_record(text: &str) -> (String, String, Option<Ipv4Addr>) {
    let mut lines = text.lines();
    let container_id = lines.next().unwrap_or_default().trim().to_string();
    let ifname = lines.next().unwrap_or_default().trim().to_string();
    let ip = lines.next().and_then(|l| l.trim().parse().ok());
    (container_id, ifname, ip)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One allocation: who holds which address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The allocated address.
    pub ip: Ipv4Addr,
    /// The container ID of the attachment holding it.
    pub container_id: String,
    /// Its interface name.
    pub ifname: String,
}

/// The allocator of one network on one node.
pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Net,
}

/// Holds the directory lock; released on drop (and by the kernel if the process dies).
struct Lock(File);

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by self.0 and stays open for the duration of the call.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Ipam {
    /// `data_dir/<network>` is created on first use.
    pub fn new(data_dir: &Path, network: &str, subnet: Ipv4Net) -> Result<Self, IpamError> {
        if subnet.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall(subnet));
        }
        Ok(Self {
            dir: data_dir.join(network),
            subnet: subnet.trunc(),
        })
    }

    /// The network's directory, `<dataDir>/<network>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// First and last address that may be handed out.
    fn range(&self) -> (u32, u32) {
        let net = u32::from(self.subnet.network());
        let bcast = u32::from(self.subnet.broadcast());
        (net + 2, bcast - 1)
    }

    /// Addresses that may be handed out.
    pub fn capacity(&self) -> u32 {
        let (first, last) = self.range();
        last - first + 1
    }

    fn lock(&self) -> Result<Lock, IpamError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        loop {
            // SAFETY: flock on an fd we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Lock(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(IpamError::Io { path, source: err });
            }
        }
    }

    fn read_records(&self) -> Result<Vec<Record>, IpamError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(IpamError::Io {
                    path: self.dir.clone(),
                    source: e,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(IpamError::Io { path, source: e }),
            };
            let (container_id, ifname, _) = parse_record(&text);
            out.push(Record {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }

    /// Every allocation, ordered by address.
    pub fn list(&self) -> Result<Vec<Record>, IpamError> {
        let _lock = self.lock()?;
        self.read_records()
    }

    /// The address held by `container_id`/`ifname`, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        self.held(container_id, ifname)
    }

    /// Looks the attachment up in its index: the address, if the index and the record under
    /// that address are the same file (otherwise the index is a leftover of a crash).
    fn held(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        use std::os::unix::fs::MetadataExt;
        let index = self.dir.join(index_name(container_id, ifname));
        let text = match fs::read_to_string(&index) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(IpamError::Io {
                    path: index,
                    source: e,
                });
            }
        };
        let (cid, ifn, ip) = parse_record(&text);
        let Some(ip) = ip.filter(|_| cid == container_id && ifn == ifname) else {
            return Ok(None);
        };
        let same = match (
            fs::metadata(&index),
            fs::metadata(self.dir.join(ip.to_string())),
        ) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        };
        Ok(same.then_some(ip))
    }

    /// Addresses taken: the names of the records (no contents read).
    fn taken(&self) -> Result<std::collections::HashSet<Ipv4Addr>, IpamError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => {
                return Err(IpamError::Io {
                    path: self.dir.clone(),
                    source: e,
                });
            }
        };
        let mut out = std::collections::HashSet::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            if let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            {
                out.insert(ip);
            }
        }
        Ok(out)
    }

    /// Allocates an address (the requested one, or the next free one after the last handed
    /// out, wrapping around) and records it for `container_id`/`ifname`.
    pub fn allocate(
        &self,
        container_id: &str,
        ifname: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        let _lock = self.lock()?;
        if let Some(ip) = self.held(container_id, ifname)? {
            return Err(IpamError::Duplicate {
                container_id: container_id.into(),
                ifname: ifname.into(),
                ip,
            });
        }
        let taken = self.taken()?;
        let (first, last) = self.range();
        if let Some(ip) = requested {
            let n = u32::from(ip);
            if n < first || n > last {
                return Err(IpamError::NotInRange {
                    ip,
                    subnet: self.subnet,
                });
            }
            if taken.contains(&ip) {
                let owner = fs::read_to_string(self.dir.join(ip.to_string()))
                    .map(|t| {
                        let (c, i, _) = parse_record(&t);
                        format!("{c}/{i}")
                    })
                    .unwrap_or_else(|_| "another container".into());
                return Err(IpamError::Taken { ip, owner });
            }
            self.write_record(ip, container_id, ifname)?;
            return Ok(ip);
        }
        let size = last - first + 1;
        let start = self
            .last_reserved()
            .map(u32::from)
            .filter(|n| (first..=last).contains(n))
            .map(|n| if n == last { first } else { n + 1 })
            .unwrap_or(first);
        for i in 0..size {
            let n = first + (start - first + i) % size;
            let ip = Ipv4Addr::from(n);
            if taken.contains(&ip) {
                continue;
            }
            match self.write_record(ip, container_id, ifname) {
                Ok(()) => return Ok(ip),
                // A record we could not see (written by an older version without the lock).
                Err(IpamError::Taken { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(IpamError::Exhausted(self.subnet))
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join("last_reserved_ip"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn write_record(
        &self,
        ip: Ipv4Addr,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), IpamError> {
        let tmp = self.dir.join(format!(".tmp-{}", std::process::id()));
        let target = self.dir.join(ip.to_string());
        let index = self.dir.join(index_name(container_id, ifname));
        write_file(&tmp, format!("{container_id}\n{ifname}\n{ip}").as_bytes())?;
        // The index first: a record never exists without it. Any index already there is a
        // leftover (`held` found no live record behind it).
        let _ = fs::remove_file(&index);
        if let Err(e) = fs::hard_link(&tmp, &index) {
            let _ = fs::remove_file(&tmp);
            return Err(IpamError::Io {
                path: index,
                source: e,
            });
        }
        let linked = fs::hard_link(&tmp, &target);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) => {
                let _ = fs::remove_file(&index);
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    return Err(IpamError::Taken {
                        ip,
                        owner: "another container".into(),
                    });
                }
                return Err(IpamError::Io {
                    path: target,
                    source: e,
                });
            }
        }
        let last = self.dir.join("last_reserved_ip");
        let tmp_last = self.dir.join(format!(".last-{}", std::process::id()));
        write_file(&tmp_last, ip.to_string().as_bytes())?;
        fs::rename(&tmp_last, &last).map_err(io(&last))?;
        Ok(())
    }

    /// Releases what `container_id`/`ifname` holds; `Ok(None)` when it holds nothing.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        let held = self.held(container_id, ifname)?;
        if let Some(ip) = held {
            // The record first, then its index: an index without a record counts for nothing.
            let path = self.dir.join(ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(IpamError::Io { path, source: e }),
            }
        }
        let index = self.dir.join(index_name(container_id, ifname));
        match fs::remove_file(&index) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(IpamError::Io {
                    path: index,
                    source: e,
                });
            }
        }
        Ok(held)
    }

    /// Releases every record whose attachment is not in `valid`; returns what was released.
    /// Keeps going past errors and returns them all.
    pub fn gc(
        &self,
        valid: &[(String, String)],
    ) -> Result<(Vec<Record>, Vec<IpamError>), IpamError> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        let mut errors = Vec::new();
        for r in self.read_records()? {
            if valid
                .iter()
                .any(|(c, i)| *c == r.container_id && *i == r.ifname)
            {
                continue;
            }
            let path = self.dir.join(r.ip.to_string());
            match fs::remove_file(&path) {
                Ok(()) => {
                    let _ = fs::remove_file(self.dir.join(index_name(&r.container_id, &r.ifname)));
                    released.push(r);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(IpamError::Io { path, source: e }),
            }
        }
        Ok((released, errors))
    }

    /// How many addresses are allocated (for STATUS); an error means the store is unusable.
    pub fn used(&self) -> Result<usize, IpamError> {
        let _lock = self.lock()?;
        Ok(self.taken()?.len())
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), IpamError> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    Ok(())
}

#[cfg(test)]
mod tests;
