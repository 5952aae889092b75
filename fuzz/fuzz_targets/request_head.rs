//! The request head parser and the backend head it writes (`ingress::h1::parse_request`):
//! whatever the input, a head the gateway forwards must parse again (with httparse and with
//! the gateway itself) to the same framing, with one `Content-Length` or one
//! `Transfer-Encoding` ending in `chunked` at most, never both, and one valid `Host`.
#![no_main]

use ingress::h1::{BodyLen, Parsed, parse_request};
use libfuzzer_sys::fuzz_target;

fn check(data: &[u8]) -> Option<BodyLen> {
    let mut out = Vec::new();
    let Parsed::Request { len, req, to } = parse_request(data, &mut out) else {
        return None;
    };
    assert!(len <= data.len());
    to.as_ref().ok()?;
    // The forwarded head: CRLF lines only, one head, every field valid.
    for (i, b) in out.iter().enumerate() {
        if *b == b'\n' {
            assert_eq!(out.get(i.wrapping_sub(1)), Some(&b'\r'), "bare LF in {out:?}");
        }
        assert_ne!(*b, 0, "NUL in {out:?}");
    }
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut fields);
    let n = match r.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("forwarded head does not parse: {other:?}: {out:?}"),
    };
    assert_eq!(n, out.len(), "{out:?}");
    let named = |name: &str| -> Vec<&[u8]> {
        r.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let cl = named("content-length");
    let te = named("transfer-encoding");
    assert!(named("host").len() <= 1, "{out:?}");
    match req.body {
        BodyLen::Chunked => {
            assert!(cl.is_empty(), "{out:?}");
            assert_eq!(te.len(), 1, "{out:?}");
            let last = te[0].rsplit(|b| *b == b',').next().unwrap_or(b"");
            assert!(last.trim_ascii().eq_ignore_ascii_case(b"chunked"), "{out:?}");
        }
        BodyLen::Length(n) => {
            assert!(te.is_empty(), "{out:?}");
            assert_eq!(cl, [n.to_string().as_bytes()], "{out:?}");
        }
        BodyLen::None => {
            assert!(te.is_empty(), "{out:?}");
            assert!(cl.is_empty() || cl == [b"0"], "{out:?}");
        }
    }
    // The gateway reads its own output the same way; only the fields it adds (Host,
    // X-Forwarded-*) may take a head at the limits over them (431, refused whole).
    let mut again = Vec::new();
    match parse_request(&out, &mut again) {
        Parsed::Request { len, req: r2, .. } => {
            assert_eq!(len, out.len());
            assert_eq!(r2.body, req.body, "{out:?}");
        }
        Parsed::Bad(s, _) if s.as_u16() == 431 && r.headers.len() > 100 => {}
        other => panic!("the gateway refuses its own head {out:?}: {other:?}"),
    }
    Some(req.body)
}

fuzz_target!(|data: &[u8]| {
    check(data);
});
