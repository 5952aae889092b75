//! Fast decoding of typed views that keep unknown keys in `extra`.
//!
//! `#[serde(default)]` with `#[serde(flatten)] extra` first buffers every key of the object
//! into serde's intermediate tree and then reads the fields from it; on an EndpointSlice with
//! ten endpoints (each with its own flattened `extra`, and `conditions` with another) that made
//! decoding about five times slower than plain fields. [`with_extra!`] writes the same
//! `Deserialize` by hand: listed keys go to their fields, any other key to `extra`, missing
//! ones keep their `Default`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Visitor};

/// An object key, borrowed from the input when it can be.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// `Deserialize` for a `Default` struct with an `extra: Map<String, Value>` field: each
/// `"jsonKey" => field` pair reads that key into that field; every field must be listed.
macro_rules! with_extra {
    ($ty:ident { $($key:literal => $field:ident),* $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("a ", stringify!($ty), " object"))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$ty, A::Error> {
                        let mut out = $ty::default();
                        while let Some(crate::de::Key(key)) = map.next_key()? {
                            match key.as_ref() {
                                $($key => out.$field = map.next_value()?,)*
                                _ => {
                                    out.extra.insert(key.into_owned(), map.next_value()?);
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V)
            }
        }
        // Every field of the struct is listed (this pattern stops compiling otherwise).
        const _: fn(&$ty) = |v| {
            let $ty { $($field: _,)* extra: _ } = v;
        };
    };
}
pub(crate) use with_extra;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use serde_json::json;

    use crate::EndpointSlice;

    fn slice() -> serde_json::Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "default", "generation": 3,
                         "labels": {"kubernetes.io/service-name": "web"},
                         "ownerReferences": [{"kind": "Service", "name": "web"}]},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "nodeName": "n1", "hints": {"forZones": []},
                 "conditions": {"ready": true, "serving": true, "terminating": false, "x": 1}},
                {"addresses": ["10.244.2.5"], "conditions": {}, "zone": "z1",
                 "targetRef": {"kind": "Pod", "name": "p", "resourceVersion": "7"}}
            ],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "foo": "bar"}]
        })
    }

    #[test]
    fn known_keys_go_to_fields_and_the_rest_to_extra_at_every_level() {
        let v = slice();
        let s: EndpointSlice = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(s.metadata.name, "web-abc");
        assert_eq!(s.metadata.extra["generation"], 3);
        assert!(s.metadata.extra.contains_key("ownerReferences"));
        assert_eq!(s.extra["kind"], "EndpointSlice");
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(s.endpoints[0].node_name.as_deref(), Some("n1"));
        assert_eq!(s.endpoints[0].conditions.ready, Some(true));
        assert_eq!(s.endpoints[0].conditions.extra["x"], 1);
        assert!(s.endpoints[0].extra.contains_key("hints"));
        assert_eq!(s.endpoints[1].conditions.ready, None);
        assert_eq!(s.endpoints[1].zone.as_deref(), Some("z1"));
        assert_eq!(s.ports[0].port, Some(8080));
        assert_eq!(s.ports[0].extra["foo"], "bar");
        // Lossless, and the same from a parsed tree as from bytes.
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        let from_value: EndpointSlice = serde_json::from_value(v).unwrap();
        assert_eq!(from_value, s);
    }

    #[test]
    fn wrong_types_and_non_objects_are_errors_not_defaults() {
        let mut v = slice();
        v["endpoints"][0]["conditions"]["ready"] = json!("yes");
        assert!(serde_json::from_value::<EndpointSlice>(v).is_err());
        let mut v = slice();
        v["metadata"] = json!([]);
        assert!(serde_json::from_value::<EndpointSlice>(v).is_err());
        assert!(serde_json::from_str::<EndpointSlice>("3").is_err());
        // Escaped keys are still recognised.
        let s: EndpointSlice =
            serde_json::from_str(r#"{"address\u0054ype": "IPv4", "endpoints": []}"#).unwrap();
        assert_eq!(s.address_type, "IPv4");
    }
}
