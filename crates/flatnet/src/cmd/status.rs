//! `flatnet status`: nodes, leases, agents, the converged revision, and problems in plain words.

use serde_json::Value;
use store::Store;

#[derive(clap::Args)]
pub struct Args {
    #[arg(short = 'o', long = "output", value_parser = ["json"])]
    output: Option<String>,
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    let store = lab::client::connect(&lab).await?;
    let revision = store.revision().await?;
    let (subnets, _) = store.list(store::keys::SUBNETS).await?;
    let (agents, _) = store.list(store::keys::AGENTS).await?;
    let report = lab::converge::report(&store).await?;
    let converged = report.pending.is_empty();
    let problems = [report.pending, report.notes].concat();
    let leases: Vec<Value> = subnets
        .iter()
        .filter_map(|kv| {
            let mut v: Value = kv.decode().ok()?;
            v["cidr"] = Value::from(store::keys::subnet_cidr(&kv.key)?);
            Some(v)
        })
        .collect();
    let agents: Vec<Value> = agents.iter().filter_map(|kv| kv.decode().ok()).collect();
    if args.output.as_deref() == Some("json") {
        let v = serde_json::json!({"revision": revision, "leases": leases, "agents": agents, "converged": converged, "problems": problems});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("store revision {revision}");
    println!("leases:");
    for l in &leases {
        println!(
            "  {:<18} {:<8} {}",
            l["cidr"].as_str().unwrap_or("?"),
            l["node"].as_str().unwrap_or("?"),
            l["underlayIP"].as_str().unwrap_or("?")
        );
    }
    println!("agents:");
    for a in &agents {
        println!(
            "  {:<8} {} applied revision {} backend {} mtu {}; proxy: revision {}, {} services, {} frontends, {} endpoint slots{}",
            a["node"].as_str().unwrap_or("?"),
            if a["healthy"] == true {
                "healthy"
            } else {
                "UNHEALTHY"
            },
            a["appliedRevision"],
            a["backend"].as_str().unwrap_or("?"),
            a["mtu"],
            a["proxy"]["appliedRevision"],
            a["proxy"]["services"],
            a["proxy"]["frontends"],
            a["proxy"]["endpoints"],
            if a["proxy"]["lastError"].is_string() {
                " (FAILING)"
            } else {
                ""
            }
        );
    }
    if problems.is_empty() {
        println!("converged: no problems found");
    } else {
        println!(
            "{}",
            if converged {
                "converged; problems:"
            } else {
                "problems:"
            }
        );
        for p in &problems {
            println!("  {p}");
        }
    }
    Ok(0)
}
