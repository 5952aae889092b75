//! nfnetlink framing: a message writer and an attribute reader. Numbers are from
//! `linux/netfilter/nfnetlink.h` and `linux/netfilter/nf_tables.h`.

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NFGENMSG_LEN: usize = 4;
pub(crate) const NLA_HDRLEN: usize = 4;

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
/// In an error message: the original request is not echoed, only its header.
pub(crate) const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended-ack attributes follow.
pub(crate) const NLM_F_ACK_TLVS: u16 = 0x200;
pub(crate) const NLMSGERR_ATTR_MSG: u16 = 1;
pub(crate) const NLMSGERR_ATTR_OFFS: u16 = 2;

pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(crate) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(crate) const NFT_MSG_GETSETELEM: u16 = 13;
pub(crate) const NFT_MSG_DELSETELEM: u16 = 14;

pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(crate) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(crate) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
pub(crate) const NFTA_SET_ELEM_KEY_END: u16 = 10;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
pub(crate) const NFTA_VERDICT_CHAIN: u16 = 2;

/// `NFT_SET_ELEM_INTERVAL_END | NFT_SET_ELEM_CATCHALL`: elements flatnet never makes (its
/// interval sets are concatenations, whose elements carry `NFTA_SET_ELEM_KEY_END` instead).
pub(crate) const SET_ELEM_FLAGS_UNSUPPORTED: u32 = 0x1 | 0x2;

/// The type of an nf_tables message.
pub(crate) fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Writes netlink messages back to back into one buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    /// Starts a message with its nfgenmsg header; returns where it starts.
    pub(crate) fn begin(
        &mut self,
        ty: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by `end`
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    pub(crate) fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn attr(&mut self, ty: u16, value: &[u8]) {
        let len = NLA_HDRLEN + value.len();
        // Callers keep attributes far below 64 KiB (see `nest_len`).
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) {
        let len = NLA_HDRLEN + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Starts a nested attribute; returns where it starts.
    pub(crate) fn nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        start
    }

    /// Bytes of the nested attribute started at `start` so far, header included.
    pub(crate) fn nest_len(&self, start: usize) -> usize {
        self.buf.len() - start
    }

    /// Ends a nested attribute; `nest_len(start)` must fit in 16 bits.
    pub(crate) fn end_nest(&mut self, start: usize) {
        let len = self.nest_len(start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        self.buf.extend(std::iter::repeat_n(0, n));
    }
}

/// A netlink message header and its payload.
pub(crate) struct Msg<'a> {
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    pub(crate) payload: &'a [u8],
}

/// Splits a datagram into messages; stops at the first malformed one.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, String>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        if buf.len() < NLMSG_HDRLEN {
            buf = &[];
            return Some(Err("truncated message header".to_string()));
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(format!("bad message length {len}")));
        }
        let msg = Msg {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(Ok(msg))
    })
}

/// The attributes in `buf` as (type without flag bits, value); stops at a malformed one.
pub(crate) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < NLA_HDRLEN || len > buf.len() {
            return None;
        }
        let value = &buf[NLA_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, value))
    })
}

/// The first attribute of type `ty`.
pub(crate) fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

pub(crate) fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

pub(crate) fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// A string attribute without its terminating NUL.
pub(crate) fn str_of(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// What an `NLMSG_ERROR` message says.
pub(crate) struct Ack {
    /// 0 for success, else a positive errno.
    pub(crate) errno: i32,
    /// Sequence number of the request it answers.
    pub(crate) seq: u32,
    /// Extended ack: offset of the offending attribute from the start of the request.
    pub(crate) offset: Option<u32>,
    /// Extended ack: the kernel's message.
    pub(crate) message: Option<String>,
}

pub(crate) fn parse_ack(msg: &Msg<'_>) -> Result<Ack, String> {
    let p = msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(format!("short error message ({} bytes)", p.len()));
    }
    let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    let orig = &p[4..4 + NLMSG_HDRLEN];
    let orig_len = u32::from_ne_bytes([orig[0], orig[1], orig[2], orig[3]]) as usize;
    let seq = u32::from_ne_bytes([orig[8], orig[9], orig[10], orig[11]]);
    let mut ack = Ack {
        errno: code.saturating_abs(),
        seq,
        offset: None,
        message: None,
    };
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        let echoed = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align4(orig_len.max(NLMSG_HDRLEN))
        };
        if let Some(tlvs) = p.get(4 + echoed..) {
            for (ty, v) in attrs(tlvs) {
                match ty {
                    NLMSGERR_ATTR_OFFS if v.len() >= 4 => {
                        ack.offset = Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
                    }
                    NLMSGERR_ATTR_MSG => ack.message = Some(str_of(v)),
                    _ => {}
                }
            }
        }
    }
    Ok(ack)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writer_frames_messages_and_pads_attributes() {
        let mut w = Writer::default();
        let m = w.begin(nft_type(NFT_MSG_NEWSETELEM), NLM_F_REQUEST, 7, 1, 0);
        w.attr_str(NFTA_SET_ELEM_LIST_TABLE, "flat");
        let n = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        w.attr(NFTA_DATA_VALUE, &[1, 2, 3]);
        w.end_nest(n);
        w.end(m);
        let b = &w.buf;
        // header 16 + nfgenmsg 4 + "flat\0" 4+5 -> 12 + nest 4 + (4+3 -> 8) = 44
        assert_eq!(b.len(), 44);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 44);
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 0x0a0c);
        assert_eq!(&b[16..20], &[1, 0, 0, 0]);
        assert_eq!(u16::from_ne_bytes(b[20..22].try_into().unwrap()), 9);
        assert_eq!(&b[24..29], b"flat\0");
        assert_eq!(u16::from_ne_bytes(b[32..34].try_into().unwrap()), 12);
        let msgs: Vec<_> = messages(b).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 7);
        let payload = &msgs[0].payload[NFGENMSG_LEN..];
        assert_eq!(
            str_of(attr(payload, NFTA_SET_ELEM_LIST_TABLE).unwrap()),
            "flat"
        );
        let nest = attr(payload, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
        assert_eq!(attr(nest, NFTA_DATA_VALUE).unwrap(), &[1, 2, 3]);
    }

    #[test]
    fn malformed_input_ends_iteration_without_panicking() {
        let mut w = Writer::default();
        let m = w.begin(NLMSG_DONE, 0, 1, 0, 0);
        w.end(m);
        let mut b = w.buf.clone();
        b[0] = 200; // length beyond the buffer
        let r: Vec<_> = messages(&b).collect();
        assert_eq!(r.len(), 1);
        assert!(r[0].is_err());
        assert_eq!(attrs(&[5, 0, 1]).count(), 0);
        assert_eq!(attrs(&[200, 0, 1, 0, 9]).count(), 0);
    }

    #[test]
    fn ack_with_extended_attributes_is_decoded() {
        // An error answer as the kernel writes it with NETLINK_CAP_ACK and NETLINK_EXT_ACK.
        let mut w = Writer::default();
        w.buf.extend_from_slice(&(-2i32).to_ne_bytes());
        let orig = [
            40u32.to_ne_bytes(),
            [0x0c, 0x0a, 5, 0],
            9u32.to_ne_bytes(),
            [0; 4],
        ];
        for part in orig {
            w.buf.extend_from_slice(&part);
        }
        w.attr(NLMSGERR_ATTR_OFFS, &36u32.to_ne_bytes());
        w.attr_str(NLMSGERR_ATTR_MSG, "no chain");
        let msg = Msg {
            ty: NLMSG_ERROR,
            flags: NLM_F_CAPPED | NLM_F_ACK_TLVS,
            seq: 9,
            payload: &w.buf,
        };
        let ack = parse_ack(&msg).unwrap();
        assert_eq!(ack.errno, 2);
        assert_eq!(ack.seq, 9);
        assert_eq!(ack.offset, Some(36));
        assert_eq!(ack.message.as_deref(), Some("no chain"));
    }
}
