//! `flatnet exec [-n NS] POD -- CMD [ARGS...]`: the command runs on the host filesystem inside
//! the pod's network namespace; its stdout, stderr and exit code are passed through.

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    pod: String,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let (ns, pod) = (args.namespace.clone(), args.pod.clone());
    // The pod's namespace name is derived from ns/name, so exec works without the store
    // (also while etcd is down: troubleshooting must not depend on it).
    let netns = lab::shell::netns_path(&lab.pod_netns(&ns, &pod));
    if !std::path::Path::new(&netns).exists() {
        super::block_on(async {
            let store = lab::client::connect(&lab).await?;
            lab::api::get(&store, model::Kind::Pod, Some(&ns), Some(&pod)).await?;
            Ok(0)
        })?;
        anyhow::bail!("pod {ns}/{pod} has no network namespace yet (is it still Pending?)");
    }
    // The resolv.conf the kubelet gave the pod's containers, when it gave one.
    let resolv = lab.pod_dir(&ns, &pod).join("resolv.conf");
    super::exec_in_netns(
        &netns,
        &args.command,
        resolv.exists().then_some(resolv.as_path()),
    )
}
