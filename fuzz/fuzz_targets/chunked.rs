//! The chunked decoder (`ingress::client::Chunked`) against a second, independent reading of
//! RFC 9112 §7.1 written here: both must find the body's end at the same byte with the same
//! data, or both refuse; and the decoder's answer must not depend on how the bytes arrive.
//! The first input byte picks the piece size; the rest is the wire.
#![no_main]

use ingress::client::{Chunked, Step};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Out {
    /// The body ended after this many bytes, with this data.
    Done(usize, Vec<u8>),
    /// Valid so far, needs more.
    More,
    Invalid,
}

/// The decoder fed `wire` in pieces of `piece` bytes.
fn decode(wire: &[u8], piece: usize) -> Out {
    let mut c = Chunked::Size;
    let mut buf: Vec<u8> = Vec::new();
    let (mut fed, mut used) = (0, 0);
    let mut body = Vec::new();
    loop {
        match c.step(&buf) {
            Err(_) => return Out::Invalid,
            Ok(Step::More) => {
                if fed == wire.len() {
                    return Out::More;
                }
                let n = piece.min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
            Ok(Step::Skip(n)) => {
                assert!(n > 0 && n <= buf.len(), "skip {n} of {}", buf.len());
                buf.drain(..n);
                used += n;
            }
            Ok(Step::Data(n)) => {
                assert!(n > 0 && n <= buf.len(), "data {n} of {}", buf.len());
                body.extend(buf.drain(..n));
                used += n;
            }
            Ok(Step::Done(n)) => {
                assert!(n <= buf.len());
                return Out::Done(used + n, body);
            }
        }
    }
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn ows(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[n..]
}

fn token(s: &[u8]) -> Option<&[u8]> {
    let n = s.iter().take_while(|b| tchar(**b)).count();
    (n > 0).then(|| &s[n..])
}

fn quoted(s: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    if s.first() != Some(&b'"') {
        return None;
    }
    let text = |b: u8| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
    loop {
        match *s.get(i)? {
            b'"' => return Some(&s[i + 1..]),
            b'\\' if text(*s.get(i + 1)?) => i += 2,
            b'\\' => return None,
            b if text(b) => i += 1,
            _ => return None,
        }
    }
}

/// A complete chunk-size line without its CRLF: the size, or None when invalid.
fn size_line(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let mut size: u128 = 0;
    for b in &line[..digits] {
        size = size * 16 + (*b as char).to_digit(16)? as u128;
        if size > u64::MAX as u128 {
            return None;
        }
    }
    let mut rest = &line[digits..];
    // *( BWS ";" BWS name [ BWS "=" BWS value ] )
    while !rest.is_empty() {
        rest = ows(rest).strip_prefix(b";")?;
        rest = token(ows(rest))?;
        let after = ows(rest);
        if let Some(v) = after.strip_prefix(b"=") {
            let v = ows(v);
            rest = token(v).or_else(|| quoted(v))?;
        }
    }
    Some(size as u64)
}

/// A complete trailer line without its CRLF.
fn trailer_ok(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon].iter().all(|b| tchar(*b))
        && line[colon + 1..]
            .iter()
            .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
}

/// The reference reading of a whole `wire`; None where it cannot tell invalid from
/// incomplete (a line with no CRLF yet).
fn reference(wire: &[u8]) -> Option<Out> {
    let line_end = |at: usize| wire[at..].windows(2).position(|w| w == b"\r\n").map(|i| at + i);
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let end = line_end(at)?;
        let line = &wire[at..end];
        if line.contains(&b'\r') || line.contains(&b'\n') {
            return Some(Out::Invalid);
        }
        let Some(size) = size_line(line) else {
            return Some(Out::Invalid);
        };
        at = end + 2;
        if size == 0 {
            loop {
                let end = line_end(at)?;
                let line = &wire[at..end];
                if line.is_empty() {
                    return Some(Out::Done(end + 2, body));
                }
                if line.contains(&b'\r') || line.contains(&b'\n') || !trailer_ok(line) {
                    return Some(Out::Invalid);
                }
                at = end + 2;
            }
        }
        if (wire.len() - at) as u64 <= size {
            return Some(Out::More);
        }
        let n = size as usize;
        body.extend_from_slice(&wire[at..at + n]);
        at += n;
        match &wire[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\r'] => return Some(Out::More),
            _ => return Some(Out::Invalid),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&p, wire)) = data.split_first() else {
        return;
    };
    let whole = decode(wire, wire.len().max(1));
    for piece in [1, (p as usize % 7) + 2] {
        assert_eq!(decode(wire, piece), whole, "pieces of {piece}");
    }
    if let Some(want) = reference(wire) {
        assert_eq!(whole, want, "decoder vs reference");
    } else {
        // A line without CRLF: never a finished body.
        assert!(!matches!(whole, Out::Done(..)), "{whole:?}");
    }
});
