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
                            warnings.push(format!("ingress {}: spec.tls[{i}]: {e}", ing.key()));
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

/// Why a Secret gives no certificate; each names the Secret (`namespace/name`).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Not a `kubernetes.io/tls` Secret.
    #[error(
        "secret {secret}: type is {type_:?}, want {:?}",
        model::TLS_SECRET_TYPE
    )]
    WrongType {
        /// The Secret, `namespace/name`.
        secret: String,
        /// Its `type` (`Opaque` when absent).
        type_: String,
    },
    /// `data[key]` is absent or not base64.
    #[error("secret {secret}: data[{key}] is missing or not base64")]
    Missing {
        /// The Secret, `namespace/name`.
        secret: String,
        /// `tls.crt` or `tls.key`.
        key: &'static str,
    },
    /// `data[key]` is not PEM of the kind it should hold.
    #[error("secret {secret}: data[{key}]: {source}")]
    Pem {
        /// The Secret, `namespace/name`.
        secret: String,
        /// `tls.crt` or `tls.key`.
        key: &'static str,
        /// What the PEM reader found.
        source: rustls_pki_types::pem::Error,
    },
    /// `data[tls.crt]` holds no certificate.
    #[error("secret {secret}: data[tls.crt]: no PEM certificate")]
    NoCertificate {
        /// The Secret, `namespace/name`.
        secret: String,
    },
    /// `data[tls.key]` is a key rustls cannot sign with.
    #[error("secret {secret}: data[tls.key]: {source}")]
    UnsupportedKey {
        /// The Secret, `namespace/name`.
        secret: String,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// `tls.key` is not the key of the first certificate in `tls.crt`.
    #[error("secret {secret}: tls.key does not belong to tls.crt: {source}")]
    KeyMismatch {
        /// The Secret, `namespace/name`.
        secret: String,
        /// What rustls found.
        source: rustls::Error,
    },
}

/// The certificate chain and key of a `kubernetes.io/tls` Secret.
pub fn certified_key(s: &Secret) -> Result<CertifiedKey, SecretError> {
    let secret = || {
        format!(
            "{}/{}",
            s.metadata.namespace.as_deref().unwrap_or("default"),
            s.metadata.name
        )
    };
    let type_ = s.type_.as_deref().unwrap_or("Opaque");
    if type_ != model::TLS_SECRET_TYPE {
        return Err(SecretError::WrongType {
            secret: secret(),
            type_: type_.to_string(),
        });
    }
    let decoded = |key| {
        s.decoded(key).ok_or_else(|| SecretError::Missing {
            secret: secret(),
            key,
        })
    };
    let crt = decoded("tls.crt")?;
    let key = decoded("tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|source| SecretError::Pem {
            secret: secret(),
            key: "tls.crt",
            source,
        })?;
    if chain.is_empty() {
        return Err(SecretError::NoCertificate { secret: secret() });
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|source| SecretError::Pem {
        secret: secret(),
        key: "tls.key",
        source,
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| {
        SecretError::UnsupportedKey {
            secret: secret(),
            source,
        }
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|source| SecretError::KeyMismatch {
        secret: secret(),
        source,
    })?;
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

/// Why the TLS server configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The crypto provider cannot do the protocol versions asked for (TLS 1.2 and 1.3).
    #[error("tls config: {source}")]
    ProtocolVersions {
        /// What rustls said.
        source: rustls::Error,
    },
}

/// The server config: TLS 1.2 and 1.3 with the ring provider, ALPN h2 then http/1.1.
pub fn server_config(certs: Arc<ArcSwap<CertTable>>) -> Result<rustls::ServerConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| ConfigError::ProtocolVersions { source })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certs)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
