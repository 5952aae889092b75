//! One module per subcommand: its clap `Args` and its `run`.

pub mod agent;
pub mod apply;
pub mod connectivity;
pub mod delete;
pub mod dns;
pub mod exec;
pub mod get;
pub mod ingress;
pub mod lab;
pub mod label;
pub mod policy;
pub mod status;
pub mod trace;
pub mod wait;

/// Runs a subcommand's async body on a runtime made for it.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<i32>>>(f: F) -> anyhow::Result<i32> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

/// Reads a manifest file, or stdin for `-`.
pub fn read_input(path: &str) -> anyhow::Result<String> {
    use std::io::Read;
    if path == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))
}

/// Parses a kind as kubectl spells it, or explains which kinds exist.
pub fn parse_kind(s: &str) -> anyhow::Result<model::Kind> {
    model::Kind::parse(s).ok_or_else(|| {
        anyhow::anyhow!("unknown kind {s:?}: use one of namespace, pod, service, networkpolicy, ingress, secret, deployment, node, endpointslice")
    })
}

/// Replaces the process with `argv` run inside the namespace file `netns` (with a `/sys` of
/// that namespace, as `ip netns exec` gives); returns only on failure. stdout, stderr and the
/// exit code are the command's own.
/// With `resolv_conf`, that file is also the command's `/etc/resolv.conf` (a pod's, as its
/// containers see it).
pub fn exec_in_netns(
    netns: &str,
    argv: &[String],
    resolv_conf: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let Some((prog, args)) = argv.split_first() else {
        anyhow::bail!("no command given after --")
    };
    let ns = datapath::NetNs::open(netns)?;
    ns.enter()?;
    datapath::remount_sys()?;
    if let Some(file) = resolv_conf
        && std::path::Path::new(::lab::shell::RESOLV_CONF).exists()
    {
        let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())?;
        ::lab::shell::bind_resolv_conf(&c).map_err(|e| {
            anyhow::anyhow!(
                "bind {} on {}: {e}",
                file.display(),
                ::lab::shell::RESOLV_CONF
            )
        })?;
    }
    let err = std::process::Command::new(prog).args(args).exec();
    eprintln!("error: cannot run {prog}: {err}");
    Ok(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}
