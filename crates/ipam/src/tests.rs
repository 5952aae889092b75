use super::*;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flatnet-ipam-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("test cidr")
}

#[test]
fn never_hands_out_network_node_or_broadcast_addresses() {
    let d = tmpdir("reserved");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/29")).expect("ipam");
    assert_eq!(ipam.capacity(), 5);
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(
            ipam.allocate(&format!("c{i}"), "eth0", None)
                .expect("alloc"),
        );
    }
    let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
    assert_eq!(got, want);
    assert!(matches!(
        ipam.allocate("c9", "eth0", None),
        Err(IpamError::Exhausted(_))
    ));
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn allocation_is_round_robin_after_release() {
    let d = tmpdir("rr");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    let a = ipam.allocate("a", "eth0", None).expect("a");
    assert_eq!(ipam.release("a", "eth0").expect("release"), Some(a));
    let b = ipam.allocate("b", "eth0", None).expect("b");
    assert_eq!(
        u32::from(b),
        u32::from(a) + 1,
        "the released address is not reused at once"
    );
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn wraps_around_to_free_addresses() {
    let d = tmpdir("wrap");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/29")).expect("ipam");
    for i in 0..5 {
        ipam.allocate(&format!("c{i}"), "eth0", None)
            .expect("alloc");
    }
    ipam.release("c1", "eth0").expect("release");
    assert_eq!(
        ipam.allocate("x", "eth0", None).expect("x"),
        Ipv4Addr::new(10, 1, 0, 3)
    );
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn same_attachment_twice_is_refused_and_changes_nothing() {
    let d = tmpdir("dup");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    ipam.allocate("a", "eth0", None).expect("a");
    let before = ipam.list().expect("list");
    assert!(matches!(
        ipam.allocate("a", "eth0", None),
        Err(IpamError::Duplicate { .. })
    ));
    assert_eq!(ipam.list().expect("list"), before);
    // another interface of the same container is a different attachment
    ipam.allocate("a", "net1", None).expect("a/net1");
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn requested_address_is_honoured_or_refused() {
    let d = tmpdir("req");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    let ip = Ipv4Addr::new(10, 1, 0, 77);
    assert_eq!(ipam.allocate("a", "eth0", Some(ip)).expect("a"), ip);
    assert!(matches!(
        ipam.allocate("b", "eth0", Some(ip)),
        Err(IpamError::Taken { .. })
    ));
    assert!(matches!(
        ipam.allocate("b", "eth0", Some(Ipv4Addr::new(10, 1, 0, 1))),
        Err(IpamError::NotInRange { .. })
    ));
    assert!(matches!(
        ipam.allocate("b", "eth0", Some(Ipv4Addr::new(10, 2, 0, 5))),
        Err(IpamError::NotInRange { .. })
    ));
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn release_of_unknown_attachment_is_a_no_op() {
    let d = tmpdir("rel");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    assert_eq!(ipam.release("nobody", "eth0").expect("release"), None);
    ipam.allocate("a", "eth0", None).expect("a");
    assert_eq!(ipam.release("a", "eth1").expect("release"), None);
    assert_eq!(ipam.list().expect("list").len(), 1);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn gc_releases_only_attachments_not_listed() {
    let d = tmpdir("gc");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    for c in ["a", "b", "c"] {
        ipam.allocate(c, "eth0", None).expect("alloc");
    }
    let (released, errors) = ipam.gc(&[("b".into(), "eth0".into())]).expect("gc");
    assert!(errors.is_empty());
    let mut ids: Vec<_> = released.iter().map(|r| r.container_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "c"]);
    let left = ipam.list().expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].container_id, "b");
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn too_small_subnet_is_refused() {
    let d = tmpdir("small");
    assert!(matches!(
        Ipam::new(&d, "n", net("10.1.0.0/31")),
        Err(IpamError::SubnetTooSmall(_))
    ));
}

#[test]
fn fifty_concurrent_allocations_get_distinct_addresses() {
    let d = tmpdir("conc");
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || {
                let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
                ipam.allocate(&format!("c{i}"), "eth0", None)
                    .expect("alloc")
            })
        })
        .collect();
    let mut ips: Vec<Ipv4Addr> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50);
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    assert_eq!(ipam.list().expect("list").len(), 50);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn stray_temporary_files_are_not_records() {
    let d = tmpdir("stray");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    ipam.allocate("a", "eth0", None).expect("a");
    // what a crash between writing and linking leaves behind
    fs::write(d.join("n").join(".tmp-999999"), "ghost\neth0").expect("write");
    assert_eq!(ipam.list().expect("list").len(), 1);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn records_name_their_attachment_and_address() {
    let d = tmpdir("content");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    let ip = ipam.allocate("ctr", "eth0", None).expect("alloc");
    let text = fs::read_to_string(d.join("n").join(ip.to_string())).expect("record");
    assert_eq!(text, format!("ctr\neth0\n{ip}"));
    assert_eq!(ipam.find("ctr", "eth0").expect("find"), Some(ip));
    assert_eq!(ipam.find("ctr", "eth1").expect("find"), None);
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn an_index_left_by_a_crash_counts_for_nothing() {
    let d = tmpdir("leftover");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    // A crash between making the index and the record: an index with no record behind it.
    let ip = ipam.allocate("ctr", "eth0", None).expect("alloc");
    fs::remove_file(d.join("n").join(ip.to_string())).expect("remove record");
    assert_eq!(ipam.find("ctr", "eth0").expect("find"), None);
    assert!(ipam.list().expect("list").is_empty());
    // A crash between removing the record and its index on release, then the address given
    // to someone else: the old index must not claim the new owner's record.
    let again = ipam
        .allocate("ctr", "eth0", Some(ip))
        .expect("the attachment can allocate again");
    assert_eq!(again, ip);
    fs::remove_file(d.join("n").join(ip.to_string())).expect("remove record");
    let other = ipam
        .allocate("other", "eth0", Some(ip))
        .expect("someone else gets the address");
    assert_eq!(other, ip);
    assert_eq!(
        ipam.find("ctr", "eth0").expect("find"),
        None,
        "the stale index names another inode"
    );
    assert_eq!(ipam.find("other", "eth0").expect("find"), Some(ip));
    assert_eq!(ipam.release("ctr", "eth0").expect("release"), None);
    assert_eq!(
        ipam.find("other", "eth0").expect("find"),
        Some(ip),
        "releasing a leftover frees nothing else"
    );
    let _ = fs::remove_dir_all(&d);
}

#[test]
fn release_and_gc_remove_the_index_too() {
    let d = tmpdir("index");
    let ipam = Ipam::new(&d, "n", net("10.1.0.0/24")).expect("ipam");
    ipam.allocate("a", "eth0", None).expect("a");
    ipam.allocate("b", "eth0", None).expect("b");
    ipam.release("a", "eth0").expect("release");
    ipam.gc(&[]).expect("gc");
    let left: Vec<String> = fs::read_dir(d.join("n"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && n != "last_reserved_ip")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let _ = fs::remove_dir_all(&d);
}
