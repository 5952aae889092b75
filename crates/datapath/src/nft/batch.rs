//! [`Batch`]: element operations for one nftables transaction, built without IO, and their
//! encoding as one nfnetlink batch.

use std::collections::HashMap;

use super::NftError;
use super::types::{
    Data, Element, Family, Field, display_fields, display_range, encode_fields, encoded_len,
};
use super::wire::{
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFT_MSG_DELSETELEM,
    NFT_MSG_NEWSETELEM, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_LIST_ELEM, NFTA_SET_ELEM_DATA,
    NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_TIMEOUT, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, Writer, nft_type,
};

/// `NFT_DATA_VALUE_MAXLEN`: the longest key or value the kernel takes.
const DATA_VALUE_MAXLEN: usize = 64;
/// `NFT_NAME_MAXLEN` (tables, sets, chains), terminating NUL included.
const NAME_MAXLEN: usize = 256;
/// The element list of one message is one attribute, whose length is 16 bits.
const MAX_NEST: usize = u16::MAX as usize;

/// An ordered list of element operations on the sets and maps of one table, committed as one
/// transaction by [`super::Nft::commit`]: all of it applies, or none of it.
///
/// Operations on one set keep their order (a `delete` then an `add` of the same key replaces
/// its value). Operations on different sets are independent of each other, so they are
/// grouped by set, which keeps the number of messages small.
///
/// Adding an element whose key exists with the same value is not an error, so re-applying a
/// batch of additions is idempotent. Adding a key that exists with a *different* value fails
/// (`EEXIST`) and aborts the transaction: delete it first in the same batch. Deleting a key
/// that does not exist fails (`ENOENT`) and aborts the transaction.
#[derive(Debug, Clone)]
pub struct Batch {
    family: Family,
    table: String,
    sets: Vec<SetOps>,
    index: HashMap<String, usize>,
    len: usize,
}

#[derive(Debug, Clone)]
struct SetOps {
    name: String,
    /// Whether an added element carries a value (for error messages: "map" or "set").
    is_map: bool,
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    Add(Vec<Element>),
    /// Keys, with the end of the range for elements of concatenated interval sets.
    Delete(Vec<(Vec<Field>, Option<Vec<Field>>)>),
    Flush,
}

/// A batch as bytes, and which message holds which operation (to name what failed).
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) begin_seq: u32,
    msgs: Vec<MsgInfo>,
}

struct MsgInfo {
    set: usize,
    op: usize,
    /// Index in the operation's list of the first element this message carries.
    first: usize,
    /// Offset of each element's attribute from the start of the message.
    offsets: Vec<u32>,
}

impl Encoded {
    /// Requests between the batch's begin and end (each is acknowledged).
    pub(crate) fn requests(&self) -> usize {
        self.msgs.len()
    }

    pub(crate) fn last_request_seq(&self) -> u32 {
        self.begin_seq.wrapping_add(self.msgs.len() as u32)
    }

    /// Index of the request with sequence number `seq`, if it is one of ours.
    pub(crate) fn request_of(&self, seq: u32) -> Option<usize> {
        let i = seq.wrapping_sub(self.begin_seq).wrapping_sub(1) as usize;
        (i < self.msgs.len()).then_some(i)
    }

    pub(crate) fn is_ours(&self, seq: u32) -> bool {
        seq.wrapping_sub(self.begin_seq) <= self.msgs.len() as u32 + 1
    }
}

impl Batch {
    /// An empty batch for the table `table` of `family`.
    pub fn new(family: Family, table: &str) -> Self {
        Batch {
            family,
            table: table.to_string(),
            sets: Vec::new(),
            index: HashMap::new(),
            len: 0,
        }
    }

    /// The address family of the batch's table.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The name of the batch's table.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn set(&mut self, name: &str) -> &mut SetOps {
        let i = match self.index.get(name) {
            Some(i) => *i,
            None => {
                self.sets.push(SetOps {
                    name: name.to_string(),
                    is_map: false,
                    ops: Vec::new(),
                });
                self.index.insert(name.to_string(), self.sets.len() - 1);
                self.sets.len() - 1
            }
        };
        &mut self.sets[i]
    }

    /// Adds an element to set or map `set` (`NFT_MSG_NEWSETELEM` with `NLM_F_CREATE`, without
    /// `NLM_F_EXCL`: see the type's doc for what that means for existing keys).
    pub fn add(&mut self, set: &str, e: Element) {
        self.len += 1;
        let s = self.set(set);
        s.is_map |= e.data.is_some();
        if let Some(Op::Add(list)) = s.ops.last_mut() {
            list.push(e);
        } else {
            s.ops.push(Op::Add(vec![e]));
        }
    }

    /// Deletes the element with key `key` from set or map `set` (`NFT_MSG_DELSETELEM`).
    pub fn delete(&mut self, set: &str, key: Vec<Field>) {
        self.push_delete(set, key, None);
    }

    /// Deletes the range element `key`..=`key_end` from a concatenated interval set (the
    /// kernel finds such an element by both ends).
    pub fn delete_range(&mut self, set: &str, key: Vec<Field>, key_end: Vec<Field>) {
        self.push_delete(set, key, Some(key_end));
    }

    fn push_delete(&mut self, set: &str, key: Vec<Field>, key_end: Option<Vec<Field>>) {
        self.len += 1;
        let s = self.set(set);
        if let Some(Op::Delete(list)) = s.ops.last_mut() {
            list.push((key, key_end));
        } else {
            s.ops.push(Op::Delete(vec![(key, key_end)]));
        }
    }

    /// Deletes every element of `set` (`NFT_MSG_DELSETELEM` without elements).
    pub fn flush(&mut self, set: &str) {
        self.len += 1;
        let s = self.set(set);
        if !matches!(s.ops.last(), Some(Op::Flush)) {
            s.ops.push(Op::Flush);
        }
    }

    /// Operations in the batch: elements added, keys deleted, flushes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no operation (sending it would be a no-op).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn context(&self) -> String {
        format!("nft batch for {} {}", self.family, self.table)
    }

    fn set_context(&self, s: &SetOps) -> String {
        let what = if s.is_map { "map" } else { "set" };
        format!("{}: {what} {}", self.context(), s.name)
    }

    /// Checks names and lengths before anything is sent, so a bad value is reported by name
    /// instead of as the kernel's bare `EINVAL`.
    pub(crate) fn validate(&self) -> Result<(), NftError> {
        let invalid = |context: String, field: &'static str, value: String, reason: String| {
            Err(NftError::Invalid {
                context,
                field,
                value,
                reason,
            })
        };
        if let Some(reason) = bad_name(&self.table) {
            return invalid(self.context(), "table", self.table.clone(), reason);
        }
        for s in &self.sets {
            if let Some(reason) = bad_name(&s.name) {
                return invalid(self.context(), "set", s.name.clone(), reason);
            }
            for op in &s.ops {
                type Keys<'k> = Vec<(&'k [Field], Option<&'k [Field]>, Option<&'k Element>)>;
                let keys: Keys<'_> = match op {
                    Op::Add(list) => list
                        .iter()
                        .map(|e| (e.key.as_slice(), e.key_end.as_deref(), Some(e)))
                        .collect(),
                    Op::Delete(list) => list
                        .iter()
                        .map(|(k, end)| (k.as_slice(), end.as_deref(), None))
                        .collect(),
                    Op::Flush => continue,
                };
                for (key, key_end, elem) in keys {
                    if let Some(reason) = bad_value(key) {
                        return invalid(self.set_context(s), "key", display_fields(key), reason);
                    }
                    if let Some(end) = key_end
                        && let Some(reason) = bad_range(key, end)
                    {
                        return invalid(
                            self.set_context(s),
                            "key end",
                            display_range(key, end),
                            reason,
                        );
                    }
                    let Some(e) = elem else { continue };
                    match &e.data {
                        Some(Data::Concat(fields)) => {
                            if let Some(reason) = bad_value(fields) {
                                return invalid(
                                    self.set_context(s),
                                    "value",
                                    display_fields(fields),
                                    format!("{reason} (element {})", display_fields(key)),
                                );
                            }
                        }
                        Some(Data::Verdict(v)) => {
                            if let Some(chain) = v.chain()
                                && let Some(reason) = bad_name(chain)
                            {
                                return invalid(
                                    self.set_context(s),
                                    "verdict chain",
                                    chain.to_string(),
                                    format!("{reason} (element {})", display_fields(key)),
                                );
                            }
                        }
                        None => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// The batch as one buffer: `BATCH_BEGIN`, one request per operation and chunk of
    /// elements (each asking for an acknowledgement), `BATCH_END`. Sequence numbers run from
    /// `begin_seq`.
    pub(crate) fn encode(&self, begin_seq: u32) -> Encoded {
        let mut w = Writer::default();
        let mut msgs = Vec::new();
        let mut seq = begin_seq;
        let b = w.begin(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        w.end(b);
        let family = self.family.nfproto();
        for (si, s) in self.sets.iter().enumerate() {
            for (oi, op) in s.ops.iter().enumerate() {
                let (ty, flags) = match op {
                    Op::Add(_) => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
                    Op::Delete(_) | Op::Flush => (NFT_MSG_DELSETELEM, 0),
                };
                let count = match op {
                    Op::Add(list) => list.len(),
                    Op::Delete(list) => list.len(),
                    Op::Flush => 0,
                };
                let mut next = 0;
                loop {
                    seq = seq.wrapping_add(1);
                    let m = w.begin(
                        nft_type(ty),
                        NLM_F_REQUEST | NLM_F_ACK | flags,
                        seq,
                        family,
                        0,
                    );
                    w.attr_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
                    w.attr_str(NFTA_SET_ELEM_LIST_SET, &s.name);
                    let mut info = MsgInfo {
                        set: si,
                        op: oi,
                        first: next,
                        offsets: Vec::new(),
                    };
                    if count > 0 {
                        let nest = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
                        while next < count {
                            let at = w.buf.len();
                            match op {
                                Op::Add(list) => write_element(&mut w, &list[next]),
                                Op::Delete(list) => {
                                    let (key, end) = &list[next];
                                    write_key(&mut w, key, end.as_deref());
                                }
                                Op::Flush => {}
                            }
                            if w.nest_len(nest) > MAX_NEST && !info.offsets.is_empty() {
                                w.buf.truncate(at);
                                break;
                            }
                            info.offsets.push((at - m) as u32);
                            next += 1;
                        }
                        w.end_nest(nest);
                    }
                    w.end(m);
                    msgs.push(info);
                    if next >= count {
                        break;
                    }
                }
            }
        }
        let e = w.begin(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq.wrapping_add(1),
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        w.end(e);
        Encoded {
            bytes: w.buf,
            begin_seq,
            msgs,
        }
    }

    /// What the request `seq` of `enc` did, for an error message; `offset` (from the kernel's
    /// extended ack) picks out the element it refused.
    pub(crate) fn describe(&self, enc: &Encoded, seq: u32, offset: Option<u32>) -> String {
        let Some(info) = enc.request_of(seq).map(|i| &enc.msgs[i]) else {
            return self.context();
        };
        let s = &self.sets[info.set];
        let prefix = self.set_context(s);
        let element = offset.and_then(|off| {
            // The kernel points at the element's attribute or at something inside it.
            let i = info.offsets.partition_point(|o| *o <= off);
            i.checked_sub(1).map(|i| info.first + i)
        });
        match (&s.ops[info.op], element) {
            (Op::Add(list), Some(i)) if i < list.len() => {
                format!("{prefix}: add element {}", list[i])
            }
            (Op::Add(_), _) => format!("{prefix}: add {}", elements(info.offsets.len())),
            (Op::Delete(list), Some(i)) if i < list.len() => {
                let (key, end) = &list[i];
                let shown = match end {
                    Some(end) => display_range(key, end),
                    None => display_fields(key),
                };
                format!("{prefix}: delete element {shown}")
            }
            (Op::Delete(_), _) => format!("{prefix}: delete {}", elements(info.offsets.len())),
            (Op::Flush, _) => format!("{prefix}: flush"),
        }
    }

    /// The context of errors that concern the whole batch.
    pub(crate) fn batch_context(&self) -> String {
        self.context()
    }
}

fn elements(n: usize) -> String {
    if n == 1 {
        "1 element".to_string()
    } else {
        format!("{n} elements")
    }
}

fn write_key(w: &mut Writer, key: &[Field], key_end: Option<&[Field]>) {
    let e = w.nest(NFTA_LIST_ELEM);
    write_value(w, NFTA_SET_ELEM_KEY, key);
    if let Some(end) = key_end {
        write_value(w, NFTA_SET_ELEM_KEY_END, end);
    }
    w.end_nest(e);
}

fn write_value(w: &mut Writer, ty: u16, fields: &[Field]) {
    let mut bytes = Vec::with_capacity(encoded_len(fields));
    encode_fields(fields, &mut bytes);
    let n = w.nest(ty);
    w.attr(NFTA_DATA_VALUE, &bytes);
    w.end_nest(n);
}

fn write_element(w: &mut Writer, el: &Element) {
    let e = w.nest(NFTA_LIST_ELEM);
    write_value(w, NFTA_SET_ELEM_KEY, &el.key);
    if let Some(end) = &el.key_end {
        write_value(w, NFTA_SET_ELEM_KEY_END, end);
    }
    if let Some(ms) = el.timeout_ms {
        w.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
    }
    match &el.data {
        Some(Data::Concat(fields)) => write_value(w, NFTA_SET_ELEM_DATA, fields),
        Some(Data::Verdict(v)) => {
            let d = w.nest(NFTA_SET_ELEM_DATA);
            let vn = w.nest(NFTA_DATA_VERDICT);
            w.attr(NFTA_VERDICT_CODE, &v.code().to_be_bytes());
            if let Some(chain) = v.chain() {
                w.attr_str(NFTA_VERDICT_CHAIN, chain);
            }
            w.end_nest(vn);
            w.end_nest(d);
        }
        None => {}
    }
    w.end_nest(e);
}

fn bad_name(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("empty name".to_string())
    } else if name.len() >= NAME_MAXLEN {
        Some(format!("longer than {} bytes", NAME_MAXLEN - 1))
    } else if name.contains('\0') {
        Some("contains a NUL byte".to_string())
    } else {
        None
    }
}

/// A range's end must have the key's shape and must not lie before it in any field.
fn bad_range(key: &[Field], end: &[Field]) -> Option<String> {
    let kinds = |f: &[Field]| f.iter().map(Field::kind).collect::<Vec<_>>();
    if kinds(key) != kinds(end) {
        return Some(format!(
            "the range end's fields {:?} differ from the key's {:?}",
            kinds(end),
            kinds(key)
        ));
    }
    key.iter()
        .zip(end)
        .position(|(k, e)| e < k)
        .map(|i| format!("field {i} ends before it starts"))
}

fn bad_value(fields: &[Field]) -> Option<String> {
    if fields.is_empty() {
        Some("no fields".to_string())
    } else if encoded_len(fields) > DATA_VALUE_MAXLEN {
        Some(format!(
            "{} bytes, more than the kernel's {DATA_VALUE_MAXLEN}",
            encoded_len(fields)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::Ipv4Addr;

    use super::super::types::Verdict;
    use super::super::wire::{NFGENMSG_LEN, NLM_F_ACK, attr, attrs, be32, messages, str_of};
    use super::*;

    fn backend(i: u32) -> Element {
        Element::map(
            vec![
                Field::Ipv4(Ipv4Addr::from(0x0a60_0000 + i)),
                Field::Proto(6),
                Field::Port(80),
                Field::U32(i % 3),
            ],
            Data::Concat(vec![
                Field::Ipv4(Ipv4Addr::from(0x0af4_0000 + i)),
                Field::Port(8080),
            ]),
        )
    }

    #[test]
    fn one_element_is_framed_as_the_kernel_expects() {
        let mut b = Batch::new(Family::Inet, "flatnet");
        b.add(
            "services",
            Element::map(
                vec![
                    Field::Ipv4(Ipv4Addr::new(10, 96, 0, 1)),
                    Field::Proto(17),
                    Field::Port(53),
                ],
                Data::Verdict(Verdict::Goto("lb-2".into())),
            )
            .with_timeout_ms(3000),
        );
        let enc = b.encode(100);
        let msgs: Vec<_> = messages(&enc.bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 3);
        // Batch begin and end: family AF_UNSPEC, res_id NFNL_SUBSYS_NFTABLES (big endian).
        assert_eq!(msgs[0].ty, 0x10);
        assert_eq!(msgs[0].payload, &[0, 0, 0, 10]);
        assert_eq!(msgs[2].ty, 0x11);
        assert_eq!(msgs[2].seq, 102);
        let m = &msgs[1];
        assert_eq!(m.ty, (10 << 8) | 12);
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(m.seq, 101);
        assert_eq!(&m.payload[..NFGENMSG_LEN], &[1, 0, 0, 0]);
        let a = &m.payload[NFGENMSG_LEN..];
        assert_eq!(
            str_of(attr(a, NFTA_SET_ELEM_LIST_TABLE).unwrap()),
            "flatnet"
        );
        assert_eq!(str_of(attr(a, NFTA_SET_ELEM_LIST_SET).unwrap()), "services");
        let list = attr(a, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
        let elems: Vec<_> = attrs(list).collect();
        assert_eq!(elems.len(), 1);
        assert_eq!(elems[0].0, NFTA_LIST_ELEM);
        let el = elems[0].1;
        let key = attr(attr(el, NFTA_SET_ELEM_KEY).unwrap(), NFTA_DATA_VALUE).unwrap();
        assert_eq!(key, &[10, 96, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(
            attr(el, NFTA_SET_ELEM_TIMEOUT).unwrap(),
            &3000u64.to_be_bytes()
        );
        let verdict = attr(attr(el, NFTA_SET_ELEM_DATA).unwrap(), NFTA_DATA_VERDICT).unwrap();
        assert_eq!(
            be32(attr(verdict, NFTA_VERDICT_CODE).unwrap()),
            Some((-4i32) as u32)
        );
        assert_eq!(str_of(attr(verdict, NFTA_VERDICT_CHAIN).unwrap()), "lb-2");
    }

    #[test]
    fn flush_is_a_delete_without_elements() {
        let mut b = Batch::new(Family::Inet, "t");
        b.flush("backends");
        let enc = b.encode(1);
        let msgs: Vec<_> = messages(&enc.bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs[1].ty, (10 << 8) | 14);
        assert!(
            attr(
                &msgs[1].payload[NFGENMSG_LEN..],
                NFTA_SET_ELEM_LIST_ELEMENTS
            )
            .is_none()
        );
    }

    #[test]
    fn many_elements_are_split_into_messages_whose_element_list_fits_16_bits() {
        let mut b = Batch::new(Family::Inet, "flatnet");
        for i in 0..10_000 {
            b.add("backends", backend(i));
        }
        assert_eq!(b.len(), 10_000);
        let enc = b.encode(1);
        let msgs: Vec<_> = messages(&enc.bytes).collect::<Result<_, _>>().unwrap();
        assert!(
            msgs.len() > 3,
            "expected several requests, got {}",
            msgs.len()
        );
        assert_eq!(enc.requests(), msgs.len() - 2);
        let mut total = 0;
        for m in &msgs[1..msgs.len() - 1] {
            let list = attr(&m.payload[NFGENMSG_LEN..], NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
            assert!(list.len() + 4 <= u16::MAX as usize);
            total += attrs(list).count();
        }
        assert_eq!(total, 10_000);
        // Sequence numbers are consecutive.
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.seq, 1 + i as u32);
        }
    }

    #[test]
    fn operations_on_one_set_keep_their_order_and_sets_are_grouped() {
        let mut b = Batch::new(Family::Inet, "t");
        b.delete("backends", backend(1).key);
        b.add("services", Element::key(vec![Field::Port(1)]));
        b.add("backends", backend(1));
        b.delete("services", vec![Field::Port(2)]);
        let enc = b.encode(0);
        let msgs: Vec<_> = messages(&enc.bytes).collect::<Result<_, _>>().unwrap();
        let order: Vec<(u16, String)> = msgs[1..msgs.len() - 1]
            .iter()
            .map(|m| {
                let a = &m.payload[NFGENMSG_LEN..];
                (
                    m.ty & 0xff,
                    str_of(attr(a, NFTA_SET_ELEM_LIST_SET).unwrap()),
                )
            })
            .collect();
        let want = [
            (14, "backends"),
            (12, "backends"),
            (12, "services"),
            (14, "services"),
        ];
        let want: Vec<(u16, String)> = want.iter().map(|(t, s)| (*t, s.to_string())).collect();
        assert_eq!(order, want);
    }

    #[test]
    fn describe_names_the_element_the_kernel_points_at() {
        let mut b = Batch::new(Family::Inet, "flatnet");
        for i in 0..5000 {
            b.add("backends", backend(i));
        }
        let enc = b.encode(10);
        // The second request's third element.
        let info = &enc.msgs[1];
        let seq = 10 + 2;
        let off = info.offsets[2];
        let want = format!(
            "nft batch for inet flatnet: map backends: add element {}",
            backend((info.first + 2) as u32)
        );
        assert_eq!(b.describe(&enc, seq, Some(off)), want);
        // An offset inside the element (a nested attribute) names the same element.
        assert_eq!(b.describe(&enc, seq, Some(off + 8)), want);
        assert!(b.describe(&enc, seq, None).ends_with("elements"));
        assert_eq!(b.describe(&enc, 10, None), "nft batch for inet flatnet");
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut b = Batch::new(Family::Inet, "flatnet");
        b.add("backends", backend(1));
        b.add(
            "services",
            Element::map(
                vec![Field::Port(1)],
                Data::Verdict(Verdict::Goto(String::new())),
            ),
        );
        let err = b.validate().unwrap_err().to_string();
        assert!(err.contains("map services"), "{err}");
        assert!(err.contains("verdict chain"), "{err}");

        let mut b = Batch::new(Family::Inet, "flatnet");
        b.delete("backends", vec![]);
        let err = b.validate().unwrap_err().to_string();
        assert!(err.contains("key") && err.contains("no fields"), "{err}");

        let mut b = Batch::new(Family::Inet, "flatnet");
        b.add("x", Element::key(vec![Field::U32(1); 17]));
        let err = b.validate().unwrap_err().to_string();
        assert!(err.contains("68 bytes"), "{err}");

        let b = Batch::new(Family::Inet, &"t".repeat(300));
        assert!(b.validate().unwrap_err().to_string().contains("table"));
    }
}
