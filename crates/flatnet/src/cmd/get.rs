//! `flatnet get KIND [NAME] [-n NS | -A] [-o wide|json|yaml]`; tables as kubectl prints them,
//! with the columns of `lab::columns` (which the API server serves to kubectl too).

use model::Kind;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    kind: String,
    name: Option<String>,
    #[arg(short = 'n', long = "namespace", default_value = "default")]
    namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long = "all-namespaces")]
    all: bool,
    #[arg(short = 'o', long = "output", value_parser = ["wide", "json", "yaml"])]
    output: Option<String>,
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let kind = super::parse_kind(&args.kind)?;
    let store = lab::client::connect(&lab).await?;
    let ns = (!args.all).then_some(args.namespace.as_str());
    let mut items = lab::api::get(&store, kind, ns, args.name.as_deref()).await?;
    if kind == Kind::Node {
        lab::api::annotate_nodes(&store, &mut items).await?;
    }
    items.sort_by_key(|v| {
        (
            s(v, "/metadata/namespace").to_string(),
            s(v, "/metadata/name").to_string(),
        )
    });
    match args.output.as_deref() {
        Some("json") | Some("yaml") => {
            let v = if args.name.is_some() && items.len() == 1 {
                items.remove(0)
            } else {
                model::list_json(items)
            };
            if args.output.as_deref() == Some("json") {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", model::to_yaml(&v));
            }
        }
        out => {
            if items.is_empty() {
                eprintln!(
                    "No resources found{}.",
                    ns.filter(|_| kind.namespaced())
                        .map(|n| format!(" in {n} namespace"))
                        .unwrap_or_default()
                );
                return Ok(0);
            }
            print_table(
                kind,
                &items,
                args.all && kind.namespaced(),
                out == Some("wide"),
            );
        }
    }
    Ok(0)
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    lab::columns::str_at(v, ptr)
}

fn print_table(kind: Kind, items: &[Value], with_ns: bool, wide: bool) {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<&str> = Vec::new();
    for v in items {
        let (h, mut c) = lab::columns::row(kind, v, wide);
        if with_ns {
            c.insert(0, s(v, "/metadata/namespace").into());
        }
        header = h;
        rows.push(c);
    }
    if with_ns {
        header.insert(0, "NAMESPACE");
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("   ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}
