//! nftables: set and map *elements* over raw nfnetlink, and the `nft` tool for structure.
//!
//! The structure of a table (the table, its sets and maps, chains, rules) is small and is
//! written with `nft -f -` ([`run_script`]). Elements can be many (a service proxy holds one per
//! service and endpoint), and `nft` spends most of its time parsing them, so they are sent by
//! [`Nft::commit`] as one nfnetlink batch: one transaction that applies whole or not at all.
//!
//! # Layout
//! - `types`: [`Field`], [`Element`], [`Data`], [`Verdict`] and the kernel's byte layout of
//!   keys and values.
//! - `batch`: [`Batch`], pure: the operations of one transaction and their encoding.
//! - `wire`: nfnetlink framing (message writer, attribute reader, acknowledgements).
//! - `tool`: [`run_script`] and [`list_table_json`], which run the `nft` binary.
//!
//! Sets and maps must exist (made by a script) before elements are added. Interval sets are
//! supported when their key is a concatenation (the kernel's `pipapo` type): each element is
//! one range per field, sent as `NFTA_SET_ELEM_KEY` and `NFTA_SET_ELEM_KEY_END`
//! ([`Element::range`], [`Batch::delete_range`]). Single-field interval sets (start and
//! end elements, `NFT_SET_ELEM_INTERVAL_END`) and catch-all elements are not supported here.

mod batch;
mod tool;
mod types;
mod wire;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

pub use batch::Batch;
pub use tool::{list_table_json, run_script};
pub use types::{Data, Element, Family, Field, FieldKind, Verdict, display_fields, display_range};

use crate::netns::{NetNs, NetnsError};
use wire::{
    NFGENMSG_LEN, NFT_MSG_GETSETELEM, NFT_MSG_NEWSETELEM, NFTA_DATA_VALUE, NFTA_DATA_VERDICT,
    NFTA_LIST_ELEM, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_KEY_END, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_TIMEOUT, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    SET_ELEM_FLAGS_UNSUPPORTED, Writer, attr, attrs, be32, be64, messages, nft_type, parse_ack,
    str_of,
};

/// Why an nftables operation failed; each variant names the batch, table or command.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The nftables netlink socket could not be created or bound.
    #[error("nftables netlink socket: {0}")]
    Socket(std::io::Error),
    /// The namespace to open the socket in could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A batch holds a value the kernel would reject; found before anything is sent.
    #[error("{context}: invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The batch, table or set the value belongs to.
        context: String,
        /// What the value is (`table name`, `set name`, ...).
        field: &'static str,
        /// The value as given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The kernel refused a request.
    #[error("{context}: {source}")]
    Kernel {
        /// The batch, table or set the request was for.
        context: String,
        /// The kernel's errno.
        source: std::io::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("{context}: cannot decode the kernel's answer: {detail}")]
    Decode {
        /// The batch, table or set the request was for.
        context: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The `nft` command failed.
    #[error("{command}: {detail}")]
    Tool {
        /// The command as run (`nft -f -`, with `in <netns path>` when inside a namespace).
        command: String,
        /// Why: it could not be started or fed, its exit status and stderr, or invalid JSON output.
        detail: String,
    },
}

impl NftError {
    /// The errno the kernel answered with, if this is a kernel error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// How long to wait for acknowledgements the kernel has not queued by the time `send`
/// returns (it processes a batch inside `send`, so this is only a safety net).
const ACK_WAIT: Duration = Duration::from_secs(5);
/// Receive buffer: larger than any datagram the kernel sends (dumps use at most 32 KiB).
const RECV_BUF: usize = 256 * 1024;
/// Receive queue room per acknowledgement (an skb's true size, with margin).
const ACK_ROOM: usize = 2048;
/// How often a dump that the ruleset changed under is retried.
const DUMP_ATTEMPTS: usize = 5;

/// A `NETLINK_NETFILTER` socket bound to one network namespace.
pub struct Nft {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    sndbuf: usize,
    rcvbuf: usize,
}

impl Nft {
    /// A socket in the namespace at `netns` (`/run/netns/NAME`), or in the calling thread's
    /// namespace when `None`.
    pub fn open(netns: Option<&Path>) -> Result<Self, NftError> {
        match netns {
            Some(path) => Self::in_netns(&NetNs::open(path)?),
            None => Self::here(),
        }
    }

    /// A socket created inside `ns` (the thread returns afterwards).
    pub fn in_netns(ns: &NetNs) -> Result<Self, NftError> {
        ns.run(Self::here)?
    }

    fn here() -> Result<Self, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftError::Socket)?;
        socket.bind_auto().map_err(NftError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NftError::Socket)?;
        // Errors echo only the failing request's header, and say which attribute failed.
        // Both are optional: without them errors are less precise, not wrong.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
        Ok(Nft {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
            sndbuf: 0,
            rcvbuf: 0,
        })
    }

    /// Applies `batch` as one transaction: all of it, or (on any error) none of it. The error
    /// names the set and, when the kernel says which, the element it refused.
    pub fn commit(&mut self, batch: &Batch) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.validate()?;
        let enc = batch.encode(self.seq.wrapping_add(1));
        self.seq = self.seq.wrapping_add(enc.requests() as u32 + 2);
        let context = batch.batch_context();
        let kernel = |what: &str, source| NftError::Kernel {
            context: format!("{context}: {what}"),
            source,
        };
        // The kernel takes a batch from one datagram: the socket must take it whole.
        if self.sndbuf < enc.bytes.len() + 64 * 1024 {
            let want = enc.bytes.len() + 64 * 1024;
            set_buffer(&self.socket, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, want)
                .map_err(|e| kernel("raise the send buffer", e))?;
            self.sndbuf = want;
        }
        let room = (enc.requests() + 2) * ACK_ROOM + 64 * 1024;
        if self.rcvbuf < room {
            set_buffer(&self.socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, room)
                .map_err(|e| kernel("raise the receive buffer", e))?;
            self.rcvbuf = room;
        }
        let sent = self
            .socket
            .send(&enc.bytes, 0)
            .map_err(|e| kernel(&format!("send {} bytes", enc.bytes.len()), e))?;
        if sent != enc.bytes.len() {
            return Err(kernel(
                &format!("sent {sent} of {} bytes", enc.bytes.len()),
                std::io::Error::from_raw_os_error(libc::EMSGSIZE),
            ));
        }
        tracing::debug!(
            table = %format!("{} {}", batch.family(), batch.table()),
            ops = batch.len(),
            requests = enc.requests(),
            bytes = enc.bytes.len(),
            "nft batch sent"
        );
        self.read_acks(batch, &enc)
    }

    /// Reads the acknowledgements of `enc` and turns the first error into an [`NftError`].
    fn read_acks(&mut self, batch: &Batch, enc: &batch::Encoded) -> Result<(), NftError> {
        let context = batch.batch_context();
        let decode = |detail: String| NftError::Decode {
            context: context.clone(),
            detail,
        };
        let mut first_err = None;
        let mut done = false;
        let mut lost = false;
        let mut acked = 0usize;
        loop {
            match self
                .socket
                .recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT | libc::MSG_TRUNC)
            {
                Ok(n) => {
                    if n > self.buf.len() {
                        return Err(decode(format!("a {n}-byte answer was truncated")));
                    }
                    for msg in messages(&self.buf[..n]) {
                        let msg = msg.map_err(&decode)?;
                        if msg.ty != NLMSG_ERROR {
                            continue;
                        }
                        let ack = parse_ack(&msg).map_err(&decode)?;
                        if !enc.is_ours(ack.seq) {
                            continue;
                        }
                        acked += 1;
                        // A refused batch header means nothing else is answered.
                        if ack.seq == enc.last_request_seq()
                            || (ack.seq == enc.begin_seq && ack.errno != 0)
                        {
                            done = true;
                        }
                        if ack.errno != 0 && first_err.is_none() {
                            first_err = Some(ack);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => lost = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if done || first_err.is_some() || lost || !wait_readable(&self.socket) {
                        break;
                    }
                }
                Err(e) => {
                    return Err(NftError::Kernel {
                        context: format!("{context}: read acknowledgements"),
                        source: e,
                    });
                }
            }
            if done && first_err.is_none() && !lost {
                break;
            }
        }
        if let Some(ack) = first_err {
            let mut what = batch.describe(enc, ack.seq, ack.offset);
            if let Some(m) = ack.message.filter(|m| !m.is_empty()) {
                what = format!("{what} ({m})");
            }
            return Err(NftError::Kernel {
                context: what,
                source: std::io::Error::from_raw_os_error(ack.errno),
            });
        }
        if lost {
            return Err(NftError::Kernel {
                context: format!(
                    "{context}: acknowledgements were lost; whether the transaction applied is unknown"
                ),
                source: std::io::Error::from_raw_os_error(libc::ENOBUFS),
            });
        }
        if !done {
            return Err(NftError::Kernel {
                context: format!(
                    "{context}: the kernel acknowledged {acked} of {} requests",
                    enc.requests()
                ),
                source: std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
            });
        }
        Ok(())
    }

    /// The elements of set or map `set` in table `inet table` (`NFT_MSG_GETSETELEM` dump),
    /// keys decoded as `key_shape` and values as `data_shape` (verdicts need no shape). The
    /// order is the kernel's. A timeout is reported only where it differs from the set's
    /// default.
    pub fn list_elements(
        &mut self,
        table: &str,
        set: &str,
        key_shape: &[FieldKind],
        data_shape: Option<&[FieldKind]>,
    ) -> Result<Vec<Element>, NftError> {
        self.list_elements_of(Family::Inet, table, set, key_shape, data_shape)
    }

    /// [`Nft::list_elements`] for a table of any family.
    pub fn list_elements_of(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        key_shape: &[FieldKind],
        data_shape: Option<&[FieldKind]>,
    ) -> Result<Vec<Element>, NftError> {
        let context = format!("list elements of {family} {table} {set}");
        for _ in 0..DUMP_ATTEMPTS {
            self.seq = self.seq.wrapping_add(1);
            let seq = self.seq;
            let mut w = Writer::default();
            let m = w.begin(
                nft_type(NFT_MSG_GETSETELEM),
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                family.nfproto(),
                0,
            );
            w.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
            w.attr_str(NFTA_SET_ELEM_LIST_SET, set);
            w.end(m);
            self.socket
                .send(&w.buf, 0)
                .map_err(|source| NftError::Kernel {
                    context: context.clone(),
                    source,
                })?;
            match self.read_dump(seq, &context, key_shape, data_shape)? {
                Some(out) => return Ok(out),
                None => tracing::debug!(%context, "ruleset changed during the dump; retrying"),
            }
        }
        Err(NftError::Kernel {
            context: format!("{context}: the ruleset changed during {DUMP_ATTEMPTS} dumps"),
            source: std::io::Error::from_raw_os_error(libc::EINTR),
        })
    }

    /// The elements of one dump; `None` when the kernel marked it interrupted.
    fn read_dump(
        &mut self,
        seq: u32,
        context: &str,
        key_shape: &[FieldKind],
        data_shape: Option<&[FieldKind]>,
    ) -> Result<Option<Vec<Element>>, NftError> {
        let decode = |detail: String| NftError::Decode {
            context: context.to_string(),
            detail,
        };
        let kernel = |source| NftError::Kernel {
            context: context.to_string(),
            source,
        };
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(kernel(e)),
            };
            if n > self.buf.len() {
                return Err(decode(format!("a {n}-byte answer was truncated")));
            }
            for msg in messages(&self.buf[..n]) {
                let msg = msg.map_err(&decode)?;
                if msg.seq != seq {
                    continue;
                }
                interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                match msg.ty {
                    NLMSG_DONE => {
                        let code = msg
                            .payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        if code != 0 {
                            return Err(kernel(std::io::Error::from_raw_os_error(
                                code.saturating_abs(),
                            )));
                        }
                        return Ok((!interrupted).then_some(out));
                    }
                    NLMSG_ERROR => {
                        let ack = parse_ack(&msg).map_err(&decode)?;
                        if ack.errno != 0 {
                            return Err(kernel(std::io::Error::from_raw_os_error(ack.errno)));
                        }
                    }
                    t if t == nft_type(NFT_MSG_NEWSETELEM) => {
                        let attrs_ = msg.payload.get(NFGENMSG_LEN..).unwrap_or_default();
                        let Some(list) = attr(attrs_, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                            continue;
                        };
                        for (ty, el) in attrs(list) {
                            if ty == NFTA_LIST_ELEM {
                                out.push(
                                    decode_element(el, key_shape, data_shape).map_err(&decode)?,
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn decode_element(
    el: &[u8],
    key_shape: &[FieldKind],
    data_shape: Option<&[FieldKind]>,
) -> Result<Element, String> {
    if let Some(flags) = attr(el, NFTA_SET_ELEM_FLAGS).and_then(be32)
        && flags & SET_ELEM_FLAGS_UNSUPPORTED != 0
    {
        return Err(format!(
            "element flags {flags:#x} (interval or catch-all elements are not supported)"
        ));
    }
    let key = attr(el, NFTA_SET_ELEM_KEY)
        .and_then(|k| attr(k, NFTA_DATA_VALUE))
        .ok_or("an element without a key")?;
    let key = types::decode_fields(key, key_shape).map_err(|e| format!("key: {e}"))?;
    let key_end = match attr(el, NFTA_SET_ELEM_KEY_END).and_then(|k| attr(k, NFTA_DATA_VALUE)) {
        Some(end) => {
            Some(types::decode_fields(end, key_shape).map_err(|e| format!("key end: {e}"))?)
        }
        None => None,
    };
    let data = match attr(el, NFTA_SET_ELEM_DATA) {
        None => None,
        Some(d) => {
            if let Some(v) = attr(d, NFTA_DATA_VERDICT) {
                Some(Data::Verdict(decode_verdict(v)?))
            } else if let Some(v) = attr(d, NFTA_DATA_VALUE) {
                let shape = data_shape.ok_or_else(|| {
                    format!(
                        "element {} has a value but no value shape was given",
                        display_fields(&key)
                    )
                })?;
                Some(Data::Concat(
                    types::decode_fields(v, shape).map_err(|e| format!("value: {e}"))?,
                ))
            } else {
                return Err("an element value that is neither data nor a verdict".into());
            }
        }
    };
    Ok(Element {
        key,
        key_end,
        data,
        timeout_ms: attr(el, NFTA_SET_ELEM_TIMEOUT).and_then(be64),
    })
}

fn decode_verdict(v: &[u8]) -> Result<Verdict, String> {
    let code = attr(v, NFTA_VERDICT_CODE)
        .and_then(be32)
        .ok_or("a verdict without a code")? as i32;
    let chain = || {
        attr(v, NFTA_VERDICT_CHAIN)
            .map(str_of)
            .ok_or_else(|| format!("verdict {code} without a chain"))
    };
    match code {
        types::NF_ACCEPT => Ok(Verdict::Accept),
        types::NF_DROP => Ok(Verdict::Drop),
        types::NFT_JUMP => Ok(Verdict::Jump(chain()?)),
        types::NFT_GOTO => Ok(Verdict::Goto(chain()?)),
        c => Err(format!("verdict code {c} is not supported")),
    }
}

/// Sets a socket buffer size with the privileged option (ignores `net.core.*mem_max`), or the
/// plain one (capped by it) without `CAP_NET_ADMIN`.
fn set_buffer(
    socket: &Socket,
    forced: libc::c_int,
    plain: libc::c_int,
    size: usize,
) -> std::io::Result<()> {
    // The kernel doubles the value; keep the doubled value representable.
    let value = size.min(libc::c_int::MAX as usize / 2) as libc::c_int;
    for opt in [forced, plain] {
        // SAFETY: the descriptor is the socket's, open for as long as `socket` lives; the
        // option value points at a c_int on the stack whose size is passed along.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
    }
    Err(std::io::Error::last_os_error())
}

/// Waits up to [`ACK_WAIT`] for the socket to become readable.
fn wait_readable(socket: &Socket) -> bool {
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
    let r = unsafe { libc::poll(&mut fd, 1, ACK_WAIT.as_millis() as libc::c_int) };
    r > 0
}

/// One namespace's nftables, as a feature's kernel adapter holds it: `nft -f` scripts run
/// inside the namespace, and one nfnetlink socket opened there on first use and kept.
pub struct Tables {
    ns: Option<NetNs>,
    socket: Option<Nft>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables")
            .field("ns", &self.ns.as_ref().map(NetNs::path))
            .finish_non_exhaustive()
    }
}

impl Tables {
    /// Opens `netns` (a path such as `/run/netns/NAME`); `None` means the caller's own.
    pub fn open(netns: Option<&Path>) -> Result<Self, NetnsError> {
        let ns = netns.map(NetNs::open).transpose()?;
        Ok(Tables { ns, socket: None })
    }

    /// The namespace, when it is not the caller's own.
    pub fn netns(&self) -> Option<&NetNs> {
        self.ns.as_ref()
    }

    /// Its path, when it is not the caller's own.
    pub fn netns_path(&self) -> Option<&Path> {
        self.ns.as_ref().map(NetNs::path)
    }

    /// Runs an `nft -f` script inside the namespace, as one transaction.
    pub fn run_script(&self, script: &str) -> Result<(), NftError> {
        run_script(self.netns_path(), script)
    }

    /// The nfnetlink socket, opened on first use.
    pub fn socket(&mut self) -> Result<&mut Nft, NftError> {
        let socket = match self.socket.take() {
            Some(s) => s,
            None => Nft::open(self.netns_path())?,
        };
        Ok(self.socket.insert(socket))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::Ipv4Addr;

    use super::wire::{NFTA_SET_ELEM_FLAGS, Writer};
    use super::*;

    /// One element's attributes as the kernel dumps them.
    fn element(key: &[u8], verdict: Option<(i32, Option<&str>)>, flags: Option<u32>) -> Vec<u8> {
        let mut w = Writer::default();
        let k = w.nest(NFTA_SET_ELEM_KEY);
        w.attr(NFTA_DATA_VALUE, key);
        w.end_nest(k);
        if let Some((code, chain)) = verdict {
            let d = w.nest(NFTA_SET_ELEM_DATA);
            let v = w.nest(NFTA_DATA_VERDICT);
            w.attr(NFTA_VERDICT_CODE, &code.to_be_bytes());
            if let Some(c) = chain {
                w.attr_str(NFTA_VERDICT_CHAIN, c);
            }
            w.end_nest(v);
            w.end_nest(d);
        }
        if let Some(f) = flags {
            w.attr(NFTA_SET_ELEM_FLAGS, &f.to_be_bytes());
        }
        w.buf
    }

    #[test]
    fn verdict_elements_decode() {
        let key = [192, 0, 2, 1];
        let e = element(&key, Some((-4, Some("lb-2"))), None);
        let got = decode_element(&e, &[FieldKind::Ipv4], None).unwrap();
        assert_eq!(
            got,
            Element::map(
                vec![Field::Ipv4(Ipv4Addr::new(192, 0, 2, 1))],
                Data::Verdict(Verdict::Goto("lb-2".into()))
            )
        );
        let e = element(&key, Some((0, None)), None);
        let got = decode_element(&e, &[FieldKind::Ipv4], None).unwrap();
        assert_eq!(got.data, Some(Data::Verdict(Verdict::Drop)));
    }

    #[test]
    fn unsupported_elements_are_refused_by_name() {
        let key = [192, 0, 2, 1];
        // NFT_CONTINUE, NFT_RETURN: never written by flatnet.
        let err = decode_element(&key_with(&key, -1), &[FieldKind::Ipv4], None).unwrap_err();
        assert!(err.contains("verdict code -1"), "{err}");
        let err = decode_element(
            &element(&key, Some((-3, None)), None),
            &[FieldKind::Ipv4],
            None,
        )
        .unwrap_err();
        assert!(err.contains("without a chain"), "{err}");
        let err =
            decode_element(&element(&key, None, Some(1)), &[FieldKind::Ipv4], None).unwrap_err();
        assert!(err.contains("interval"), "{err}");
        let err = decode_element(&element(&key, None, None), &[FieldKind::Port], None).unwrap_err();
        assert!(err.starts_with("key:"), "{err}");
    }

    fn key_with(key: &[u8], code: i32) -> Vec<u8> {
        element(key, Some((code, None)), None)
    }
}
