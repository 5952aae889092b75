//! `flatnet delete -f FILE` | `flatnet delete KIND NAME [-n NS]`

use lab::api::ApiError;

#[derive(clap::Args)]
pub struct Args {
    /// Delete every object named in this manifest file (or `-`).
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
    file: Option<String>,
    /// Kind of the object (pod, service, deployment, namespace, ...).
    kind: Option<String>,
    /// Name of the object.
    name: Option<String>,
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let targets: Vec<(model::Kind, Option<String>, String)> =
        match (&args.file, &args.kind, &args.name) {
            (Some(f), _, _) => model::parse_manifests(&super::read_input(f)?, f)?
                .into_iter()
                .map(|o| {
                    (
                        o.kind,
                        o.namespace().map(str::to_string),
                        o.name().to_string(),
                    )
                })
                .collect(),
            (None, Some(k), Some(n)) => vec![(
                super::parse_kind(k)?,
                Some(args.namespace.clone()),
                n.clone(),
            )],
            _ => anyhow::bail!("give -f FILE, or KIND and NAME"),
        };
    let store = lab::client::connect(&lab).await?;
    let mut failed = false;
    for (kind, ns, name) in targets {
        match lab::api::delete(&store, kind, ns.as_deref(), &name).await {
            Ok(()) => println!("{}/{name} deleted", kind.as_str().to_lowercase()),
            Err(e @ ApiError::NotFound { .. }) => eprintln!("{e}"),
            Err(e) => {
                eprintln!("error: {}/{name}: {e}", kind.as_str().to_lowercase());
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}
