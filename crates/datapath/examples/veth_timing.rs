//! Measures kernel costs of veth operations (run as root; makes and removes namespaces
//! `flt-time-a`/`flt-time-b`).
use std::time::Instant;
fn main() {
    let _ = std::process::Command::new("ip")
        .args(["netns", "add", "flt-time-a"])
        .status();
    let _ = std::process::Command::new("ip")
        .args(["netns", "add", "flt-time-b"])
        .status();
    let a = datapath::NetNs::open("/run/netns/flt-time-a").expect("ns a");
    let b = datapath::NetNs::open("/run/netns/flt-time-b").expect("ns b");
    let mut h = datapath::Handle::in_netns(&a).expect("handle");
    for i in 0..5 {
        let t = Instant::now();
        h.add_veth(&format!("v{i}"), "eth0x", b.raw_fd(), 1500)
            .expect("add");
        let add = t.elapsed();
        let l = h.link(&format!("v{i}")).expect("get").expect("exists");
        h.set_up(l.index).expect("up");
        let t = Instant::now();
        h.del_link(&format!("v{i}")).expect("del");
        println!("add {:?} del {:?}", add, t.elapsed());
    }
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", "flt-time-a"])
        .status();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", "flt-time-b"])
        .status();
}
