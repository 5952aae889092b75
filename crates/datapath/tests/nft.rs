//! Tier 1: `datapath::nft` against the kernel. Every test makes its own network namespace
//! (removed on every path by `Drop`), writes the table's structure with `run_script`, sends
//! elements with `Nft::commit` and compares with what `nft -j` lists, which is the kernel's
//! state decoded by the reference implementation. The last test sends packets through the
//! maps. Needs root, `ip` and `nft`; prints SKIPPED otherwise, unless REQUIRE_NETNS=1 (then it
//! fails).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use datapath::nft::{
    Batch, Data, Element, Family, Field, FieldKind, Nft, NftError, Verdict, list_table_json,
    run_script,
};
use serde_json::Value;
use testkit::TestNs;

/// What `nft` lists inside one of the test's namespaces.
trait Listed {
    /// `nft -j ARGS` inside the namespace, parsed.
    fn nft_json(&self, args: &[&str]) -> Value;
    /// The elements of map or set `name` of `inet flatnet` as `nft -j` lists them, each
    /// rendered by [`render_json_elem`].
    fn listed(&self, name: &str) -> BTreeSet<String>;
}

impl Listed for TestNs {
    fn nft_json(&self, args: &[&str]) -> Value {
        let mut argv = vec!["nft", "-j"];
        argv.extend_from_slice(args);
        let out = self.exec(&argv);
        assert!(
            out.status.success(),
            "nft -j {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn listed(&self, name: &str) -> BTreeSet<String> {
        let kind = if SETS.contains(&name) { "set" } else { "map" };
        let v = self.nft_json(&["list", kind, "inet", "flatnet", name]);
        let obj = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|o| o.get(kind))
            .unwrap_or_else(|| panic!("no {kind} {name} in {v}"))
            .clone();
        obj.get("elem")
            .and_then(Value::as_array)
            .map(|elems| elems.iter().map(render_json_elem).collect())
            .unwrap_or_default()
    }
}

const STRUCTURE: &str = "
table inet flatnet {
  map backends { typeof ip daddr . meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport ; size 1000000; }
  map frontends { type ipv4_addr . inet_proto . inet_service : verdict ; size 1000000; }
  map affinity { typeof ip saddr . meta mark : ip daddr . th dport ; flags dynamic,timeout ; timeout 3h ; }
  map ids { typeof ip daddr . meta l4proto . th dport : ct mark ; }
  map by-mark { type mark : verdict ; }
  set ports { type inet_service ; }
  set protos { type inet_proto ; }
  set pairs { type ipv4_addr . ipv4_addr ; }
  set allow { type ipv4_addr . ipv4_addr . inet_proto . inet_service ; flags interval ; }
  chain lb-3 {
    dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @backends
  }
  chain reject-it {
    reject
  }
}
";

/// The sets (not maps) of [`STRUCTURE`].
const SETS: [&str; 4] = ["ports", "protos", "pairs", "allow"];

/// A namespace with [`STRUCTURE`] and a socket in it.
fn setup(tag: &str) -> Option<(TestNs, Nft)> {
    let ns = TestNs::new(&format!("flt-nft-{tag}"))?;
    run_script(Some(&ns.path()), STRUCTURE).unwrap();
    let nft = Nft::open(Some(&ns.path())).unwrap();
    Some((ns, nft))
}

const BACKEND_KEY: [FieldKind; 4] = [
    FieldKind::Ipv4,
    FieldKind::Proto,
    FieldKind::Port,
    FieldKind::U32,
];
const BACKEND_VALUE: [FieldKind; 2] = [FieldKind::Ipv4, FieldKind::Port];
const FRONTEND_KEY: [FieldKind; 3] = [FieldKind::Ipv4, FieldKind::Proto, FieldKind::Port];
const AFFINITY_KEY: [FieldKind; 2] = [FieldKind::Ipv4, FieldKind::Mark];

fn ip(s: &str) -> Field {
    Field::Ipv4(s.parse().unwrap())
}

fn frontend(addr: &str, proto: u8, port: u16) -> Vec<Field> {
    vec![ip(addr), Field::Proto(proto), Field::Port(port)]
}

fn backend(addr: &str, proto: u8, port: u16, slot: u32, to: &str, to_port: u16) -> Element {
    let mut key = frontend(addr, proto, port);
    key.push(Field::U32(slot));
    Element::map(key, Data::Concat(vec![ip(to), Field::Port(to_port)]))
}

fn goto(chain: &str) -> Data {
    Data::Verdict(Verdict::Goto(chain.to_string()))
}

/// Service `i` of a large load: 10.96.x.y:80/tcp.
fn service_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0000 + i)
}

/// `a . b : c . d`, one element as `nft -j` lists it: addresses and protocol names as
/// strings, other integers in decimal, verdicts as `goto X`, a timeout as `timeout Ns`.
fn render_json_elem(e: &Value) -> String {
    let (key, data) = match e.as_array() {
        Some(pair) => (&pair[0], Some(&pair[1])),
        None => (e, None),
    };
    let (key, timeout) = match key.get("elem") {
        Some(inner) => (&inner["val"], inner.get("timeout").and_then(Value::as_u64)),
        None => (key, None),
    };
    let mut s = render_json_value(key);
    if let Some(t) = timeout {
        s.push_str(&format!(" timeout {t}s"));
    }
    if let Some(d) = data {
        s.push_str(" : ");
        s.push_str(&render_json_value(d));
    }
    s
}

fn render_json_value(v: &Value) -> String {
    if let Some(items) = v.get("concat").and_then(Value::as_array) {
        return items
            .iter()
            .map(render_json_value)
            .collect::<Vec<_>>()
            .join(" . ");
    }
    for verdict in ["goto", "jump"] {
        if let Some(t) = v.get(verdict) {
            return format!("{verdict} {}", t["target"].as_str().unwrap());
        }
    }
    for verdict in ["accept", "drop"] {
        if v.get(verdict).is_some() {
            return verdict.to_string();
        }
    }
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        return format!("{}-{}", render_json_value(&r[0]), render_json_value(&r[1]));
    }
    if let Some(p) = v.get("prefix") {
        return format!("{}/{}", render_json_value(&p["addr"]), p["len"]);
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("unexpected element value {other}"),
    }
}

/// The same rendering for an element we sent.
fn render(e: &Element) -> String {
    let fields = |fs: &[Field]| {
        fs.iter()
            .map(|f| match f {
                Field::Ipv4(a) => a.to_string(),
                Field::Proto(_) => f.to_string(),
                Field::Port(p) => p.to_string(),
                Field::U32(v) | Field::Mark(v) => v.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" . ")
    };
    let mut s = fields(&e.key);
    if let Some(ms) = e.timeout_ms {
        s.push_str(&format!(" timeout {}s", ms / 1000));
    }
    match &e.data {
        Some(Data::Concat(d)) => s.push_str(&format!(" : {}", fields(d))),
        Some(Data::Verdict(v)) => s.push_str(&format!(" : {v}")),
        None => {}
    }
    s
}

fn rendered(elems: &[Element]) -> BTreeSet<String> {
    elems.iter().map(render).collect()
}

#[test]
fn added_elements_are_what_nft_lists() {
    let Some((ns, mut nft)) = setup("add") else {
        return;
    };
    let backends = vec![
        backend("10.96.0.1", 6, 80, 0, "10.244.1.5", 8080),
        backend("10.96.0.1", 6, 80, 1, "10.244.2.5", 8080),
        backend("10.96.0.1", 6, 80, 2, "10.244.3.5", 65535),
        backend("10.96.0.2", 17, 53, 0, "10.244.1.9", 53),
        backend("10.96.0.3", 132, 9999, 1, "10.244.1.10", 1),
    ];
    let frontends = vec![
        Element::map(frontend("10.96.0.1", 6, 80), goto("lb-3")),
        Element::map(
            frontend("10.96.0.2", 17, 53),
            Data::Verdict(Verdict::Jump("lb-3".into())),
        ),
        Element::map(
            frontend("10.96.0.3", 132, 9999),
            Data::Verdict(Verdict::Accept),
        ),
        Element::map(frontend("10.96.0.4", 6, 1), Data::Verdict(Verdict::Drop)),
    ];
    let affinity = vec![
        Element::map(
            vec![ip("10.0.0.1"), Field::Mark(5)],
            Data::Concat(vec![ip("10.244.1.5"), Field::Port(8080)]),
        )
        .with_timeout_ms(10_000),
        Element::map(
            vec![ip("10.0.0.2"), Field::Mark(0x4000)],
            Data::Concat(vec![ip("10.244.1.6"), Field::Port(8081)]),
        ),
    ];
    let mut batch = Batch::new(Family::Inet, "flatnet");
    for e in &backends {
        batch.add("backends", e.clone());
    }
    for e in &frontends {
        batch.add("frontends", e.clone());
    }
    for e in &affinity {
        batch.add("affinity", e.clone());
    }
    assert_eq!(batch.len(), 11);
    nft.commit(&batch).unwrap();

    assert_eq!(ns.listed("backends"), rendered(&backends));
    assert_eq!(ns.listed("frontends"), rendered(&frontends));
    assert_eq!(ns.listed("affinity"), rendered(&affinity));
    // Spelled out once, as nft prints it, so the rendering above cannot hide a mistake.
    assert!(
        ns.listed("frontends")
            .contains("10.96.0.1 . tcp . 80 : goto lb-3")
    );
    assert!(
        ns.listed("backends")
            .contains("10.96.0.1 . tcp . 80 . 2 : 10.244.3.5 . 65535")
    );
    assert!(
        ns.listed("affinity")
            .contains("10.0.0.1 . 5 timeout 10s : 10.244.1.5 . 8080")
    );

    // Committing the same additions again is not an error and changes nothing.
    nft.commit(&batch).unwrap();
    assert_eq!(ns.listed("backends"), rendered(&backends));
    // An empty batch sends nothing.
    nft.commit(&Batch::new(Family::Inet, "flatnet")).unwrap();
}

#[test]
fn single_field_keys_and_values_use_their_natural_length() {
    let Some((ns, mut nft)) = setup("single") else {
        return;
    };
    let ids = vec![
        Element::map(
            frontend("10.96.0.1", 6, 80),
            Data::Concat(vec![Field::Mark(7)]),
        ),
        Element::map(
            frontend("10.96.0.1", 17, 80),
            Data::Concat(vec![Field::Mark(0x8000_0001)]),
        ),
    ];
    let by_mark = vec![
        Element::map(vec![Field::Mark(7)], goto("reject-it")),
        Element::map(vec![Field::Mark(9)], Data::Verdict(Verdict::Accept)),
    ];
    let ports = vec![
        Element::key(vec![Field::Port(80)]),
        Element::key(vec![Field::Port(65535)]),
    ];
    let protos = vec![
        Element::key(vec![Field::Proto(6)]),
        Element::key(vec![Field::Proto(132)]),
    ];
    let pairs = vec![Element::key(vec![ip("10.244.1.5"), ip("10.244.1.5")])];
    let mut batch = Batch::new(Family::Inet, "flatnet");
    for (set, elems) in [
        ("ids", &ids),
        ("by-mark", &by_mark),
        ("ports", &ports),
        ("protos", &protos),
        ("pairs", &pairs),
    ] {
        for e in elems {
            batch.add(set, e.clone());
        }
    }
    nft.commit(&batch).unwrap();
    assert_eq!(ns.listed("ids"), rendered(&ids));
    assert_eq!(ns.listed("by-mark"), rendered(&by_mark));
    assert_eq!(ns.listed("ports"), rendered(&ports));
    assert_eq!(ns.listed("protos"), rendered(&protos));
    assert_eq!(ns.listed("pairs"), rendered(&pairs));

    let sorted = |mut v: Vec<Element>| {
        v.sort();
        v
    };
    let got = nft
        .list_elements("flatnet", "ids", &FRONTEND_KEY, Some(&[FieldKind::Mark]))
        .unwrap();
    assert_eq!(sorted(got), sorted(ids));
    let got = nft
        .list_elements("flatnet", "ports", &[FieldKind::Port], None)
        .unwrap();
    assert_eq!(sorted(got), sorted(ports));
    let got = nft
        .list_elements("flatnet", "by-mark", &[FieldKind::Mark], None)
        .unwrap();
    assert_eq!(sorted(got), sorted(by_mark));
}

#[test]
fn delete_and_flush_remove_elements() {
    let Some((ns, mut nft)) = setup("del") else {
        return;
    };
    let backends: Vec<Element> = (0..3)
        .map(|slot| backend("10.96.0.1", 6, 80, slot, "10.244.1.5", 8080 + slot as u16))
        .collect();
    let frontends = vec![
        Element::map(frontend("10.96.0.1", 6, 80), goto("lb-3")),
        Element::map(frontend("10.96.0.2", 6, 80), goto("lb-3")),
    ];
    let mut batch = Batch::new(Family::Inet, "flatnet");
    for e in backends.iter().chain(&frontends) {
        let set = if e.key.len() == 4 {
            "backends"
        } else {
            "frontends"
        };
        batch.add(set, e.clone());
    }
    nft.commit(&batch).unwrap();

    // Delete one backend; replace another's value (delete then add in one batch).
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.delete("backends", backends[0].key.clone());
    batch.delete("backends", backends[1].key.clone());
    let replaced = backend("10.96.0.1", 6, 80, 1, "10.244.9.9", 9090);
    batch.add("backends", replaced.clone());
    nft.commit(&batch).unwrap();
    assert_eq!(
        ns.listed("backends"),
        rendered(&[backends[2].clone(), replaced.clone()])
    );

    // Adding a key that exists with another value is refused: the batch must delete first.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.add("backends", backend("10.96.0.1", 6, 80, 1, "10.244.7.7", 1));
    let err = nft.commit(&batch).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert!(err.to_string().contains("map backends"), "{err}");

    // Deleting a key that is not there fails and changes nothing.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.delete("backends", backends[2].key.clone());
    batch.delete("backends", backends[0].key.clone());
    let err = nft.commit(&batch).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(
        err.to_string()
            .contains("delete element 10.96.0.1 . tcp . 80 . 0"),
        "{err}"
    );
    assert_eq!(
        ns.listed("backends"),
        rendered(&[backends[2].clone(), replaced])
    );

    // Flush empties one map and leaves the others alone; a flush then an add in one batch
    // leaves exactly the added elements.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.flush("frontends");
    nft.commit(&batch).unwrap();
    assert!(ns.listed("frontends").is_empty());
    assert_eq!(ns.listed("backends").len(), 2);
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.flush("backends");
    batch.add("backends", backends[0].clone());
    nft.commit(&batch).unwrap();
    assert_eq!(ns.listed("backends"), rendered(&backends[..1]));
}

#[test]
fn a_batch_with_one_bad_element_changes_nothing_and_names_it() {
    let Some((ns, mut nft)) = setup("atomic") else {
        return;
    };
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.add(
        "frontends",
        Element::map(frontend("10.96.0.1", 6, 80), goto("lb-3")),
    );
    nft.commit(&batch).unwrap();
    let before_frontends = ns.listed("frontends");

    // Thousands of good elements in several maps, one goto to a chain that does not exist in
    // the middle of the frontends.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.flush("backends");
    for i in 0..3000 {
        batch.add(
            "backends",
            backend(&service_ip(i).to_string(), 6, 80, i % 3, "10.244.1.5", 80),
        );
    }
    for i in 0..3000 {
        let chain = if i == 1777 { "no-such-chain" } else { "lb-3" };
        batch.add(
            "frontends",
            Element::map(
                frontend(&service_ip(10_000 + i).to_string(), 6, 80),
                goto(chain),
            ),
        );
    }
    let err = nft.commit(&batch).unwrap_err();
    let msg = err.to_string();
    eprintln!("the error: {msg}");
    assert_eq!(err.errno(), Some(libc::ENOENT), "{msg}");
    let bad = service_ip(10_000 + 1777);
    assert!(
        msg.starts_with(&format!(
            "nft batch for inet flatnet: map frontends: add element {bad} . tcp . 80 : goto no-such-chain"
        )),
        "{msg}"
    );
    // Nothing of it applied: not the flush, not the good elements before the bad one.
    assert!(ns.listed("backends").is_empty());
    assert_eq!(ns.listed("frontends"), before_frontends);

    // A map that does not exist: the error names it, the rest of the batch is not applied.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.add("backends", backend("10.96.0.9", 6, 80, 0, "10.244.1.5", 80));
    batch.add("no-such-map", Element::key(vec![Field::Port(1)]));
    let err = nft.commit(&batch).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(
        err.to_string()
            .starts_with("nft batch for inet flatnet: set no-such-map: add 1 element:"),
        "{err}"
    );
    assert!(ns.listed("backends").is_empty());

    // A key of the wrong shape for the map is refused by the kernel (and names the element).
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.add(
        "backends",
        Element::map(
            frontend("10.96.0.9", 6, 80),
            Data::Concat(vec![ip("10.244.1.5"), Field::Port(80)]),
        ),
    );
    let err = nft.commit(&batch).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
    assert!(
        err.to_string()
            .contains("map backends: add element 10.96.0.9 . tcp . 80 :"),
        "{err}"
    );

    // Values checked before sending: the error names the field and value.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.add(
        "frontends",
        Element::map(frontend("10.96.0.9", 6, 80), goto("")),
    );
    let err = nft.commit(&batch).unwrap_err();
    assert!(matches!(err, NftError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("verdict chain"), "{err}");

    // The socket is still usable after errors.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.add("backends", backend("10.96.0.9", 6, 80, 0, "10.244.1.5", 80));
    nft.commit(&batch).unwrap();
    assert_eq!(ns.listed("backends").len(), 1);

    // A table that does not exist.
    let mut batch = Batch::new(Family::Inet, "nosuch");
    batch.add("backends", backend("10.96.0.9", 6, 80, 0, "10.244.1.5", 80));
    let err = nft.commit(&batch).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(
        err.to_string()
            .starts_with("nft batch for inet nosuch: map backends"),
        "{err}"
    );
}

#[test]
fn list_elements_round_trips_what_was_added() {
    let Some((_ns, mut nft)) = setup("list") else {
        return;
    };
    let backends: Vec<Element> = (0..500)
        .map(|i| {
            backend(
                &service_ip(i).to_string(),
                if i % 2 == 0 { 6 } else { 17 },
                (i % 65_000) as u16 + 1,
                i % 3,
                &Ipv4Addr::from(0x0af4_0000 + i).to_string(),
                8080,
            )
        })
        .collect();
    let frontends = vec![
        Element::map(frontend("10.96.0.1", 6, 80), goto("lb-3")),
        Element::map(
            frontend("10.96.0.1", 6, 81),
            Data::Verdict(Verdict::Jump("reject-it".into())),
        ),
        Element::map(frontend("10.96.0.1", 6, 82), Data::Verdict(Verdict::Drop)),
        Element::map(frontend("10.96.0.1", 6, 83), Data::Verdict(Verdict::Accept)),
    ];
    // Timeouts in whole seconds: the kernel keeps them in jiffies.
    let affinity = vec![
        Element::map(
            vec![ip("10.0.0.1"), Field::Mark(1)],
            Data::Concat(vec![ip("10.244.1.5"), Field::Port(80)]),
        )
        .with_timeout_ms(60_000),
        Element::map(
            vec![ip("10.0.0.2"), Field::Mark(2)],
            Data::Concat(vec![ip("10.244.1.6"), Field::Port(81)]),
        )
        .with_timeout_ms(7_200_000),
        // No timeout of its own: it gets the map's 3h, which is not reported back.
        Element::map(
            vec![ip("10.0.0.3"), Field::Mark(3)],
            Data::Concat(vec![ip("10.244.1.7"), Field::Port(82)]),
        ),
    ];
    let mut batch = Batch::new(Family::Inet, "flatnet");
    for e in &backends {
        batch.add("backends", e.clone());
    }
    for e in &frontends {
        batch.add("frontends", e.clone());
    }
    for e in &affinity {
        batch.add("affinity", e.clone());
    }
    nft.commit(&batch).unwrap();

    let sorted = |mut v: Vec<Element>| {
        v.sort();
        v
    };
    let got = nft
        .list_elements("flatnet", "backends", &BACKEND_KEY, Some(&BACKEND_VALUE))
        .unwrap();
    assert_eq!(sorted(got), sorted(backends));
    let got = nft
        .list_elements("flatnet", "frontends", &FRONTEND_KEY, None)
        .unwrap();
    assert_eq!(sorted(got), sorted(frontends));
    let got = nft
        .list_elements("flatnet", "affinity", &AFFINITY_KEY, Some(&BACKEND_VALUE))
        .unwrap();
    assert_eq!(sorted(got), sorted(affinity));

    // An empty map, a wrong shape and a missing map.
    assert!(
        nft.list_elements("flatnet", "ports", &[FieldKind::Port], None)
            .unwrap()
            .is_empty()
    );
    let err = nft
        .list_elements("flatnet", "backends", &FRONTEND_KEY, Some(&BACKEND_VALUE))
        .unwrap_err();
    assert!(matches!(err, NftError::Decode { .. }), "{err}");
    let err = nft
        .list_elements("flatnet", "nosuch", &FRONTEND_KEY, None)
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(err.to_string().contains("nosuch"), "{err}");
    let err = nft
        .list_elements("flatnet", "backends", &BACKEND_KEY, None)
        .unwrap_err();
    assert!(err.to_string().contains("no value shape"), "{err}");
}

#[test]
fn a_hundred_thousand_elements_go_in_one_commit() {
    let Some((ns, mut nft)) = setup("large") else {
        return;
    };
    // 10k services x 10 endpoints: 100k backends and 10k frontends.
    let load = |target_port: u16| {
        let mut batch = Batch::new(Family::Inet, "flatnet");
        batch.flush("frontends");
        batch.flush("backends");
        for s in 0..10_000u32 {
            let vip = service_ip(s);
            batch.add(
                "frontends",
                Element::map(
                    vec![Field::Ipv4(vip), Field::Proto(6), Field::Port(80)],
                    goto("lb-3"),
                ),
            );
            for slot in 0..10u32 {
                batch.add(
                    "backends",
                    Element::map(
                        vec![
                            Field::Ipv4(vip),
                            Field::Proto(6),
                            Field::Port(80),
                            Field::U32(slot),
                        ],
                        Data::Concat(vec![
                            Field::Ipv4(Ipv4Addr::from(0x0af4_0000 + s * 10 + slot)),
                            Field::Port(target_port),
                        ]),
                    ),
                );
            }
        }
        batch
    };
    let batch = load(8080);
    assert_eq!(batch.len(), 110_002);
    let t = Instant::now();
    nft.commit(&batch).unwrap();
    let first = t.elapsed();
    let t = Instant::now();
    let backends = nft
        .list_elements("flatnet", "backends", &BACKEND_KEY, Some(&BACKEND_VALUE))
        .unwrap();
    let listing = t.elapsed();
    assert_eq!(backends.len(), 100_000);
    let targets: BTreeSet<Field> = backends
        .iter()
        .map(|e| match &e.data {
            Some(Data::Concat(d)) if d[1] == Field::Port(8080) => d[0],
            other => panic!("unexpected value {other:?}"),
        })
        .collect();
    assert_eq!(targets.len(), 100_000);
    let frontends = nft
        .list_elements("flatnet", "frontends", &FRONTEND_KEY, None)
        .unwrap();
    assert_eq!(frontends.len(), 10_000);
    // nft agrees on the count.
    assert_eq!(ns.listed("frontends").len(), 10_000);

    // A full reload (flush and re-add everything) in one transaction.
    let batch = load(9090);
    let t = Instant::now();
    nft.commit(&batch).unwrap();
    let reload = t.elapsed();
    let backends = nft
        .list_elements("flatnet", "backends", &BACKEND_KEY, Some(&BACKEND_VALUE))
        .unwrap();
    assert_eq!(backends.len(), 100_000);
    assert!(
        backends
            .iter()
            .all(|e| matches!(&e.data, Some(Data::Concat(d)) if d[1] == Field::Port(9090)))
    );
    eprintln!(
        "110,002 operations: first commit {first:?}, flush and reload {reload:?}; \
         listing 100k elements {listing:?} (not asserted)"
    );
}

/// TCP listeners inside a namespace that answer each connection with their port; stopped on
/// drop.
struct Listeners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Listeners {
    fn start(ns: &TestNs, addr: Ipv4Addr, ports: &[u16]) -> Listeners {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let listener = ns.run(|| TcpListener::bind((addr, port)).unwrap());
            listener.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.write_all(port.to_string().as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        Listeners { stop, threads }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn packets_are_dnatted_through_the_maps_to_every_slot() {
    let Some(client) = testkit::netns!("flt-nft-cli") else {
        return;
    };
    let Some(server) = testkit::netns!("flt-nft-srv") else {
        return;
    };
    client.ip(&[
        "link",
        "add",
        "veth0",
        "type",
        "veth",
        "peer",
        "name",
        "veth0",
        "netns",
        server.name(),
    ]);
    client.ip(&["addr", "add", "10.99.0.1/24", "dev", "veth0"]);
    server.ip(&["addr", "add", "10.99.0.2/24", "dev", "veth0"]);
    client.ip(&["link", "set", "veth0", "up"]);
    server.ip(&["link", "set", "veth0", "up"]);
    client.ip(&["route", "add", "10.96.0.0/12", "dev", "veth0"]);

    let script = format!(
        "{STRUCTURE}
table inet flatnet {{
  chain out {{
    type nat hook output priority -100; policy accept;
    ip daddr . meta l4proto . th dport vmap @frontends
  }}
}}"
    );
    run_script(Some(&client.path()), &script).unwrap();
    let _listeners = Listeners::start(&server, Ipv4Addr::new(10, 99, 0, 2), &[8080, 8081, 8082]);

    let mut nft = Nft::open(Some(&client.path())).unwrap();
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.add(
        "frontends",
        Element::map(frontend("10.96.0.10", 6, 80), goto("lb-3")),
    );
    for slot in 0..3u32 {
        batch.add(
            "backends",
            backend("10.96.0.10", 6, 80, slot, "10.99.0.2", 8080 + slot as u16),
        );
    }
    nft.commit(&batch).unwrap();

    // numgen picks a slot at random: connect until every slot answered (or give up).
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..300 {
        let answer = client.run(|| {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connect to {vip} through the maps: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        });
        *seen.entry(answer).or_default() += 1;
        if seen.len() == 3 {
            break;
        }
    }
    let ports: Vec<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(ports, ["8080", "8081", "8082"], "answers: {seen:?}");

    // After deleting the frontend the service is gone (nothing listens on the VIP).
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.delete("frontends", frontend("10.96.0.10", 6, 80));
    nft.commit(&batch).unwrap();
    let refused = client.run(|| TcpStream::connect_timeout(&vip, Duration::from_secs(1)));
    assert!(refused.is_err(), "VIP still answers without its frontend");
}

#[test]
fn run_script_and_list_table_report_the_tools_errors() {
    let Some(ns) = testkit::netns!("flt-nft-tool") else {
        return;
    };
    let err = run_script(Some(&ns.path()), "table inet flatnet { chain c { bogus } }")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("nft -f - in /run/netns/"), "{err}");
    assert!(err.contains("syntax error"), "{err}");
    // Nothing of a failed script is applied.
    let err = list_table_json(Some(&ns.path()), Family::Inet, "flatnet")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nft -j list table inet flatnet"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");

    run_script(Some(&ns.path()), STRUCTURE).unwrap();
    let table = list_table_json(Some(&ns.path()), Family::Inet, "flatnet").unwrap();
    let maps: BTreeSet<&str> = table["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["map"]["name"].as_str())
        .collect();
    assert_eq!(
        maps,
        BTreeSet::from(["affinity", "backends", "by-mark", "frontends", "ids"])
    );
}

/// `pod . peer range . protocol range . port range`, an element of the `allow` set.
fn allow(pod: &str, peer: (&str, &str), proto: (u8, u8), port: (u16, u16)) -> Element {
    Element::range(
        vec![
            ip(pod),
            ip(peer.0),
            Field::Proto(proto.0),
            Field::Port(port.0),
        ],
        vec![
            ip(pod),
            ip(peer.1),
            Field::Proto(proto.1),
            Field::Port(port.1),
        ],
    )
}

#[test]
fn range_elements_of_a_concatenated_interval_set_add_list_and_delete() {
    let Some((ns, mut nft)) = setup("interval") else {
        return;
    };
    let a = allow(
        "10.244.1.5",
        ("10.0.0.0", "10.255.255.255"),
        (6, 6),
        (80, 90),
    );
    let b = allow(
        "10.244.1.5",
        ("192.168.0.7", "192.168.0.7"),
        (0, 255),
        (0, 65535),
    );
    let c = allow("10.244.1.6", ("10.0.0.0", "10.0.0.2"), (17, 17), (53, 53));
    let mut batch = Batch::new(Family::Inet, "flatnet");
    for e in [&a, &b, &c] {
        batch.add("allow", e.clone());
    }
    nft.commit(&batch).unwrap();
    let want: BTreeSet<String> = [
        "10.244.1.5 . 10.0.0.0/8 . tcp . 80-90",
        "10.244.1.5 . 192.168.0.7 . 0-255 . 0-65535",
        "10.244.1.6 . 10.0.0.0-10.0.0.2 . udp . 53",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(ns.listed("allow"), want);

    // Our own listing decodes both ends.
    let shape = [
        FieldKind::Ipv4,
        FieldKind::Ipv4,
        FieldKind::Proto,
        FieldKind::Port,
    ];
    let got: BTreeSet<Element> = nft
        .list_elements("flatnet", "allow", &shape, None)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(got, BTreeSet::from([a.clone(), b.clone(), c.clone()]));

    // A range is deleted by both its ends, in one transaction with an addition.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.delete_range("allow", a.key.clone(), a.key_end.clone().unwrap());
    batch.add(
        "allow",
        allow(
            "10.244.1.5",
            ("10.0.0.0", "10.255.255.255"),
            (6, 6),
            (80, 95),
        ),
    );
    nft.commit(&batch).unwrap();
    let listed = ns.listed("allow");
    assert!(
        listed.contains("10.244.1.5 . 10.0.0.0/8 . tcp . 80-95"),
        "{listed:?}"
    );
    assert!(
        !listed.contains("10.244.1.5 . 10.0.0.0/8 . tcp . 80-90"),
        "{listed:?}"
    );

    // A range starting inside another is refused, and the transaction changes nothing.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.add(
        "allow",
        allow("10.244.1.7", ("10.1.0.0", "10.1.0.0"), (6, 6), (1, 1)),
    );
    batch.add(
        "allow",
        allow("10.244.1.5", ("10.0.0.1", "10.0.0.1"), (6, 6), (85, 85)),
    );
    let err = nft.commit(&batch).unwrap_err().to_string();
    assert!(err.contains("set allow"), "{err}");
    assert_eq!(
        ns.listed("allow").len(),
        3,
        "nothing of the refused batch applied"
    );

    // An end before its start is refused before anything is sent, naming the field.
    let mut batch = Batch::new(Family::Inet, "flatnet");
    batch.add(
        "allow",
        allow("10.244.1.8", ("10.0.0.9", "10.0.0.1"), (6, 6), (1, 1)),
    );
    let err = nft.commit(&batch).unwrap_err().to_string();
    assert!(err.contains("key end") && err.contains("field 1"), "{err}");
}
