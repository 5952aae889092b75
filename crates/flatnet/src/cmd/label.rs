//! `flatnet label KIND NAME [-n NS] key=value ... key-` (like `kubectl label --overwrite`)

#[derive(clap::Args)]
pub struct Args {
    kind: String,
    name: String,
    /// `key=value` sets a label, `key-` removes it.
    #[arg(required = true)]
    labels: Vec<String>,
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
}

/// Parses `key=value` / `key-` arguments.
pub fn parse_changes(items: &[String]) -> anyhow::Result<Vec<(String, Option<String>)>> {
    items
        .iter()
        .map(|s| {
            if let Some((k, v)) = s.split_once('=') {
                model::names::label_key(k)
                    .and_then(|()| model::names::label_value(v))
                    .map_err(|e| anyhow::anyhow!("label {s:?}: {e}"))?;
                Ok((k.to_string(), Some(v.to_string())))
            } else if let Some(k) = s.strip_suffix('-') {
                Ok((k.to_string(), None))
            } else {
                anyhow::bail!("label {s:?}: use key=value to set or key- to remove")
            }
        })
        .collect()
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let kind = super::parse_kind(&args.kind)?;
    let changes = parse_changes(&args.labels)?;
    let store = lab::client::connect(&lab).await?;
    lab::api::label(&store, kind, Some(&args.namespace), &args.name, &changes).await?;
    println!("{}/{} labeled", kind.as_str().to_lowercase(), args.name);
    Ok(0)
}
