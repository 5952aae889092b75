//! Values of set and map elements, and how the kernel lays them out.
//!
//! A key or value is a list of fields. A single field occupies its natural length (an
//! `ipv4_addr` 4 bytes, an `inet_service` 2, an `inet_proto` 1); in a concatenation (two or
//! more fields) every field occupies a multiple of 4 bytes, because that is how the
//! expressions that build the lookup key fill the kernel's 32-bit registers (zero-padded).

use std::fmt;
use std::net::Ipv4Addr;

/// An nftables address family (the `nfgen_family` of every message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `inet`: IPv4 and IPv6.
    Inet,
    /// `ip`: IPv4.
    Ip,
    /// `ip6`: IPv6.
    Ip6,
    /// `arp`.
    Arp,
    /// `bridge`: frames crossing a bridge.
    Bridge,
    /// `netdev`: ingress/egress of one device.
    Netdev,
}

impl Family {
    /// `NFPROTO_*`.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Ip => 2,
            Family::Arp => 3,
            Family::Netdev => 5,
            Family::Bridge => 7,
            Family::Ip6 => 10,
        }
    }

    /// The name `nft` uses.
    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Arp => "arp",
            Family::Bridge => "bridge",
            Family::Netdev => "netdev",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One component of a key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `ipv4_addr` (`ip daddr`): 4 bytes, network order.
    Ipv4(Ipv4Addr),
    /// `inet_proto` (`meta l4proto`): 1 byte.
    Proto(u8),
    /// `inet_service` (`th dport`): 2 bytes, network order.
    Port(u16),
    /// A 32-bit integer in host order (`numgen random mod N`).
    U32(u32),
    /// `mark` (`meta mark`, `ct mark`): 4 bytes, host order.
    Mark(u32),
}

/// The type of a [`Field`], to decode what the kernel lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// [`Field::Ipv4`].
    Ipv4,
    /// [`Field::Proto`].
    Proto,
    /// [`Field::Port`].
    Port,
    /// [`Field::U32`].
    U32,
    /// [`Field::Mark`].
    Mark,
}

impl FieldKind {
    /// Bytes the field occupies on its own (outside a concatenation).
    pub fn natural_len(self) -> usize {
        match self {
            FieldKind::Ipv4 | FieldKind::U32 | FieldKind::Mark => 4,
            FieldKind::Proto => 1,
            FieldKind::Port => 2,
        }
    }
}

impl Field {
    /// The type of this field.
    pub fn kind(&self) -> FieldKind {
        match self {
            Field::Ipv4(_) => FieldKind::Ipv4,
            Field::Proto(_) => FieldKind::Proto,
            Field::Port(_) => FieldKind::Port,
            Field::U32(_) => FieldKind::U32,
            Field::Mark(_) => FieldKind::Mark,
        }
    }

    /// The field's bytes, left-aligned in 4 (the rest zero).
    fn bytes(&self) -> [u8; 4] {
        match *self {
            Field::Ipv4(ip) => ip.octets(),
            Field::Proto(p) => [p, 0, 0, 0],
            Field::Port(p) => {
                let [a, b] = p.to_be_bytes();
                [a, b, 0, 0]
            }
            Field::U32(v) | Field::Mark(v) => v.to_ne_bytes(),
        }
    }

    fn decode(kind: FieldKind, b: &[u8]) -> Field {
        // Callers pass at least `kind.natural_len()` bytes.
        match kind {
            FieldKind::Ipv4 => Field::Ipv4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            FieldKind::Proto => Field::Proto(b[0]),
            FieldKind::Port => Field::Port(u16::from_be_bytes([b[0], b[1]])),
            FieldKind::U32 => Field::U32(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            FieldKind::Mark => Field::Mark(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Field::Ipv4(ip) => write!(f, "{ip}"),
            Field::Proto(6) => f.write_str("tcp"),
            Field::Proto(17) => f.write_str("udp"),
            Field::Proto(132) => f.write_str("sctp"),
            Field::Proto(p) => write!(f, "{p}"),
            Field::Port(p) => write!(f, "{p}"),
            Field::U32(v) => write!(f, "{v}"),
            Field::Mark(v) => write!(f, "0x{v:08x}"),
        }
    }
}

/// Bytes `fields` occupy as a key or value (see the module doc).
pub(crate) fn encoded_len(fields: &[Field]) -> usize {
    match fields {
        [one] => one.kind().natural_len(),
        _ => 4 * fields.len(),
    }
}

/// Appends `fields` as the kernel compares them.
pub(crate) fn encode_fields(fields: &[Field], out: &mut Vec<u8>) {
    match fields {
        [one] => out.extend_from_slice(&one.bytes()[..one.kind().natural_len()]),
        _ => {
            for f in fields {
                out.extend_from_slice(&f.bytes());
            }
        }
    }
}

/// Decodes a key or value of shape `shape`; the error says what did not fit.
pub(crate) fn decode_fields(bytes: &[u8], shape: &[FieldKind]) -> Result<Vec<Field>, String> {
    let expected = match shape {
        [] => return Err("empty shape".to_string()),
        [one] => one.natural_len(),
        _ => 4 * shape.len(),
    };
    if bytes.len() != expected {
        return Err(format!(
            "{} bytes where the shape {shape:?} has {expected}",
            bytes.len()
        ));
    }
    let step = if shape.len() == 1 { 0 } else { 4 };
    Ok(shape
        .iter()
        .enumerate()
        .map(|(i, k)| Field::decode(*k, &bytes[i * step..]))
        .collect())
}

/// `a . b . c`, as `nft` prints a concatenation.
pub fn display_fields(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(" . ")
}

/// `a . b-c . d`: a range element as `nft` prints it (a field whose ends are equal is printed
/// once).
pub fn display_range(start: &[Field], end: &[Field]) -> String {
    start
        .iter()
        .enumerate()
        .map(|(i, s)| match end.get(i) {
            Some(e) if e != s => format!("{s}-{e}"),
            _ => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

/// What a verdict map's element says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// `accept`: stop evaluating and let the packet through.
    Accept,
    /// `drop`: discard the packet.
    Drop,
    /// `jump CHAIN`: evaluate the chain, then come back.
    Jump(String),
    /// `goto CHAIN`: evaluate the chain and do not come back.
    Goto(String),
}

pub(crate) const NF_DROP: i32 = 0;
pub(crate) const NF_ACCEPT: i32 = 1;
pub(crate) const NFT_JUMP: i32 = -3;
pub(crate) const NFT_GOTO: i32 = -4;

impl Verdict {
    /// The verdict code (`NF_*`, `NFT_*`).
    pub(crate) fn code(&self) -> i32 {
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
            Verdict::Jump(_) => NFT_JUMP,
            Verdict::Goto(_) => NFT_GOTO,
        }
    }

    pub(crate) fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            Verdict::Accept | Verdict::Drop => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// The value of a map element.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Data {
    /// A value of one or more fields (`ip daddr . th dport`, `ct mark`).
    Concat(Vec<Field>),
    /// A verdict (verdict maps).
    Verdict(Verdict),
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Concat(fields) => f.write_str(&display_fields(fields)),
            Data::Verdict(v) => write!(f, "{v}"),
        }
    }
}

/// One element of a set (`data: None`) or map.
///
/// In a set with `flags interval` whose key is a concatenation (the kernel's `pipapo` set
/// type), an element is a range in every field: `key` holds the first value of each field and
/// `key_end` the last (`NFTA_SET_ELEM_KEY_END`). Elements of such a set must not overlap.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    /// The key, one value per field of the set's type.
    pub key: Vec<Field>,
    /// The last value of each field of a range element (same shape as `key`).
    pub key_end: Option<Vec<Field>>,
    /// The value of a map element; `None` in a set.
    pub data: Option<Data>,
    /// Per-element timeout (sets with `flags timeout`). When listing, `None` also means the
    /// element has the set's default timeout: the kernel reports only timeouts that differ.
    pub timeout_ms: Option<u64>,
}

impl Element {
    /// A set element.
    pub fn key(key: Vec<Field>) -> Self {
        Element {
            key,
            key_end: None,
            data: None,
            timeout_ms: None,
        }
    }

    /// A range element of a concatenated interval set: from `key` to `key_end`, field by
    /// field, both ends included.
    pub fn range(key: Vec<Field>, key_end: Vec<Field>) -> Self {
        Element {
            key,
            key_end: Some(key_end),
            data: None,
            timeout_ms: None,
        }
    }

    /// A map element.
    pub fn map(key: Vec<Field>, data: Data) -> Self {
        Element {
            key,
            key_end: None,
            data: Some(data),
            timeout_ms: None,
        }
    }

    /// The same element with a per-element timeout.
    pub fn with_timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key_end {
            None => f.write_str(&display_fields(&self.key))?,
            Some(end) => f.write_str(&display_range(&self.key, end))?,
        }
        if let Some(ms) = self.timeout_ms {
            write!(f, " timeout {ms}ms")?;
        }
        if let Some(d) = &self.data {
            write!(f, " : {d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn concatenation_pads_every_field_to_four_bytes() {
        let key = [
            Field::Ipv4(Ipv4Addr::new(10, 96, 0, 1)),
            Field::Proto(6),
            Field::Port(80),
            Field::U32(2),
        ];
        let mut out = Vec::new();
        encode_fields(&key, &mut out);
        let mut want = vec![10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0];
        want.extend_from_slice(&2u32.to_ne_bytes());
        assert_eq!(out, want);
        assert_eq!(encoded_len(&key), 16);
    }

    #[test]
    fn single_fields_keep_their_natural_length() {
        for (field, want) in [
            (Field::Port(8080), vec![0x1f, 0x90]),
            (Field::Proto(17), vec![17]),
            (Field::Ipv4(Ipv4Addr::new(1, 2, 3, 4)), vec![1, 2, 3, 4]),
            (Field::Mark(0x4000), 0x4000u32.to_ne_bytes().to_vec()),
        ] {
            let mut out = Vec::new();
            encode_fields(&[field], &mut out);
            assert_eq!(out, want, "{field:?}");
            assert_eq!(encoded_len(&[field]), want.len());
        }
    }

    #[test]
    fn decode_inverts_encode() {
        let cases: Vec<Vec<Field>> = vec![
            vec![
                Field::Ipv4(Ipv4Addr::new(10, 0, 0, 9)),
                Field::Proto(132),
                Field::Port(65535),
                Field::U32(7),
            ],
            vec![
                Field::Ipv4(Ipv4Addr::new(192, 0, 2, 1)),
                Field::Mark(0xdead),
            ],
            vec![Field::Port(53)],
            vec![Field::Proto(6)],
        ];
        for fields in cases {
            let mut out = Vec::new();
            encode_fields(&fields, &mut out);
            let shape: Vec<FieldKind> = fields.iter().map(Field::kind).collect();
            assert_eq!(decode_fields(&out, &shape).unwrap(), fields);
        }
    }

    #[test]
    fn decode_rejects_a_length_that_does_not_fit_the_shape() {
        let err = decode_fields(&[0; 8], &[FieldKind::Ipv4]).unwrap_err();
        assert!(err.contains("8 bytes"), "{err}");
        assert!(decode_fields(&[0; 4], &[]).is_err());
    }

    #[test]
    fn elements_print_like_nft() {
        let e = Element::map(
            vec![
                Field::Ipv4(Ipv4Addr::new(10, 96, 0, 1)),
                Field::Proto(6),
                Field::Port(80),
            ],
            Data::Verdict(Verdict::Goto("lb-3".into())),
        );
        assert_eq!(e.to_string(), "10.96.0.1 . tcp . 80 : goto lb-3");
        let t = Element::key(vec![Field::Mark(1)]).with_timeout_ms(1500);
        assert_eq!(t.to_string(), "0x00000001 timeout 1500ms");
        let r = Element::range(
            vec![
                Field::Ipv4(Ipv4Addr::new(10, 244, 1, 5)),
                Field::Ipv4(Ipv4Addr::new(10, 0, 0, 0)),
                Field::Proto(6),
                Field::Port(80),
            ],
            vec![
                Field::Ipv4(Ipv4Addr::new(10, 244, 1, 5)),
                Field::Ipv4(Ipv4Addr::new(10, 255, 255, 255)),
                Field::Proto(6),
                Field::Port(90),
            ],
        );
        assert_eq!(
            r.to_string(),
            "10.244.1.5 . 10.0.0.0-10.255.255.255 . tcp . 80-90"
        );
    }
}
