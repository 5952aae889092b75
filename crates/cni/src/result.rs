//! The ADD result in its internal (1.1.0) form, written and read in each supported version's
//! shape ([SPEC] §5 "Success"; JSON names from the reference `pkg/types/100`).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::json::{FieldError, Fields};
use crate::{CniError, code, version};

/// Result of ADD, in its 1.1.0 form. `socketPath` and `pciID` of interfaces are not kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    /// `interfaces`: the host and container interfaces the plugin made.
    pub interfaces: Vec<Interface>,
    /// `ips`: the addresses assigned.
    pub ips: Vec<IpConfig>,
    /// `routes`: routes set in the container.
    pub routes: Vec<Route>,
    /// `dns`: resolver settings for the runtime to apply.
    pub dns: Option<Dns>,
}

/// One entry of `interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// `name`: the interface name (in its namespace).
    pub name: String,
    /// `mac`: the hardware address, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    /// 1.1.0 only.
    pub mtu: Option<u32>,
    /// The netns path; `None` (or empty) means the host.
    pub sandbox: Option<String>,
}

/// One entry of `ips`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with its prefix, e.g. `10.244.1.2/32`.
    pub address: IpNet,
    /// `gateway`: the default gateway for this address, if any.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// One entry of `routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `dst`: the destination prefix (`0.0.0.0/0` for the default route).
    pub dst: IpNet,
    /// `gw`: the next hop; `None` leaves it to the plugin (the spec's "default gateway").
    pub gw: Option<IpAddr>,
    /// `mtu`, `advmss`, `priority`, `table` and `scope` are 1.1.0 only.
    pub mtu: Option<u32>,
    /// `advmss`: TCP MSS to advertise on the route.
    pub advmss: Option<u32>,
    /// `priority`: the route's metric.
    pub priority: Option<u32>,
    /// `table`: the routing table, the main one when `None`.
    pub table: Option<u32>,
    /// 0 global, 253 link, 254 host.
    pub scope: Option<u8>,
}

/// The `dns` section of a config or result (resolver settings, applied by the runtime).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    /// `nameservers`: resolver addresses, in order of preference.
    pub nameservers: Vec<String>,
    /// `domain`: the local domain used for short names.
    pub domain: Option<String>,
    /// `search`: search domains, in order.
    pub search: Vec<String>,
    /// `options`: resolver options (`ndots:5`, ...).
    pub options: Vec<String>,
}

/// Which fields a version's result has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// 0.3.0, 0.3.1, 0.4.0: `ips[].version` present, no 1.1.0 fields.
    Legacy,
    /// 1.0.0: no `ips[].version`, no 1.1.0 fields.
    V1_0,
    /// 1.1.0: everything.
    V1_1,
}

impl Shape {
    /// Versions that do not parse, or are newer than 1.1.0, get the 1.1.0 shape.
    fn of(v: &str) -> Self {
        match version::parse(v) {
            Some(n) if n < (1, 0, 0) => Self::Legacy,
            Some(n) if n < (1, 1, 0) => Self::V1_0,
            _ => Self::V1_1,
        }
    }
}

fn put(out: &mut Map<String, Value>, key: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        out.insert(key.to_owned(), v.into());
    }
}

fn put_str(out: &mut Map<String, Value>, key: &str, v: &Option<String>) {
    put(out, key, v.as_deref().filter(|s| !s.is_empty()));
}

fn put_list(out: &mut Map<String, Value>, key: &str, v: &[String]) {
    if !v.is_empty() {
        out.insert(key.to_owned(), v.into());
    }
}

impl CniResult {
    /// Serialises in `version`'s shape, always with `"cniVersion": version`.
    ///
    /// 0.3.0/0.3.1/0.4.0 put `"version": "4"|"6"` in each `ips` entry; those and 1.0.0 drop the
    /// 1.1.0-only fields (`interfaces[].mtu`, `routes[].mtu/advmss/priority/table/scope`).
    /// Empty lists, `None` and empty strings are left out; `dns` only when `Some`. A version
    /// that does not parse, or is newer than 1.1.0, gets the 1.1.0 shape.
    pub fn to_json(&self, version: &str) -> Value {
        let shape = Shape::of(version);
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.into());
        if !self.interfaces.is_empty() {
            let list = self.interfaces.iter().map(|i| i.to_json(shape)).collect();
            out.insert("interfaces".into(), Value::Array(list));
        }
        if !self.ips.is_empty() {
            let list = self.ips.iter().map(|i| i.to_json(shape)).collect();
            out.insert("ips".into(), Value::Array(list));
        }
        if !self.routes.is_empty() {
            let list = self.routes.iter().map(|r| r.to_json(shape)).collect();
            out.insert("routes".into(), Value::Array(list));
        }
        if let Some(dns) = &self.dns {
            out.insert("dns".into(), dns.to_json());
        }
        Value::Object(out)
    }

    /// Reads a result of any supported version's shape; `ips[].version` is accepted and
    /// ignored, unknown keys are ignored. A `cniVersion` outside
    /// [`SUPPORTED_VERSIONS`](crate::SUPPORTED_VERSIONS) is code 1; a malformed field is code 6
    /// naming the field (`invalid ips[0].address: expected a CIDR`).
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        Self::from_json_at(v, "", code::DECODE)
    }

    /// [`from_json`](Self::from_json) for a result nested at `path`, errors with `code`.
    pub(crate) fn from_json_at(v: &Value, path: &str, code: u32) -> Result<CniResult, CniError> {
        let f = Fields::of(v, path).map_err(|e| e.into_cni(code))?;
        if let Some(ver) = f.str("cniVersion").map_err(|e| e.into_cni(code))?
            && !version::is_supported(ver)
        {
            return Err(version::incompatible("result", ver));
        }
        Self::read(&f).map_err(|e| e.into_cni(code))
    }

    fn read(f: &Fields<'_>) -> Result<CniResult, FieldError> {
        let interfaces = f
            .objects("interfaces")?
            .iter()
            .map(Interface::read)
            .collect::<Result<Vec<_>, _>>()?;
        let ips = f
            .objects("ips")?
            .iter()
            .map(|ip| IpConfig::read(ip, interfaces.len()))
            .collect::<Result<_, _>>()?;
        let routes = f
            .objects("routes")?
            .iter()
            .map(Route::read)
            .collect::<Result<_, _>>()?;
        let dns = f.object("dns")?.as_ref().map(Dns::read).transpose()?;
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
    }
}

impl Interface {
    fn to_json(&self, shape: Shape) -> Value {
        let mut out = Map::new();
        out.insert("name".into(), self.name.clone().into());
        put_str(&mut out, "mac", &self.mac);
        if shape == Shape::V1_1 {
            put(&mut out, "mtu", self.mtu);
        }
        put_str(&mut out, "sandbox", &self.sandbox);
        Value::Object(out)
    }

    fn read(f: &Fields<'_>) -> Result<Self, FieldError> {
        Ok(Self {
            name: f.require("name", f.str("name")?)?.to_owned(),
            mac: f.nonempty_string("mac")?,
            mtu: f.uint("mtu")?,
            sandbox: f.nonempty_string("sandbox")?,
        })
    }
}

impl IpConfig {
    fn to_json(&self, shape: Shape) -> Value {
        let mut out = Map::new();
        if shape == Shape::Legacy {
            let family = if self.address.addr().is_ipv4() {
                "4"
            } else {
                "6"
            };
            out.insert("version".into(), family.into());
        }
        out.insert("address".into(), self.address.to_string().into());
        put(&mut out, "gateway", self.gateway.map(|g| g.to_string()));
        put(&mut out, "interface", self.interface);
        Value::Object(out)
    }

    fn read(f: &Fields<'_>, interfaces: usize) -> Result<Self, FieldError> {
        let interface: Option<usize> = f.uint("interface")?;
        if let Some(i) = interface.filter(|i| *i >= interfaces) {
            return Err(FieldError::invalid(
                f.path("interface"),
                format!("index out of range ({interfaces} interfaces)"),
                &json!(i),
            ));
        }
        if let Some(v) = f.str("version")?
            && v != "4"
            && v != "6"
        {
            let why = "expected \"4\" or \"6\"";
            return Err(FieldError::invalid(f.path("version"), why, &json!(v)));
        }
        Ok(Self {
            address: f.require("address", f.parsed("address", "a CIDR")?)?,
            gateway: f.parsed("gateway", "an IP address")?,
            interface,
        })
    }
}

impl Route {
    fn to_json(&self, shape: Shape) -> Value {
        let mut out = Map::new();
        out.insert("dst".into(), self.dst.to_string().into());
        put(&mut out, "gw", self.gw.map(|g| g.to_string()));
        if shape == Shape::V1_1 {
            put(&mut out, "mtu", self.mtu);
            put(&mut out, "advmss", self.advmss);
            put(&mut out, "priority", self.priority);
            put(&mut out, "table", self.table);
            put(&mut out, "scope", self.scope);
        }
        Value::Object(out)
    }

    fn read(f: &Fields<'_>) -> Result<Self, FieldError> {
        Ok(Self {
            dst: f.require("dst", f.parsed("dst", "a CIDR")?)?,
            gw: f.parsed("gw", "an IP address")?,
            mtu: f.uint("mtu")?,
            advmss: f.uint("advmss")?,
            priority: f.uint("priority")?,
            table: f.uint("table")?,
            scope: f.uint("scope")?,
        })
    }
}

impl Dns {
    fn to_json(&self) -> Value {
        let mut out = Map::new();
        put_list(&mut out, "nameservers", &self.nameservers);
        put_str(&mut out, "domain", &self.domain);
        put_list(&mut out, "search", &self.search);
        put_list(&mut out, "options", &self.options);
        Value::Object(out)
    }

    pub(crate) fn read(f: &Fields<'_>) -> Result<Self, FieldError> {
        Ok(Self {
            nameservers: f.strings("nameservers")?,
            domain: f.nonempty_string("domain")?,
            search: f.strings("search")?,
            options: f.strings("options")?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn unknown_and_newer_versions_get_the_full_shape() {
        assert_eq!(Shape::of("garbage"), Shape::V1_1);
        assert_eq!(Shape::of("2.0.0"), Shape::V1_1);
        assert_eq!(Shape::of("0.4.0"), Shape::Legacy);
        assert_eq!(Shape::of("1.0.0"), Shape::V1_0);
    }

    #[test]
    fn interface_index_must_point_into_interfaces() {
        let v = json!({"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.2/32", "interface": 1}]});
        let e = CniResult::from_json(&v).unwrap_err();
        assert_eq!(e.code, code::DECODE);
        assert_eq!(
            e.msg,
            "invalid ips[0].interface: index out of range (1 interfaces)"
        );
    }
}
