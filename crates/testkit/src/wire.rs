//! Wiring between a test's namespaces: veth pairs, two nodes on an underlay, and pods wired
//! the way flatnet-cni wires them.

use crate::TestNs;

/// A veth pair from `a` (device `a_dev`) to `b` (device `b_dev`), both ends up.
pub fn veth_pair(a: &TestNs, a_dev: &str, b: &TestNs, b_dev: &str) {
    a.ip(&[
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", a_dev, "up"]);
    b.ip(&["link", "set", b_dev, "up"]);
}

/// Two nodes on one underlay link: `eth0` in each, with 10.99.`net`.1/24 and .2/24.
#[derive(Debug)]
pub struct Nodes {
    /// The node with 10.99.`net`.1.
    pub a: TestNs,
    /// The node with 10.99.`net`.2.
    pub b: TestNs,
}

/// [`Nodes`] on underlay 10.99.`net`.0/24, or `None` after [`crate::skip_or_fail`].
pub fn two_nodes(net: u8) -> Option<Nodes> {
    let a = TestNs::new("ftk-a")?;
    let b = TestNs::new("ftk-b")?;
    veth_pair(&a, "eth0", &b, "eth0");
    for (ns, host) in [(&a, 1), (&b, 2)] {
        ns.ip(&[
            "addr",
            "add",
            &format!("10.99.{net}.{host}/24"),
            "dev",
            "eth0",
        ]);
    }
    Some(Nodes { a, b })
}

/// A pod namespace behind `node` with `ip`/32 on its `eth0`, wired like flatnet-cni does: a
/// veth (`veth` on the node), a /32 route on the node, a link-local default gateway
/// (169.254.1.1) and static neighbours both ways. Panics when namespaces cannot be made (call
/// it after the node exists).
pub fn pod(node: &TestNs, ip: &str, veth: &str) -> TestNs {
    let p = TestNs::create("ftk-pod").unwrap_or_else(|e| panic!("pod namespace: {e}"));
    veth_pair(node, veth, &p, "eth0");
    p.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    p.ip(&[
        "route",
        "add",
        "169.254.1.1/32",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    p.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    p.ip(&[
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        &mac(node, veth),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    node.ip(&[
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        veth,
        "scope",
        "link",
    ]);
    node.ip(&[
        "neigh",
        "replace",
        ip,
        "lladdr",
        &mac(&p, "eth0"),
        "dev",
        veth,
        "nud",
        "permanent",
    ]);
    p
}

/// The MAC address of `dev` in `ns`.
fn mac(ns: &TestNs, dev: &str) -> String {
    let link = ns.ip_json(&["link", "show", dev]);
    link.first()
        .and_then(|l| l["address"].as_str())
        .unwrap_or_else(|| panic!("no address of {dev} in {}: {link:?}", ns.name()))
        .to_string()
}
