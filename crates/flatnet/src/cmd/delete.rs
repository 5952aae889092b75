//! `flatnet delete -f FILE` | `flatnet delete KIND NAME [-n NS]`, with kubectl's
//! `--grace-period`, `--force`, `--now`, `--wait` and `--timeout`.

use std::time::{Duration, Instant};

use lab::api::{ApiError, DeleteOptions};
use model::Kind;

#[derive(clap::Args)]
pub struct Args {
    /// Delete every object named in this manifest file (or `-`; repeat `-f` for more files);
    /// only `apiVersion`, `kind`, `metadata.name` and `metadata.namespace` of each document
    /// (or `List` item) are read.
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
    files: Vec<String>,
    /// Kind of the object (pod, service, deployment, namespace, ...).
    kind: Option<String>,
    /// Name of the object.
    name: Option<String>,
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    /// Seconds a pod gets to stop after SIGTERM (-1: its terminationGracePeriodSeconds).
    /// 0 is taken as 1 unless --force is given, as kubectl does.
    #[arg(long = "grace-period", default_value_t = -1, allow_negative_numbers = true)]
    grace_period: i64,
    /// Remove pods from the API at once, without waiting for their kubelet to stop them
    /// (grace period 0 unless --grace-period says otherwise).
    #[arg(long)]
    force: bool,
    /// Grace period 1: the pod is told to stop and killed a second later.
    #[arg(long, conflicts_with = "grace_period")]
    now: bool,
    /// Wait until every deleted pod is gone, as kubectl does (--wait=false returns at once).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wait: bool,
    /// How long --wait waits, e.g. 60s; 0: each pod's grace period plus 30 s.
    #[arg(long, default_value = "0s", value_parser = super::wait::parse_duration)]
    timeout: Duration,
}

/// kubectl's mapping of `--grace-period`, `--now` and `--force` to the API's grace period.
fn grace_period(args: &Args) -> Option<i64> {
    let mut g = if args.now { 1 } else { args.grace_period };
    if g == 0 && !args.force {
        // kubectl: "--grace-period=0 is converted to 1 unless --force is given".
        g = 1;
    }
    if args.force && g < 0 {
        g = 0;
    }
    (g >= 0).then_some(g)
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let targets: Vec<(Kind, Option<String>, String)> =
        match (&args.files[..], &args.kind, &args.name) {
            // Only the identity of each document is read, as kubectl does: a stub or an
            // outdated spec still names what to delete. Every file is read before anything goes.
            ([_, ..], _, _) => {
                let mut refs = Vec::new();
                for f in &args.files {
                    refs.extend(model::parse_object_refs(&super::read_input(f)?, f)?);
                }
                refs.into_iter()
                    .map(|r| {
                        let ns = r
                            .kind
                            .namespaced()
                            .then(|| r.namespace.unwrap_or_else(|| args.namespace.clone()));
                        (r.kind, ns, r.name)
                    })
                    .collect()
            }
            ([], Some(k), Some(n)) => vec![(
                super::parse_kind(k)?,
                Some(args.namespace.clone()),
                n.clone(),
            )],
            _ => anyhow::bail!("give -f FILE, or KIND and NAME"),
        };
    let opts = DeleteOptions {
        grace_period: grace_period(&args),
    };
    if args.force {
        eprintln!(
            "Warning: Immediate deletion does not wait for confirmation that the running resource has been terminated. The resource may continue to run on the cluster indefinitely."
        );
    }
    let store = lab::client::connect(&lab).await?;
    let mut failed = false;
    let mut pods = Vec::new();
    for (kind, ns, name) in targets {
        // The pod's uid, so that waiting ends when it is gone even if a new pod of the same
        // name (a replacement) appears meanwhile.
        let uid = if kind == Kind::Pod && args.wait {
            lab::api::get(&store, kind, ns.as_deref(), Some(&name))
                .await
                .ok()
                .and_then(|v| v.first().cloned())
                .map(|v| (v["metadata"]["uid"].clone(), grace_of(&v)))
        } else {
            None
        };
        match lab::api::delete(&store, kind, ns.as_deref(), &name, opts).await {
            Ok(()) => {
                println!("{}/{name} deleted", kind.as_str().to_lowercase());
                if let Some((uid, grace)) = uid {
                    pods.push((ns, name, uid, opts.grace_period.unwrap_or(grace)));
                }
            }
            Err(e @ ApiError::NotFound { .. }) => eprintln!("{e}"),
            Err(e) => {
                eprintln!("error: {}/{name}: {e}", kind.as_str().to_lowercase());
                failed = true;
            }
        }
    }
    for (ns, name, uid, grace) in pods {
        let timeout = if args.timeout.is_zero() {
            Duration::from_secs(grace.max(0).unsigned_abs() + 30)
        } else {
            args.timeout
        };
        if !wait_gone(&store, ns.as_deref(), &name, &uid, timeout).await {
            eprintln!(
                "error: timed out waiting for pod/{name} to be deleted ({}s)",
                timeout.as_secs()
            );
            failed = true;
        }
    }
    Ok(i32::from(failed))
}

/// The grace period a pod's delete gets by default.
fn grace_of(pod: &serde_json::Value) -> i64 {
    pod.pointer("/metadata/deletionGracePeriodSeconds")
        .or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds"))
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(model::PodSpec::DEFAULT_GRACE_PERIOD_SECONDS)
}

/// Polls until the pod with `uid` no longer exists; false on timeout.
async fn wait_gone(
    store: &store::EtcdStore,
    ns: Option<&str>,
    name: &str,
    uid: &serde_json::Value,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match lab::api::get(store, Kind::Pod, ns, Some(name)).await {
            Err(ApiError::NotFound { .. }) => return true,
            Ok(v) if v.first().is_none_or(|p| &p["metadata"]["uid"] != uid) => return true,
            _ => {}
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn grace(argv: &[&str]) -> Option<i64> {
        let mut full = vec!["delete", "pod", "p"];
        full.extend_from_slice(argv);
        grace_period(&Cli::parse_from(full).args)
    }

    #[test]
    fn grace_period_flags_map_as_kubectl_maps_them() {
        assert_eq!(grace(&[]), None, "the pod's own grace period");
        assert_eq!(grace(&["--grace-period", "7"]), Some(7));
        assert_eq!(
            grace(&["--grace-period", "0"]),
            Some(1),
            "0 without --force is 1"
        );
        assert_eq!(grace(&["--grace-period=0", "--force"]), Some(0));
        assert_eq!(grace(&["--force"]), Some(0));
        assert_eq!(grace(&["--force", "--grace-period", "5"]), Some(5));
        assert_eq!(grace(&["--now"]), Some(1));
        assert_eq!(grace(&["--grace-period", "-1"]), None);
    }
}
