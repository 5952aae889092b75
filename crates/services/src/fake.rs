//! [`MemNft`]: the proxy's table in memory, the fake the loop and the plan tests run against.

use crate::proxy::{KernelError, ProxyDataplane};

/// The service proxy's table in memory: elements as their `nft` text, the scripts run, the
/// cleanups asked for.
#[derive(Debug, Clone, Default)]
pub struct MemNft {
    /// `(map, key)` -> value, as `render_ops` prints them.
    pub elements: std::collections::BTreeMap<(String, String), String>,
    /// Names of the chains the table holds.
    pub chains: std::collections::BTreeSet<String>,
    /// Chain -> its rules.
    pub rules: std::collections::BTreeMap<String, Vec<String>>,
    /// Every `nft -f` script run, in order.
    pub scripts: Vec<String>,
    /// Element transactions: (number of operations, flushed first).
    pub transactions: Vec<(usize, bool)>,
    /// UDP conntrack cleanups asked for: `frontend` or `frontend via endpoint`.
    pub forgotten_udp: Vec<String>,
    /// Affinity cleanups asked for: (affinity mark, the endpoints forgotten).
    pub forgotten_affinity: Vec<(u32, Vec<String>)>,
    /// LoadBalancer IPs announced on the underlay.
    pub announced: std::collections::BTreeSet<std::net::Ipv4Addr>,
    /// When set, every call fails with this message.
    pub fail: Option<String>,
}

impl ProxyDataplane for MemNft {
    /// Keeps chains and their rules; like the kernel, refuses (and then changes nothing) to
    /// delete a chain that a rule or a map element still jumps to.
    fn nft_script(&mut self, script: &str) -> Result<(), KernelError> {
        let n = self;
        if let Some(f) = &n.fail {
            return Err(KernelError::Refused(f.clone()));
        }
        let mut rules = n.rules.clone();
        for line in script.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["add", "chain", _, _, name, ..] => {
                    rules.entry((*name).to_string()).or_default();
                }
                ["flush", "chain", _, _, name] => {
                    rules.insert((*name).to_string(), Vec::new());
                }
                ["add", "rule", _, _, name, rest @ ..] => {
                    rules
                        .entry((*name).to_string())
                        .or_default()
                        .push(rest.join(" "));
                }
                ["delete", "chain", _, _, name] => {
                    let target = [format!("goto {name}"), format!("jump {name}")];
                    let used_by_rule = rules.iter().any(|(c, rs)| {
                        c != name
                            && rs.iter().any(|r| {
                                target.iter().any(|t| {
                                    r.ends_with(t.as_str()) || r.contains(&format!("{t} "))
                                })
                            })
                    });
                    let used_by_element = n.elements.values().any(|v| target.contains(v));
                    if used_by_rule || used_by_element {
                        return Err(KernelError::Refused(format!(
                            "delete chain {name}: Device or resource busy"
                        )));
                    }
                    rules.remove(*name);
                }
                _ => {}
            }
        }
        n.chains = rules.keys().cloned().collect();
        n.rules = rules;
        n.scripts.push(script.to_string());
        Ok(())
    }

    fn nft_elements(
        &mut self,
        ops: &[crate::plan::ElemOp],
        flush: bool,
    ) -> Result<(), KernelError> {
        use crate::plan::{ElemOp, STATIC_MAPS, render_ops};
        let n = self;
        if let Some(f) = &n.fail {
            return Err(KernelError::Refused(f.clone()));
        }
        let mut next = n.elements.clone();
        if flush {
            next.retain(|(map, _), _| !STATIC_MAPS.contains(&map.as_str()));
        }
        for op in ops {
            // "add element inet flatnet MAP { KEY : VALUE }"
            let text = render_ops(std::slice::from_ref(op));
            let inner = text
                .split_once('{')
                .and_then(|(_, r)| r.rsplit_once('}'))
                .map(|(i, _)| i.trim().to_string())
                .unwrap_or_default();
            let (key, value) = match inner.split_once(" : ") {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (inner, String::new()),
            };
            match op {
                ElemOp::Add { map, .. } => {
                    if next.insert((map.to_string(), key.clone()), value).is_some() {
                        return Err(KernelError::Refused(format!(
                            "map {map}: add element {key}: File exists"
                        )));
                    }
                }
                ElemOp::Delete { map, .. } => {
                    if next.remove(&(map.to_string(), key.clone())).is_none() {
                        return Err(KernelError::Refused(format!(
                            "map {map}: delete element {key}: No such file or directory"
                        )));
                    }
                }
            }
        }
        n.elements = next;
        n.transactions.push((ops.len(), flush));
        Ok(())
    }

    fn nft_chains(&mut self) -> Result<Vec<String>, KernelError> {
        Ok(self.chains.iter().cloned().collect())
    }

    fn announce(
        &mut self,
        _dev: &str,
        pool: ipnet::Ipv4Net,
        ips: &std::collections::BTreeSet<std::net::Ipv4Addr>,
    ) -> Result<(), KernelError> {
        if let Some(outside) = ips.iter().find(|ip| !pool.contains(*ip)) {
            return Err(KernelError::OutsidePool { ip: *outside, pool });
        }
        self.announced = ips.clone();
        Ok(())
    }

    fn forget_udp(
        &mut self,
        fe: &crate::plan::Frontend,
        endpoint: Option<std::net::Ipv4Addr>,
    ) -> Result<(), KernelError> {
        self.forgotten_udp.push(match endpoint {
            Some(ep) => format!("{fe} via {ep}"),
            None => fe.to_string(),
        });
        Ok(())
    }

    fn forget_affinity(
        &mut self,
        mark: u32,
        gone: &[crate::plan::Backend],
    ) -> Result<(), KernelError> {
        self.forgotten_affinity
            .push((mark, gone.iter().map(ToString::to_string).collect()));
        Ok(())
    }
}
