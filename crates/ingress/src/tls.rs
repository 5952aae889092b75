//! TLS: certificates from `kubernetes.io/tls` Secrets, chosen per connection by SNI.
//!
//! Each `spec.tls[]` entry of a served Ingress maps its `hosts` (exact or `*.` wildcard, one
//! label) to the Secret `secretName` in the Ingress's namespace. An entry without hosts makes
//! its certificate the default, used when the SNI name matches no entry (or there is none);
//! without a default such a handshake fails with `unrecognized_name`. When two Ingresses name
//! the same host, the oldest wins. A Secret that is missing, of another type, or whose
//! `tls.crt`/`tls.key` do not parse or do not belong together is left out with a warning.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use model::{Ingress, Secret};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// SNI name -> certificate.
#[derive(Default)]
pub struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut exact: Vec<&String> = self.exact.keys().collect();
        exact.sort();
        let mut wildcard: Vec<&String> = self.wildcard.keys().collect();
        wildcard.sort();
        f.debug_struct("CertTable")
            .field("exact", &exact)
            .field("wildcard", &wildcard)
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl CertTable {
    /// The certificate for an SNI name (any case); None: refuse the handshake.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        if let Some((label, rest)) = name.split_once('.')
            && !label.is_empty()
            && let Some(c) = self.wildcard.get(rest)
        {
            return Some(c.clone());
        }
        self.default.clone()
    }

    /// Whether no certificate is loaded.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.default.is_none()
    }

    /// Number of SNI names (exact and wildcard) with a certificate.
    pub fn names(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// Builds the table from the served Ingresses (oldest first) and the Secrets.
pub fn compile_certs(ingresses: &[&Ingress], secrets: &[Secret]) -> (CertTable, Vec<String>) {
    let by_name: HashMap<(&str, &str), &Secret> = secrets
        .iter()
        .map(|s| {
            (
                (
                    s.metadata.namespace.as_deref().unwrap_or("default"),
                    s.metadata.name.as_str(),
                ),
                s,
            )
        })
        .collect();
    let mut table = CertTable::default();
    let mut warnings = Vec::new();
    let mut loaded: HashMap<(String, String), Option<Arc<CertifiedKey>>> = HashMap::new();
    for ing in ingresses {
        let ns = ing.namespace();
        for (i, t) in ing.spec.tls.iter().enumerate() {
            let Some(secret_name) = t.secret_name.as_deref() else {
                continue;
            };
            let key = (ns.to_string(), secret_name.to_string());
            let cert = loaded
                .entry(key)
                .or_insert_with(|| match by_name.get(&(ns, secret_name)) {
                    None => {
                        warnings.push(format!(
                            "ingress {}: spec.tls[{i}]: secret {ns}/{secret_name} not found",
                            ing.key()
                        ));
                        None
                    }
                    Some(s) => match certified_key(s) {
                        Ok(c) => Some(Arc::new(c)),
                        Err(e) => {
                            warnings.push(format!(
                                "ingress {}: spec.tls[{i}]: secret {ns}/{secret_name}: {e}",
                                ing.key()
                            ));
                            None
                        }
                    },
                })
                .clone();
            let Some(cert) = cert else { continue };
            if t.hosts.is_empty() {
                table.default.get_or_insert(cert);
                continue;
            }
            for h in &t.hosts {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix("*.") {
                    Some(rest) => table
                        .wildcard
                        .entry(rest.to_string())
                        .or_insert_with(|| cert.clone()),
                    None => table.exact.entry(h).or_insert_with(|| cert.clone()),
                };
            }
        }
    }
    (table, warnings)
}

/// The certificate chain and key of a `kubernetes.io/tls` Secret.
pub fn certified_key(s: &Secret) -> Result<CertifiedKey, String> {
    let type_ = s.type_.as_deref().unwrap_or("Opaque");
    if type_ != model::TLS_SECRET_TYPE {
        return Err(format!(
            "type is {type_:?}, want {:?}",
            model::TLS_SECRET_TYPE
        ));
    }
    let crt = s
        .decoded("tls.crt")
        .ok_or("data[tls.crt] is missing or not base64")?;
    let key = s
        .decoded("tls.key")
        .ok_or("data[tls.key] is missing or not base64")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("data[tls.crt]: {e}"))?;
    if chain.is_empty() {
        return Err("data[tls.crt]: no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("data[tls.key]: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("data[tls.key]: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| format!("tls.key does not belong to tls.crt: {e}"))?;
    Ok(ck)
}

/// The rustls hook: looks the SNI name up in the current table (swapped on store changes).
#[derive(Debug)]
pub struct SniResolver(pub Arc<ArcSwap<CertTable>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let c = self.0.load().lookup(hello.server_name());
        if c.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no certificate for this name");
        }
        c
    }
}

/// The server config: TLS 1.2 and 1.3 with the ring provider, ALPN h2 then http/1.1.
pub fn server_config(certs: Arc<ArcSwap<CertTable>>) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls config: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certs)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
