//! The short paths on raw queries (pure): what the UDP workers answer without hickory
//! parsing or encoding the message.
//!
//! - [`plain_query`] recognises a plain query: one question, no records but at most an
//!   option-less EDNS0 OPT.
//! - [`lower_question`] copies its question lowercased: the key of the stored responses and,
//!   without type and class, the key of the zone's index.
//! - [`negative`] answers it when the answer is negative (NXDOMAIN or NODATA inside the
//!   cluster domain, what the random names of `ndots:5` search paths get): the header, the
//!   question as sent, the zone's SOA as hickory encoded it once per serial
//!   ([`crate::zone::EncodedSoa`]), and our OPT (with the query's DO bit) when the query had
//!   one. Byte for byte what the full path ([`crate::server::respond`]) sends;
//!   `tests/serve.rs` compares them.

use hickory_server::proto::rr::RecordType;

use crate::server::EDNS_PAYLOAD;
use crate::zone::Zone;

/// The longest question [`lower_question`] copies: a name of 255 bytes, type and class, and
/// one byte more for the caller (the OPT byte of the stored responses' key, [`opt_key`]).
pub const QUESTION_MAX: usize = 255 + 4 + 1;

/// The length of [`opt_record`].
pub const OPT_LEN: usize = 11;

/// Our OPT record (RFC 6891 §6.1.2): root owner, type 41, our payload size as its class,
/// `rcode_high` (the upper 8 bits of the response's extended RCODE), version 0, the query's DO
/// bit (`dnssec_ok`, RFC 3225 §3: copied from the query), no options.
pub fn opt_record(rcode_high: u8, dnssec_ok: bool) -> [u8; OPT_LEN] {
    let [hi, lo] = EDNS_PAYLOAD.to_be_bytes();
    let flags = if dnssec_ok { 0x80 } else { 0 };
    [0, 0, 41, hi, lo, rcode_high, 0, flags, 0, 0, 0]
}

/// The OPT of a plain query: `None` without one, else its DO bit.
pub type QueryOpt = Option<bool>;

/// The byte the stored responses' key ends with: 0 without an OPT, 1 with one, 2 with DO.
pub fn opt_key(opt: QueryOpt) -> u8 {
    opt.map_or(0, |dnssec_ok| 1 + u8::from(dnssec_ok))
}

/// Where the question ends and the OPT that follows (none, or its DO bit), for a plain query;
/// `None` for anything else (the full path handles it).
pub fn plain_query(raw: &[u8]) -> Option<(usize, QueryOpt)> {
    if raw.len() < 17 || raw[2] & 0xf8 != 0 {
        return None; // a response, or an opcode other than QUERY
    }
    let count = |i: usize| u16::from_be_bytes([raw[i], raw[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*raw.get(i)?);
        if len == 0 {
            break;
        }
        if len > 63 || i > 12 + 255 {
            return None;
        }
        i += 1 + len;
    }
    let q_end = i + 5;
    if count(10) == 0 {
        return (raw.len() == q_end).then_some((q_end, None));
    }
    // An EDNS0 OPT: root owner, type 41, version 0, no options. (Another version takes the
    // full path, which answers BADVERS.)
    let opt = raw.get(q_end..)?;
    (opt.len() == 11 && opt[0] == 0 && opt[1..3] == [0, 41] && opt[6] == 0 && opt[9..11] == [0, 0])
        .then(|| (q_end, Some(opt[7] & 0x80 != 0)))
}

/// Copies the question `raw[12..q_end]` (of a [`plain_query`]) lowercased to the start of
/// `buf` and returns its length; `None` when the name is longer than a name may be (the full
/// path answers that).
pub fn lower_question(raw: &[u8], q_end: usize, buf: &mut [u8; QUESTION_MAX]) -> Option<usize> {
    let q = raw.get(12..q_end)?;
    if q.len() > QUESTION_MAX - 1 {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(q) {
        *d = s.to_ascii_lowercase();
    }
    Some(q.len())
}

/// Answers the [`plain_query`] `raw` (question ending at `q_end`, `opt`: the OPT it carries)
/// into `out` when its answer is negative; `lower` is its question from [`lower_question`].
/// Returns false, with `out` empty, for anything else: the full path answers it.
pub fn negative(
    z: &Zone,
    raw: &[u8],
    q_end: usize,
    opt: QueryOpt,
    lower: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let Some(name_len) = lower.len().checked_sub(4).filter(|&n| n > 0) else {
        return false;
    };
    if q_end < 16 || raw.len() < q_end || lower.len() != q_end - 12 {
        return false;
    }
    let qtype = u16::from_be_bytes([raw[q_end - 4], raw[q_end - 3]]);
    let qclass = u16::from_be_bytes([raw[q_end - 2], raw[q_end - 1]]);
    // Class IN and data types (or ANY): meta types, zone transfers and OPT take the full path.
    if qclass != 1 || qtype == 0 || (128..255).contains(&qtype) || qtype == 41 {
        return false;
    }
    let Some(neg) = z.negative(&lower[..name_len], RecordType::from(qtype)) else {
        return false;
    };
    let rcode = if neg.nxdomain { 3 } else { 0 };
    out.extend_from_slice(&[
        raw[0],
        raw[1],
        0x84 | (raw[2] & 0x01),  // QR, AA, the client's RD
        (raw[3] & 0x10) | rcode, // the client's CD
        0,
        1,
        0,
        0,
        0,
        1,
        0,
        u8::from(opt.is_some()),
    ]);
    out.extend_from_slice(&raw[12..q_end]);
    if !neg.soa.append_to(out) {
        out.clear();
        return false;
    }
    if let Some(dnssec_ok) = opt {
        out.extend_from_slice(&opt_record(0, dnssec_ok));
    }
    if out.len() > 512 {
        out.clear();
        return false;
    }
    true
}

/// [`negative`] for a whole raw query: recognises it, lowercases its question and answers
/// it when the answer is negative. False (with `out` empty) when the full path must answer.
pub fn negative_response(z: &Zone, raw: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut buf = [0u8; QUESTION_MAX];
    let Some((q_end, opt)) = plain_query(raw) else {
        return false;
    };
    let Some(n) = lower_question(raw, q_end, &mut buf) else {
        return false;
    };
    negative(z, raw, q_end, opt, &buf[..n], out)
}
