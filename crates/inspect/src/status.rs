//! `flatnet status`: the store revision, the subnet leases, every agent's typed status and the
//! problems [`converge::report`] finds, as a table or as JSON.

use serde::Serialize;
use store::contract::{self, AgentStatus, Lease, keys};
use store::{Store, StoreError};

use crate::converge;

/// An agent as `status` shows it: its status, or why the stored value does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Agent {
    /// The status as the agent wrote it.
    Reported(Box<AgentStatus>),
    /// A value under `agents/<node>` that is not an agent status.
    Unreadable {
        /// The `<node>` of the key.
        node: String,
        /// Why it does not decode.
        error: String,
    },
}

/// What `flatnet status` shows (the JSON keys are the CLI contract, design.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The store revision read at.
    pub revision: i64,
    /// Every decodable subnet lease.
    pub leases: Vec<Lease>,
    /// Every agent's status, by node name.
    pub agents: Vec<Agent>,
    /// Nothing is pending.
    pub converged: bool,
    /// What is pending, then the notes (problems waiting does not fix).
    pub problems: Vec<String>,
}

impl Status {
    /// Reads everything `status` shows.
    pub async fn read(store: &impl Store) -> Result<Status, StoreError> {
        let revision = store.revision().await?;
        let (subnets, _) = store.list(keys::SUBNETS).await?;
        let (statuses, _) = contract::read_statuses(store).await?;
        let report = converge::report(store).await?;
        let converged = report.pending.is_empty();
        Ok(Status {
            revision,
            leases: contract::decode_leases(&subnets)
                .into_iter()
                .map(|(_, l)| l)
                .collect(),
            agents: statuses
                .into_iter()
                .map(|(node, s)| match s {
                    Ok(s) => Agent::Reported(Box::new(s)),
                    Err(error) => Agent::Unreadable { node, error },
                })
                .collect(),
            converged,
            problems: [report.pending, report.notes].concat(),
        })
    }

    /// The table `flatnet status` prints.
    pub fn to_table(&self) -> String {
        let mut s = format!("store revision {}\nleases:\n", self.revision);
        for l in &self.leases {
            s.push_str(&format!(
                "  {:<18} {:<8} {}\n",
                l.cidr.to_string(),
                l.attrs.node,
                l.attrs.underlay_ip
            ));
        }
        s.push_str("agents:\n");
        for a in &self.agents {
            match a {
                Agent::Reported(a) => {
                    let (r, p) = (&a.routes, &a.proxy);
                    s.push_str(&format!(
                        "  {:<8} {} applied revision {} backend {} mtu {}; proxy: revision {}, {} services, {} frontends, {} endpoint slots{}\n",
                        a.node,
                        if r.healthy { "healthy" } else { "UNHEALTHY" },
                        r.applied_revision,
                        r.backend,
                        r.mtu,
                        p.applied_revision,
                        p.services,
                        p.frontends,
                        p.endpoints,
                        if p.last_error.is_some() { " (FAILING)" } else { "" }
                    ));
                }
                Agent::Unreadable { node, error } => {
                    s.push_str(&format!("  {node:<8} UNREADABLE: {error}\n"));
                }
            }
        }
        if self.problems.is_empty() {
            s.push_str("converged: no problems found\n");
        } else {
            s.push_str(if self.converged {
                "converged; problems:\n"
            } else {
                "problems:\n"
            });
            for p in &self.problems {
                s.push_str(&format!("  {p}\n"));
            }
        }
        s
    }
}
