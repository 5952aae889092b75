//! The request config on stdin ([SPEC] §1, §3 "Deriving request configuration") and the
//! VERSION answer.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde_json::{Value, json};

use crate::env::is_valid_name;
use crate::json::{FieldError, Fields, show};
use crate::{CniError, CniResult, Command, Dns, Env, SUPPORTED_VERSIONS, code, version};

/// Where flatnet keeps its state when the config has no `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flatnet";

/// The version a config without `cniVersion` has, per the spec.
const IMPLIED_VERSION: &str = "0.1.0";

/// Longest prefix a node's pod CIDR may have.
const MAX_SUBNET_PREFIX: u8 = 30;

/// Accepted `mtu` values: IPv4's minimum datagram size up to the largest IP packet.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65535;

/// The request config of one call, validated.
///
/// For VERSION only `cni_version` (and `raw`) mean anything; the other fields hold defaults
/// (`name` and `plugin_type` empty, `subnet` `0.0.0.0/0`).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`: the version the runtime speaks; results are written in its shape.
    pub cni_version: String,
    /// `name`: the network's name, unique on the host; also the IPAM directory under `data_dir`.
    pub name: String,
    /// `type`: the plugin's binary name (`flatnet`).
    pub plugin_type: String,
    /// The node's pod CIDR: IPv4, no host bits, prefix at most /30.
    pub subnet: Ipv4Net,
    /// Absolute; [`DEFAULT_DATA_DIR`] when not given.
    pub data_dir: PathBuf,
    /// In 576..=65535.
    pub mtu: Option<u32>,
    /// Parsed from any supported version's shape.
    pub prev_result: Option<CniResult>,
    /// GC only: `cni.dev/valid-attachments`, else the legacy `cni.dev/attachments`. `None`
    /// means the runtime sent neither: that is not "no attachment is valid".
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The top-level `dns`, to copy into the ADD result.
    pub dns: Option<Dns>,
    /// ADD only: CNI_ARGS `IP=`, else `args.cni.ips[0]`, else `runtimeConfig.ips[0]`
    /// (each an IP or IP/prefix); always inside `subnet`.
    pub requested_ip: Option<Ipv4Addr>,
    /// The whole config as received, unknown keys included.
    pub raw: Value,
    /// Problems DEL chose to overlook so teardown can go on (an undecodable `prevResult`,
    /// unknown CNI_ARGS keys), for the caller to log.
    pub warnings: Vec<String>,
}

/// One entry of the GC list of attachments still in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The container ID of the attachment.
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
}

/// `{"cniVersion": input (or "1.1.0" when empty), "supportedVersions": [...]}`.
pub fn version_output(input_version: &str) -> Value {
    let v = if input_version.is_empty() {
        SUPPORTED_VERSIONS.last().copied().unwrap_or("1.1.0")
    } else {
        input_version
    };
    json!({"cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS})
}

/// The `cniVersion` string of `stdin` if it has one, whatever else is wrong with it: for the
/// `cniVersion` of an error reply when [`parse_conf`] fails.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_owned)
}

fn invalid_config(e: FieldError) -> CniError {
    e.into_cni(code::INVALID_CONFIG)
}

fn decode(stdin: &[u8]) -> Result<Value, CniError> {
    serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(code::DECODE, format!("error decoding network config: {e}")))
}

/// Parses and validates the request config for `env.command`.
///
/// In order:
/// 1. Malformed JSON, or not an object: code 6, the message naming the parse error.
/// 2. `cniVersion` (absent means "0.1.0") must be one of [`SUPPORTED_VERSIONS`]
///    exactly: else code 1 `incompatible CNI versions`, details
///    `config is "X", plugin supports [...]`. CHECK needs 0.4.0 or later, GC and STATUS
///    1.1.0 or later: code 1.
/// 3. `name` (`missing network name` / `invalid network name`), `type` (present, non-empty,
///    no `/`), `subnet`, `dataDir`, `mtu`, `prevResult`, `dns`, the GC attachments and the
///    requested IP: code 7, naming the field, the value as details.
/// 4. CHECK without `prevResult`: code 7 `required prevResult missing`.
/// 5. CNI_ARGS keys other than `IP`, `IgnoreUnknown` and `K8S_POD_*`: code 2 naming them,
///    unless `IgnoreUnknown` is `1`/`true`. DEL only warns (see [`NetConf::warnings`]).
///
/// Unknown keys are ignored and kept in `raw`. For VERSION only `cniVersion` is read: any
/// value is accepted, and empty stdin means "0.1.0".
pub fn parse_conf(env: &Env, stdin: &[u8]) -> Result<NetConf, CniError> {
    if env.command == Command::Version {
        return version_conf(stdin);
    }
    let raw = decode(stdin)?;
    let f = Fields::of(&raw, "").map_err(|_| {
        CniError::new(
            code::DECODE,
            "error decoding network config: expected a JSON object",
        )
    })?;
    let cni_version = f
        .str("cniVersion")
        .map_err(invalid_config)?
        .unwrap_or(IMPLIED_VERSION)
        .to_owned();
    version::check(env.command, &cni_version)?;

    let name = network_name(&f)?;
    let plugin_type = plugin_type(&f).map_err(invalid_config)?;
    let subnet = subnet(&f).map_err(invalid_config)?;
    let data_dir = data_dir(&f).map_err(invalid_config)?;
    let mtu = mtu(&f).map_err(invalid_config)?;
    let dns = f.object("dns").map_err(invalid_config)?;
    let dns = dns
        .as_ref()
        .map(Dns::read)
        .transpose()
        .map_err(invalid_config)?;

    let mut warnings = Vec::new();
    let prev_result = match f.get("prevResult") {
        None => None,
        Some(v) => match CniResult::from_json_at(v, "prevResult", code::INVALID_CONFIG) {
            Ok(r) => Some(r),
            Err(e) if env.command == Command::Del => {
                warnings.push(format!("ignoring prevResult: {e}"));
                None
            }
            Err(e) => return Err(e),
        },
    };
    if env.command == Command::Check && prev_result.is_none() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "required prevResult missing",
        ));
    }
    let valid_attachments = if env.command == Command::Gc {
        attachments(&f).map_err(invalid_config)?
    } else {
        None
    };
    check_args(env, &mut warnings)?;
    let requested_ip = if env.command == Command::Add {
        requested_ip(env, &f, subnet).map_err(invalid_config)?
    } else {
        None
    };
    Ok(NetConf {
        cni_version,
        name,
        plugin_type,
        subnet,
        data_dir,
        mtu,
        prev_result,
        valid_attachments,
        dns,
        requested_ip,
        raw,
        warnings,
    })
}

fn version_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let raw = if stdin.trim_ascii().is_empty() {
        Value::Null
    } else {
        decode(stdin)?
    };
    let cni_version = match &raw {
        Value::Null => None,
        v => Fields::of(v, "")
            .map_err(|e| e.into_cni(code::DECODE))?
            .str("cniVersion")
            .map_err(invalid_config)?,
    };
    Ok(NetConf {
        cni_version: cni_version.unwrap_or(IMPLIED_VERSION).to_owned(),
        name: String::new(),
        plugin_type: String::new(),
        subnet: Ipv4Net::default(),
        data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        mtu: None,
        prev_result: None,
        valid_attachments: None,
        dns: None,
        requested_ip: None,
        raw,
        warnings: Vec::new(),
    })
}

fn network_name(f: &Fields<'_>) -> Result<String, CniError> {
    match f.get("name") {
        None => Err(CniError::new(code::INVALID_CONFIG, "missing network name")),
        Some(Value::String(s)) if is_valid_name(s) => Ok(s.clone()),
        Some(other) => {
            Err(CniError::new(code::INVALID_CONFIG, "invalid network name")
                .with_details(show(other)))
        }
    }
}

fn plugin_type(f: &Fields<'_>) -> Result<String, FieldError> {
    let t = f.require("type", f.str("type")?)?;
    if t.is_empty() || t.contains('/') || t.contains('\0') {
        return Err(FieldError::invalid(
            "type",
            "must be a non-empty binary name without '/'",
            &json!(t),
        ));
    }
    Ok(t.to_owned())
}

fn subnet(f: &Fields<'_>) -> Result<Ipv4Net, FieldError> {
    let v = f.require("subnet", f.get("subnet"))?;
    let invalid = |reason: &str| FieldError::invalid("subnet", reason, v);
    let net: Ipv4Net = v
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("expected an IPv4 CIDR such as 10.244.1.0/24"))?;
    if net.prefix_len() > MAX_SUBNET_PREFIX {
        return Err(invalid("prefix must be /30 or shorter"));
    }
    if net != net.trunc() {
        return Err(invalid("host bits are set"));
    }
    Ok(net)
}

fn data_dir(f: &Fields<'_>) -> Result<PathBuf, FieldError> {
    match f.str("dataDir")? {
        None => Ok(PathBuf::from(DEFAULT_DATA_DIR)),
        Some(d) if d.starts_with('/') && !d.contains('\0') => Ok(PathBuf::from(d)),
        Some(d) => Err(FieldError::invalid(
            "dataDir",
            "must be an absolute path",
            &json!(d),
        )),
    }
}

fn mtu(f: &Fields<'_>) -> Result<Option<u32>, FieldError> {
    let invalid = |v: &Value| FieldError::invalid("mtu", "expected an integer in 576..=65535", v);
    match f.get("mtu") {
        None => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if MTU_RANGE.contains(&n) => Ok(Some(n)),
            _ => Err(invalid(v)),
        },
    }
}

fn attachments(f: &Fields<'_>) -> Result<Option<Vec<Attachment>>, FieldError> {
    let key = ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .into_iter()
        .find(|k| f.get(k).is_some());
    let Some(key) = key else { return Ok(None) };
    f.objects(key)?
        .iter()
        .map(|a| {
            Ok(Attachment {
                container_id: a.require("containerID", a.str("containerID")?)?.to_owned(),
                ifname: a.require("ifname", a.str("ifname")?)?.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `IgnoreUnknown`'s boolean, as the reference `UnmarshallableBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// The CNI_ARGS keys flatnet understands, plus the ones Kubernetes runtimes always send.
fn is_known_arg(key: &str) -> bool {
    key == "IP" || key == "IgnoreUnknown" || key.starts_with("K8S_POD_")
}

fn check_args(env: &Env, warnings: &mut Vec<String>) -> Result<(), CniError> {
    let mut ignore_unknown = false;
    for (_, v) in env.args.iter().filter(|(k, _)| k == "IgnoreUnknown") {
        ignore_unknown = parse_bool(v).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                "invalid CNI_ARGS IgnoreUnknown: expected 1, 0, true or false",
            )
            .with_details(v.clone())
        })?;
    }
    let unknown: Vec<String> = env
        .args
        .iter()
        .filter(|(k, _)| !is_known_arg(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if unknown.is_empty() || ignore_unknown {
        return Ok(());
    }
    let list = unknown.join(";");
    if env.command == Command::Del {
        warnings.push(format!("ignoring unknown CNI_ARGS {list}"));
        return Ok(());
    }
    Err(CniError::new(
        code::UNSUPPORTED_FIELD,
        format!("unknown CNI_ARGS {list} (set IgnoreUnknown=1 to allow)"),
    )
    .with_details(list))
}

/// The first source that names an IP, validated: IPv4 and inside `subnet`.
fn requested_ip(
    env: &Env,
    f: &Fields<'_>,
    subnet: Ipv4Net,
) -> Result<Option<Ipv4Addr>, FieldError> {
    let from_list = |parent: Option<Fields<'_>>| -> Result<Option<(String, Value)>, FieldError> {
        let Some(p) = parent else { return Ok(None) };
        Ok(p.array("ips")?
            .first()
            .map(|v| (format!("{}[0]", p.path("ips")), v.clone())))
    };
    let cni_args = env
        .arg("IP")
        .map(|ip| ("CNI_ARGS IP".to_owned(), json!(ip)));
    let args_cni = match f.object("args")? {
        Some(args) => from_list(args.object("cni")?)?,
        None => None,
    };
    let runtime = from_list(f.object("runtimeConfig")?)?;
    let Some((field, v)) = cni_args.or(args_cni).or(runtime) else {
        return Ok(None);
    };
    let ip = v
        .as_str()
        .and_then(|s| {
            s.parse::<IpAddr>()
                .ok()
                .or_else(|| s.parse::<IpNet>().ok().map(|n| n.addr()))
        })
        .ok_or_else(|| FieldError::invalid(&field, "expected an IP address", &v))?;
    let IpAddr::V4(ip) = ip else {
        return Err(FieldError::invalid(
            &field,
            "flatnet assigns IPv4 addresses only",
            &v,
        ));
    };
    if !subnet.contains(&ip) {
        return Err(FieldError::invalid(
            &field,
            format!("outside subnet {subnet}"),
            &v,
        ));
    }
    Ok(Some(ip))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn ignore_unknown_reads_like_the_reference_bool() {
        for (s, want) in [
            ("1", true),
            ("true", true),
            ("TRUE", true),
            ("0", false),
            ("false", false),
        ] {
            assert_eq!(parse_bool(s), Some(want), "{s}");
        }
        assert_eq!(parse_bool("yes"), None);
    }

    #[test]
    fn version_output_defaults_to_the_newest_version() {
        assert_eq!(version_output("")["cniVersion"], "1.1.0");
        assert_eq!(version_output("0.4.0")["cniVersion"], "0.4.0");
    }

    #[test]
    fn peek_version_survives_invalid_configs() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"1.0.0","subnet":5}"#).as_deref(),
            Some("1.0.0")
        );
        assert_eq!(peek_version(b"{"), None);
        assert_eq!(peek_version(b"[1]"), None);
    }
}
