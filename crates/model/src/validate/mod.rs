//! Validation of one object, field by field, with the API server's rules and messages.
//!
//! The checks walk the raw JSON rather than the typed views so that every error can name the
//! exact field path and the value as written (a `containerPort` of `70000` is reported as
//! `70000`, not as a failed `u16` conversion).

mod network;
mod pod;
mod service;
mod simple;

use std::fmt::Display;

use serde_json::{Map, Value};

use crate::error::ModelError;
use crate::kind::Kind;
use crate::names;
use crate::object::Object;

/// Validates one object (what [`crate::parse_manifests`] runs on each document after
/// defaulting). All problems are reported in one error, separated by `; `.
pub fn validate(obj: &Object) -> Result<(), ModelError> {
    let errs = check(obj);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ModelError::InvalidObject(describe(
            obj.kind.as_str(),
            Some(&obj.display_name()),
            &errs,
        )))
    }
}

/// `Pod "x/web" is invalid: <error>; <error>`.
pub(crate) fn describe(kind: &str, name: Option<&str>, errs: &[String]) -> String {
    match name {
        Some(name) if !name.is_empty() => {
            format!("{kind} {name:?} is invalid: {}", errs.join("; "))
        }
        _ => format!("{kind} is invalid: {}", errs.join("; ")),
    }
}

/// All field errors of one object; empty when it is valid.
pub(crate) fn check(obj: &Object) -> Vec<String> {
    let mut e = Errs::default();
    let Some(root) = e.object(&obj.value, "") else {
        return e.list;
    };
    let kind = obj.kind;
    match root.get("apiVersion") {
        Some(Value::String(v)) if v == kind.api_version() => {}
        None | Some(Value::Null) => e.required("apiVersion"),
        Some(v) => e.unsupported("apiVersion", v, &[kind.api_version()]),
    }
    match root.get("kind") {
        Some(Value::String(v)) if v == kind.as_str() => {}
        None | Some(Value::Null) => e.required("kind"),
        Some(v) => e.unsupported("kind", v, &[kind.as_str()]),
    }
    match field(root, "metadata") {
        None => e.required("metadata"),
        Some(m) => {
            if let Some(m) = e.object(m, "metadata") {
                check_metadata(&mut e, kind, m);
            }
        }
    }
    match kind {
        Kind::Namespace => {}
        Kind::Pod => pod::check_pod(&mut e, root),
        Kind::Deployment => pod::check_deployment(&mut e, root),
        Kind::Service => service::check_service(&mut e, root),
        Kind::EndpointSlice => service::check_endpoint_slice(&mut e, root),
        Kind::NetworkPolicy => network::check_network_policy(&mut e, root),
        Kind::Ingress => network::check_ingress(&mut e, root),
        Kind::IngressClass => network::check_ingress_class(&mut e, root),
        Kind::Secret => simple::check_secret(&mut e, root),
        Kind::Node => simple::check_node(&mut e, root),
    }
    if e.list.is_empty() {
        // Backstop: whatever the walk above missed, a valid object must read as its typed view.
        let typed = match kind {
            Kind::Namespace => obj.typed::<crate::Namespace>().map(drop),
            Kind::Pod => obj.typed::<crate::Pod>().map(drop),
            Kind::Deployment => obj.typed::<crate::Deployment>().map(drop),
            Kind::Service => obj.typed::<crate::Service>().map(drop),
            Kind::EndpointSlice => obj.typed::<crate::EndpointSlice>().map(drop),
            Kind::Secret => obj.typed::<crate::Secret>().map(drop),
            Kind::Node => obj.typed::<crate::Node>().map(drop),
            Kind::Ingress => obj.typed::<crate::Ingress>().map(drop),
            Kind::IngressClass => obj.typed::<crate::IngressClass>().map(drop),
            Kind::NetworkPolicy => Ok(()),
        };
        if let Err(err) = typed {
            e.list.push(err.to_string());
        }
    }
    e.list
}

fn check_metadata(e: &mut Errs, kind: Kind, m: &Map<String, Value>) {
    match field(m, "name") {
        Some(v) if !v.is_string() => {
            e.string(v, "metadata.name");
        }
        Some(Value::String(name)) if !name.is_empty() => {
            let name = name.as_str();
            let rule = match kind {
                Kind::Namespace => names::dns1123_label(name),
                Kind::Service => names::dns1035_label(name),
                _ => names::dns1123_subdomain(name),
            };
            if let Err(detail) = rule {
                e.invalid("metadata.name", &m["name"], detail);
            }
        }
        _ => {
            if field(m, "generateName").is_some() {
                e.required_because("metadata.name", "generateName is not supported by flatnet");
            } else {
                e.required("metadata.name");
            }
        }
    }
    if let Some(ns) = e.opt_str(m, "namespace", "metadata") {
        if !kind.namespaced() {
            if !ns.is_empty() {
                e.forbidden(
                    "metadata.namespace",
                    format!("not allowed on cluster-scoped kind {kind}"),
                );
            }
        } else if let Err(detail) = names::dns1123_label(ns) {
            e.invalid("metadata.namespace", &m["namespace"], detail);
        }
    }
    check_labels(e, m, "labels", "metadata");
    if let Some(annotations) = e.opt_str_map(m, "annotations", "metadata") {
        let mut total = 0;
        for (k, v) in annotations {
            if let Err(detail) = names::qualified_name(k) {
                e.invalid("metadata.annotations", &Value::from(k), detail);
            }
            total += k.len() + v.len();
        }
        if total > 256 * 1024 {
            e.push(
                "metadata.annotations",
                format!("Too long: must have at most 262144 bytes, got {total}"),
            );
        }
    }
    for f in ["uid", "resourceVersion", "creationTimestamp"] {
        e.opt_str(m, f, "metadata");
    }
}

/// A `map[string]string` of labels (`metadata.labels`, a Service `selector`, `matchLabels`).
pub(crate) fn check_labels(e: &mut Errs, m: &Map<String, Value>, key: &str, p: &str) {
    let path = at(p, key);
    if let Some(labels) = e.opt_str_map(m, key, p) {
        for (k, v) in labels {
            if let Err(detail) = names::label_key(k) {
                e.invalid(&path, &Value::from(k), detail);
            }
            if let Err(detail) = names::label_value(v) {
                e.invalid(&index_key(&path, k), &Value::from(v), detail);
            }
        }
    }
}

/// A `LabelSelector` at `p` (already known to be present).
pub(crate) fn check_label_selector(e: &mut Errs, v: &Value, p: &str) {
    let Some(sel) = e.object(v, p) else { return };
    check_labels(e, sel, "matchLabels", p);
    let Some(exprs) = e.opt_array(sel, "matchExpressions", p) else {
        return;
    };
    for (i, x) in exprs.iter().enumerate() {
        let xp = index(&at(p, "matchExpressions"), i);
        let Some(x) = e.object(x, &xp) else { continue };
        if let Some(k) = e.req_str(x, "key", &xp)
            && let Err(detail) = names::label_key(k)
        {
            e.invalid(&at(&xp, "key"), &x["key"], detail);
        }
        let values = e.opt_str_list(x, "values", &xp).unwrap_or_default();
        match e.req_str(x, "operator", &xp) {
            Some("In" | "NotIn") if values.is_empty() => e.required_because(
                &at(&xp, "values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            Some("Exists" | "DoesNotExist") if !values.is_empty() => e.forbidden(
                &at(&xp, "values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            Some("In" | "NotIn" | "Exists" | "DoesNotExist") | None => {}
            Some(_) => e.unsupported(
                &at(&xp, "operator"),
                &x["operator"],
                &["In", "NotIn", "Exists", "DoesNotExist"],
            ),
        }
        for (j, v) in values.iter().enumerate() {
            if let Err(detail) = names::label_value(v) {
                e.invalid(&index(&at(&xp, "values"), j), &Value::from(*v), detail);
            }
        }
    }
}

/// A port number (1..=65535) or an IANA service name, at `p` (already known to be present).
pub(crate) fn check_int_or_port_name(e: &mut Errs, v: &Value, p: &str) {
    match v {
        Value::String(s) => {
            if let Err(detail) = names::iana_svc_name(s) {
                e.invalid(p, v, detail);
            }
        }
        Value::Number(_) => {
            e.port_number(v, p);
        }
        _ => e.invalid(p, v, "must be a port number or a port name"),
    }
}

/// `TCP`, `UDP` or `SCTP` at `m[key]`, if present.
pub(crate) fn check_protocol(e: &mut Errs, m: &Map<String, Value>, p: &str) {
    if let Some(proto) = e.opt_str(m, "protocol", p)
        && !matches!(proto, "TCP" | "UDP" | "SCTP")
    {
        e.unsupported(&at(p, "protocol"), &m["protocol"], &["TCP", "UDP", "SCTP"]);
    }
}

/// `m[key]`, treating an explicit `null` like an absent field (as Go's JSON decoding does).
pub(crate) fn field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

/// `p.f`, or `f` at the root.
pub(crate) fn at(p: &str, f: &str) -> String {
    if p.is_empty() {
        f.to_string()
    } else {
        format!("{p}.{f}")
    }
}

/// `p[i]`.
pub(crate) fn index(p: &str, i: usize) -> String {
    format!("{p}[{i}]")
}

/// `p[key]` (map entries: `metadata.labels[app]`, `data[tls.crt]`).
pub(crate) fn index_key(p: &str, key: &str) -> String {
    format!("{p}[{key}]")
}

/// The value as JSON, shortened for messages.
pub(crate) fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let short: String = s.chars().take(77).collect();
        format!("{short}...")
    } else {
        s
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Field errors collected while walking one object, in the API server's wording.
#[derive(Default)]
pub(crate) struct Errs {
    pub(crate) list: Vec<String>,
}

impl Errs {
    pub(crate) fn push(&mut self, p: &str, msg: impl Display) {
        if p.is_empty() {
            self.list.push(msg.to_string());
        } else {
            self.list.push(format!("{p}: {msg}"));
        }
    }

    pub(crate) fn required(&mut self, p: &str) {
        self.push(p, "Required value");
    }

    pub(crate) fn required_because(&mut self, p: &str, detail: impl Display) {
        self.push(p, format!("Required value: {detail}"));
    }

    pub(crate) fn invalid(&mut self, p: &str, v: &Value, detail: impl Display) {
        self.push(p, format!("Invalid value: {}: {detail}", show(v)));
    }

    pub(crate) fn unsupported(&mut self, p: &str, v: &Value, supported: &[&str]) {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.push(
            p,
            format!(
                "Unsupported value: {}: supported values: {}",
                show(v),
                list.join(", ")
            ),
        );
    }

    pub(crate) fn duplicate(&mut self, p: &str, v: &Value) {
        self.push(p, format!("Duplicate value: {}", show(v)));
    }

    pub(crate) fn forbidden(&mut self, p: &str, detail: impl Display) {
        self.push(p, format!("Forbidden: {detail}"));
    }

    fn wrong_type(&mut self, p: &str, v: &Value, want: &str) {
        self.invalid(p, v, format!("must be {want}, not {}", type_name(v)));
    }

    pub(crate) fn object<'a>(&mut self, v: &'a Value, p: &str) -> Option<&'a Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            _ => {
                self.wrong_type(p, v, "a mapping");
                None
            }
        }
    }

    pub(crate) fn string<'a>(&mut self, v: &'a Value, p: &str) -> Option<&'a str> {
        match v {
            Value::String(s) => Some(s),
            _ => {
                self.wrong_type(p, v, "a string");
                None
            }
        }
    }

    /// An integer; numbers beyond i64 saturate so that range checks report them.
    pub(crate) fn int(&mut self, v: &Value, p: &str) -> Option<i64> {
        match v {
            Value::Number(n) if n.is_i64() => n.as_i64(),
            Value::Number(n) if n.is_u64() => Some(i64::MAX),
            _ => {
                self.wrong_type(p, v, "an integer");
                None
            }
        }
    }

    /// An integer in `lo..=hi`.
    pub(crate) fn int_in(&mut self, v: &Value, p: &str, lo: i64, hi: i64) -> Option<i64> {
        let i = self.int(v, p)?;
        if i < lo || i > hi {
            self.invalid(p, v, format!("must be between {lo} and {hi}, inclusive"));
            return None;
        }
        Some(i)
    }

    /// An `int32` that is at least `lo` (counts, seconds).
    pub(crate) fn int32_min(&mut self, v: &Value, p: &str, lo: i64) -> Option<i64> {
        let i = self.int(v, p)?;
        if i < lo {
            self.invalid(p, v, format!("must be greater than or equal to {lo}"));
            return None;
        }
        if i > i64::from(i32::MAX) {
            self.invalid(p, v, format!("must be no more than {}", i32::MAX));
            return None;
        }
        Some(i)
    }

    /// A port number, 1..=65535.
    pub(crate) fn port_number(&mut self, v: &Value, p: &str) -> Option<u16> {
        self.int_in(v, p, 1, 65535)
            .and_then(|i| u16::try_from(i).ok())
    }

    pub(crate) fn opt_str<'a>(
        &mut self,
        m: &'a Map<String, Value>,
        key: &str,
        p: &str,
    ) -> Option<&'a str> {
        let v = field(m, key)?;
        self.string(v, &at(p, key))
    }

    /// A string that must be present and non-empty.
    pub(crate) fn req_str<'a>(
        &mut self,
        m: &'a Map<String, Value>,
        key: &str,
        p: &str,
    ) -> Option<&'a str> {
        match self.opt_str(m, key, p) {
            Some("") => {
                self.required(&at(p, key));
                None
            }
            Some(s) => Some(s),
            None => {
                if field(m, key).is_none() {
                    self.required(&at(p, key));
                }
                None
            }
        }
    }

    pub(crate) fn opt_bool(&mut self, m: &Map<String, Value>, key: &str, p: &str) -> Option<bool> {
        match field(m, key)? {
            Value::Bool(b) => Some(*b),
            v => {
                self.wrong_type(&at(p, key), v, "a boolean");
                None
            }
        }
    }

    pub(crate) fn opt_int32_min(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        p: &str,
        lo: i64,
    ) -> Option<i64> {
        let v = field(m, key)?;
        self.int32_min(v, &at(p, key), lo)
    }

    pub(crate) fn opt_object<'a>(
        &mut self,
        m: &'a Map<String, Value>,
        key: &str,
        p: &str,
    ) -> Option<&'a Map<String, Value>> {
        let v = field(m, key)?;
        self.object(v, &at(p, key))
    }

    pub(crate) fn opt_array<'a>(
        &mut self,
        m: &'a Map<String, Value>,
        key: &str,
        p: &str,
    ) -> Option<&'a [Value]> {
        match field(m, key)? {
            Value::Array(a) => Some(a),
            v => {
                self.wrong_type(&at(p, key), v, "a list");
                None
            }
        }
    }

    /// A list of strings; the result holds the elements that are strings.
    pub(crate) fn opt_str_list<'a>(
        &mut self,
        m: &'a Map<String, Value>,
        key: &str,
        p: &str,
    ) -> Option<Vec<&'a str>> {
        let list = self.opt_array(m, key, p)?;
        let path = at(p, key);
        Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, v)| self.string(v, &index(&path, i)))
                .collect(),
        )
    }

    /// A `map[string]string`; the result holds the entries whose values are strings.
    pub(crate) fn opt_str_map<'a>(
        &mut self,
        m: &'a Map<String, Value>,
        key: &str,
        p: &str,
    ) -> Option<Vec<(&'a str, &'a str)>> {
        let map = self.opt_object(m, key, p)?;
        let path = at(p, key);
        Some(
            map.iter()
                .filter_map(|(k, v)| Some((k.as_str(), self.string(v, &index_key(&path, k))?)))
                .collect(),
        )
    }
}
