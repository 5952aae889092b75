//! `flatnet policy explain SRC DST [--port P] [--protocol PROTO] [-o text|json]`: whether the
//! NetworkPolicies in the store allow a connection, which policies select each side, and the
//! rule that allows it (or that none does), from the same compiled policy the agents enforce.

use std::net::Ipv4Addr;

use clap::Subcommand;
use model::{Kind, Object};
use netpol::{
    Cluster, CompiledPolicy, DirectionVerdict, Endpoint, Flow, PodRef, Protocol, Verdict,
};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: PolicyCmd,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Explain whether SRC may connect to DST: the policies selecting each side and the rule
    /// that allows, or that nothing allows.
    Explain(ExplainArgs),
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The client: `namespace/pod` or an IPv4 address.
    src: String,
    /// The server: `namespace/pod` or an IPv4 address.
    dst: String,
    /// Destination port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// TCP, UDP or SCTP (any case).
    #[arg(long, default_value = "TCP", value_parser = super::connectivity::parse_protocol)]
    protocol: Protocol,
    /// Output format.
    #[arg(short = 'o', long = "output", default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

pub async fn run(args: Args, lab: lab::Lab) -> anyhow::Result<i32> {
    match args.command {
        PolicyCmd::Explain(a) => explain(a, lab).await,
    }
}

/// `namespace/pod` or an IPv4 address.
fn parse_endpoint(arg: &str, s: &str) -> anyhow::Result<Endpoint> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(Endpoint::Ip(ip));
    }
    s.parse::<PodRef>().map(Endpoint::Pod).map_err(|_| {
        anyhow::anyhow!("{arg}: invalid value {s:?}: expected namespace/pod or an IPv4 address")
    })
}

async fn explain(a: ExplainArgs, lab: lab::Lab) -> anyhow::Result<i32> {
    let flow = Flow {
        src: parse_endpoint("SRC", &a.src)?,
        dst: parse_endpoint("DST", &a.dst)?,
        port: a.port,
        protocol: a.protocol,
    };
    let store = lab::client::connect(&lab).await?;
    let mut values = Vec::new();
    for kind in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
        values.extend(lab::api::get(&store, kind, None, None).await?);
    }
    let objects = inspect::connectivity::policy_objects(values)?;
    let cp = Cluster::from_objects(&objects)?.compile();
    let verdict = cp.verdict(&flow)?;
    let report = Report::new(&cp, &objects, &flow, verdict);
    match a.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&report.to_json())?),
        _ => print!("{}", report.to_text()),
    }
    Ok(0)
}

/// A verdict with what a reader needs around it.
struct Report {
    verdict: Verdict,
    /// Policies selecting the source for egress (`None`: not a policy subject).
    egress_policies: Option<Vec<String>>,
    /// Policies selecting the destination for ingress.
    ingress_policies: Option<Vec<String>>,
    /// The allowing rule of each direction, as written in the policy.
    egress_rule: Option<Value>,
    ingress_rule: Option<Value>,
}

impl Report {
    fn new(cp: &CompiledPolicy, objects: &[Object], flow: &Flow, verdict: Verdict) -> Report {
        let subject = |e: &Endpoint| match e {
            Endpoint::Pod(r) => cp.pod_id(&r.namespace, &r.name),
            Endpoint::Ip(ip) => cp.pod_by_ip(*ip),
        };
        let names = |ids: &[usize]| ids.iter().map(|&i| cp.policies()[i].clone()).collect();
        let egress_policies = subject(&flow.src).map(|id| names(&cp.egress(id).policies));
        let ingress_policies = subject(&flow.dst).map(|id| names(&cp.ingress(id).policies));
        let rule_of = |v: &DirectionVerdict, field: &str| match v {
            DirectionVerdict::Allowed { policy, rule, .. } => objects
                .iter()
                .find(|o| o.kind == Kind::NetworkPolicy && o.display_name() == *policy)
                .and_then(|o| o.value["spec"][field].get(*rule).cloned()),
            _ => None,
        };
        Report {
            egress_rule: rule_of(&verdict.egress, "egress"),
            ingress_rule: rule_of(&verdict.ingress, "ingress"),
            verdict,
            egress_policies,
            ingress_policies,
        }
    }

    fn to_text(&self) -> String {
        let mut s = self.verdict.explain();
        for (rule, dir) in [
            (&self.egress_rule, "egress"),
            (&self.ingress_rule, "ingress"),
        ] {
            if let Some(r) = rule {
                s.push_str(&format!("  the allowing {dir} rule: {r}\n"));
            }
        }
        for (who, dir, list) in [
            (&self.verdict.src, "egress", &self.egress_policies),
            (&self.verdict.dst, "ingress", &self.ingress_policies),
        ] {
            let line = match list {
                None => format!("  {who} is not a pod NetworkPolicy selects\n"),
                Some(l) if l.is_empty() => {
                    format!("  NetworkPolicies selecting {who} for {dir}: none\n")
                }
                Some(l) => format!(
                    "  NetworkPolicies selecting {who} for {dir}: {}\n",
                    l.join(", ")
                ),
            };
            s.push_str(&line);
        }
        s
    }

    fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.verdict).unwrap_or(Value::Null);
        for (dir, list, rule) in [
            ("egress", &self.egress_policies, &self.egress_rule),
            ("ingress", &self.ingress_policies, &self.ingress_rule),
        ] {
            if let Some(d) = v.get_mut(dir).and_then(Value::as_object_mut) {
                d.insert("selectedBy".into(), json!(list));
                if let Some(r) = rule {
                    d.insert("ruleSpec".into(), r.clone());
                }
            }
        }
        if let Some(m) = v.as_object_mut() {
            m.insert("explanation".into(), json!(self.to_text()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects() -> Vec<Object> {
        let docs = "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
";
        // Read back as the store holds them (with the status the kubelet writes).
        let mut objects = model::parse_manifests(docs, "test").expect("valid manifests");
        for (o, ip) in objects[1..3].iter_mut().zip(["10.244.1.2", "10.244.1.3"]) {
            o.value["status"] = json!({"phase": "Running", "podIP": ip});
        }
        objects
    }

    fn report(src: &str, dst: &str) -> Report {
        let objects = objects();
        let cp = Cluster::from_objects(&objects).expect("compiles").compile();
        let flow = Flow {
            src: parse_endpoint("SRC", src).expect("src"),
            dst: parse_endpoint("DST", dst).expect("dst"),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let verdict = cp.verdict(&flow).expect("known pods");
        Report::new(&cp, &objects, &flow, verdict)
    }

    #[test]
    fn allowed_flow_names_the_policy_and_its_rule() {
        let r = report("x/b", "10.244.1.2");
        assert!(r.verdict.allowed);
        let t = r.to_text();
        assert!(
            t.contains("allowed by NetworkPolicy x/allow-b, ingress rule 0"),
            "{t}"
        );
        assert!(t.contains("the allowing ingress rule: {\"from\""), "{t}");
        assert!(t.contains("selecting x/b for egress: none"), "{t}");
        assert!(t.contains("for ingress: x/allow-b"), "{t}");
        let j = r.to_json();
        assert_eq!(j["allowed"], true);
        assert_eq!(j["ingress"]["policy"], "x/allow-b");
        assert_eq!(j["ingress"]["selectedBy"], json!(["x/allow-b"]));
        assert_eq!(
            j["ingress"]["ruleSpec"]["from"][0]["podSelector"]["matchLabels"]["pod"],
            "b"
        );
        assert_eq!(j["egress"]["result"], "notIsolated");
    }

    #[test]
    fn denied_flow_says_nothing_allows() {
        let r = report("x/a", "x/a");
        assert!(r.verdict.allowed, "loopback is always allowed");
        let r = report("10.9.9.9", "x/a");
        assert!(!r.verdict.allowed);
        let t = r.to_text();
        assert!(
            t.contains("denied: isolated by NetworkPolicy x/allow-b"),
            "{t}"
        );
        assert!(t.contains("10.9.9.9 is not a pod"), "{t}");
        assert_eq!(r.to_json()["egress"]["selectedBy"], Value::Null);
    }

    #[test]
    fn endpoints_are_pods_or_addresses() {
        assert_eq!(
            parse_endpoint("SRC", "10.0.0.1").expect("ip"),
            Endpoint::Ip(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(
            parse_endpoint("SRC", "x/a").expect("pod"),
            Endpoint::Pod(PodRef::new("x", "a"))
        );
        let e = parse_endpoint("DST", "justaname").expect_err("bad");
        assert!(
            e.to_string().contains("DST: invalid value \"justaname\""),
            "{e}"
        );
    }
}
