//! Secret (TLS material for the ingress gateway) and the base64 the API uses for `data`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::meta::ObjectMeta;

/// A `v1` Secret. `stringData` from a manifest is merged into `data` by
/// [`crate::parse_manifests`], as the API server does on write.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Secret {
    /// `metadata`; the name is a DNS subdomain.
    pub metadata: ObjectMeta,
    /// `Opaque` when absent; `kubernetes.io/tls` needs `tls.crt` and `tls.key`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Values are base64 (standard alphabet, padded).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Fields flatnet does not model (`immutable`, ...), kept so a round trip is lossless.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Secret {
    /// The decoded bytes of `data[key]`, if present and valid base64.
    pub fn decoded(&self, key: &str) -> Option<Vec<u8>> {
        self.data.get(key).and_then(|v| base64_decode(v).ok())
    }
}

/// Text that is not standard padded base64, in Go's wording (`CorruptInputError`).
///
/// Only the offset is kept, not the text: it is Secret material.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[error("illegal base64 data at input byte {offset}")]
pub struct Base64Error {
    /// 0-based offset of the first bad byte, counted after line breaks are removed (a length
    /// that is not a multiple of 4 is reported at the start of the incomplete group).
    pub offset: usize,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64, as Kubernetes writes Secret `data`.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64 (what Go's `encoding/base64.StdEncoding` accepts, which the
/// API server uses for Secret `data`): line breaks are ignored, the error names the offset of
/// the first bad byte (after removing line breaks).
pub fn base64_decode(s: &str) -> Result<Vec<u8>, Base64Error> {
    let bytes: Vec<u8> = s.bytes().filter(|b| !matches!(b, b'\r' | b'\n')).collect();
    if !bytes.len().is_multiple_of(4) {
        return Err(Base64Error {
            offset: bytes.len() - bytes.len() % 4,
        });
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let groups = bytes.len() / 4;
    for (g, chunk) in bytes.chunks(4).enumerate() {
        let last = g + 1 == groups;
        let mut n: u32 = 0;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if last && i >= 2 && (i == 3 || chunk[3] == b'=') => {
                    pad += 1;
                    0
                }
                _ => return Err(Base64Error { offset: g * 4 + i }),
            };
            if pad > 0 && c != b'=' {
                return Err(Base64Error { offset: g * 4 + i });
            }
            n = (n << 6) | u32::from(v);
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded), Ok(plain.as_bytes().to_vec()));
        }
    }

    #[test]
    fn base64_decode_rejects_bad_input_with_offset() {
        let err = base64_decode("Zm9v!A==").expect_err("bad byte");
        assert_eq!(err, Base64Error { offset: 4 });
        assert_eq!(err.to_string(), "illegal base64 data at input byte 4");
        assert!(base64_decode("Zm9").is_err());
        assert_eq!(base64_decode("Zm9v\r\nYg=="), Ok(b"foob".to_vec()));
        assert!(base64_decode("Z===").is_err());
        assert!(base64_decode("Zg=a").is_err());
        assert!(base64_decode("Zg==Zg==").is_err());
    }

    #[test]
    fn base64_round_trips_all_byte_values() {
        let bytes: Vec<u8> = (0..=255).collect();
        for len in 0..bytes.len() {
            assert_eq!(
                base64_decode(&base64_encode(&bytes[..len])),
                Ok(bytes[..len].to_vec())
            );
        }
    }
}
