//! Which request a method, path and query are (pure): discovery documents, health checks, or a
//! read of one resource (`get` by name, `list` in a namespace or across all of them).

use model::Kind;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /version`.
    Version,
    /// `GET /api`: the core group's versions.
    Api,
    /// `GET /apis`: the named groups.
    Apis,
    /// `GET /api/v1` or `/apis/<group>/<version>`: that group version's resources.
    Resources {
        /// `v1`, or `<group>/<version>`.
        group_version: String,
    },
    /// `GET /healthz`, `/livez`, `/readyz`.
    Health,
    /// `GET /openapi/v2`.
    OpenApiV2,
    /// `GET /openapi/v3`.
    OpenApiV3,
    /// One object by name.
    Get {
        /// Its kind.
        kind: Kind,
        /// Its namespace; None for cluster-scoped kinds.
        namespace: Option<String>,
        /// `metadata.name`.
        name: String,
    },
    /// `POST` of a new object to a namespace's (or a cluster-scoped kind's) collection.
    Create {
        /// The kind created.
        kind: Kind,
        /// The namespace from the path; None for cluster-scoped kinds.
        namespace: Option<String>,
    },
    /// `DELETE` of one object by name.
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its namespace; None for cluster-scoped kinds.
        namespace: Option<String>,
        /// `metadata.name`.
        name: String,
    },
    /// Objects of one kind: in one namespace, or all (`namespace` None).
    List {
        /// Their kind.
        kind: Kind,
        /// The namespace; None for all namespaces and for cluster-scoped kinds.
        namespace: Option<String>,
    },
}

/// Why a request has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No such path (unknown group, version, resource or shape).
    #[error("the server could not find the requested resource")]
    NotFound,
    /// The path exists but the method is not served (yet).
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
}

/// The kind served at `plural` in `group_version` (`v1`, `apps/v1`, ...).
pub fn kind_of(group_version: &str, plural: &str) -> Option<Kind> {
    Kind::ALL
        .into_iter()
        .find(|k| k.plural() == plural && k.api_version() == group_version)
}

/// Whether any served kind is in `group_version`.
pub fn known_group_version(group_version: &str) -> bool {
    Kind::ALL.iter().any(|k| k.api_version() == group_version)
}

/// Routes a request. Reads (`GET`, and `HEAD` like it) are served everywhere, `POST` on a
/// collection (a namespaced kind's in its namespace), `DELETE` on one object.
pub fn route(method: &str, path: &str) -> Result<Route, RouteError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let found = match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz"] => Route::Health,
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["api", "v1", rest @ ..] => resource("v1".into(), rest)?,
        ["apis", group, version, rest @ ..] => resource(format!("{group}/{version}"), rest)?,
        _ => return Err(RouteError::NotFound),
    };
    match (found, method) {
        (found, "GET" | "HEAD") => Ok(found),
        (
            Route::Get {
                kind,
                namespace,
                name,
            },
            "DELETE",
        ) => Ok(Route::Delete {
            kind,
            namespace,
            name,
        }),
        (Route::List { kind, namespace }, "POST") if namespace.is_some() || !kind.namespaced() => {
            Ok(Route::Create { kind, namespace })
        }
        _ => Err(RouteError::MethodNotAllowed),
    }
}

fn resource(group_version: String, rest: &[&str]) -> Result<Route, RouteError> {
    if !known_group_version(&group_version) {
        return Err(RouteError::NotFound);
    }
    let kind = |plural: &str| kind_of(&group_version, plural).ok_or(RouteError::NotFound);
    let nonempty = |s: &str| {
        if s.is_empty() {
            Err(RouteError::NotFound)
        } else {
            Ok(s.to_string())
        }
    };
    Ok(match rest {
        [] => Route::Resources {
            group_version: group_version.clone(),
        },
        ["namespaces", ns, plural] => {
            let kind = kind(plural)?;
            if !kind.namespaced() {
                return Err(RouteError::NotFound);
            }
            Route::List {
                kind,
                namespace: Some(nonempty(ns)?),
            }
        }
        ["namespaces", ns, plural, name] => {
            let kind = kind(plural)?;
            if !kind.namespaced() {
                return Err(RouteError::NotFound);
            }
            Route::Get {
                kind,
                namespace: Some(nonempty(ns)?),
                name: nonempty(name)?,
            }
        }
        [plural] => Route::List {
            kind: kind(plural)?,
            namespace: None,
        },
        [plural, name] => {
            let kind = kind(plural)?;
            if kind.namespaced() {
                return Err(RouteError::NotFound);
            }
            Route::Get {
                kind,
                namespace: None,
                name: nonempty(name)?,
            }
        }
        _ => return Err(RouteError::NotFound),
    })
}

/// The query parameters the server reads; the others (`limit`, `timeout`, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `labelSelector`, decoded.
    pub label_selector: Option<String>,
    /// `fieldSelector`, decoded.
    pub field_selector: Option<String>,
    /// `watch` (`true`, `1`, `t`, `True` as Go's `ParseBool`).
    pub watch: bool,
    /// `resourceVersion`, as given (a watch starts after it; unset or `0`: from the current
    /// state, with synthetic ADDED events).
    pub resource_version: Option<String>,
    /// `timeoutSeconds`: a watch ends after this long.
    pub timeout_seconds: Option<u64>,
    /// `dryRun` (refused until it is served: a write asked as a dry run must not happen).
    pub dry_run: Option<String>,
}

/// Parses a query string (without the `?`); a parameter that does not percent-decode is an
/// error naming it.
pub fn query(q: &str) -> Result<Query, String> {
    let mut out = Query::default();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)
            .ok_or_else(|| format!("query parameter {k}: bad percent-encoding"))?;
        match k {
            "labelSelector" => out.label_selector = Some(v),
            "fieldSelector" => out.field_selector = Some(v),
            "dryRun" => out.dry_run = Some(v),
            "watch" => out.watch = matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"),
            "resourceVersion" => out.resource_version = Some(v),
            "timeoutSeconds" => {
                out.timeout_seconds = Some(
                    v.parse()
                        .map_err(|_| format!("timeoutSeconds {v:?} is not a number of seconds"))?,
                )
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` decoding: `%XX` and `+` for space.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Result<Route, RouteError> {
        route("GET", path)
    }

    #[test]
    fn discovery_paths_route_to_their_documents() {
        assert_eq!(get("/version"), Ok(Route::Version));
        assert_eq!(get("/api"), Ok(Route::Api));
        assert_eq!(get("/apis/"), Ok(Route::Apis));
        for h in ["/healthz", "/livez", "/readyz"] {
            assert_eq!(get(h), Ok(Route::Health));
        }
        assert_eq!(
            get("/apis/apps/v1"),
            Ok(Route::Resources {
                group_version: "apps/v1".into()
            })
        );
        assert_eq!(get("/apis/apps/v2"), Err(RouteError::NotFound));
        assert_eq!(get("/apis/batch/v1"), Err(RouteError::NotFound));
        assert_eq!(get("/"), Err(RouteError::NotFound));
    }

    #[test]
    fn resource_paths_route_to_get_and_list() {
        assert_eq!(
            get("/api/v1/namespaces/default/pods"),
            Ok(Route::List {
                kind: Kind::Pod,
                namespace: Some("default".into())
            })
        );
        assert_eq!(
            get("/api/v1/pods"),
            Ok(Route::List {
                kind: Kind::Pod,
                namespace: None
            })
        );
        assert_eq!(
            get("/api/v1/namespaces/shop/pods/web"),
            Ok(Route::Get {
                kind: Kind::Pod,
                namespace: Some("shop".into()),
                name: "web".into()
            })
        );
        assert_eq!(
            get("/api/v1/namespaces/shop"),
            Ok(Route::Get {
                kind: Kind::Namespace,
                namespace: None,
                name: "shop".into()
            })
        );
        assert_eq!(
            get("/api/v1/nodes/node1"),
            Ok(Route::Get {
                kind: Kind::Node,
                namespace: None,
                name: "node1".into()
            })
        );
        assert_eq!(
            get("/apis/apps/v1/namespaces/kube-system/deployments"),
            Ok(Route::List {
                kind: Kind::Deployment,
                namespace: Some("kube-system".into())
            })
        );
        assert_eq!(
            get("/apis/discovery.k8s.io/v1/endpointslices"),
            Ok(Route::List {
                kind: Kind::EndpointSlice,
                namespace: None
            })
        );
    }

    #[test]
    fn wrong_groups_shapes_and_methods_are_refused() {
        // deployments are apps/v1, not core
        assert_eq!(get("/api/v1/deployments"), Err(RouteError::NotFound));
        // a namespaced kind has no cluster-wide path by name
        assert_eq!(get("/api/v1/pods/web"), Err(RouteError::NotFound));
        // a cluster-scoped kind has no namespaced path
        assert_eq!(get("/api/v1/namespaces/a/nodes"), Err(RouteError::NotFound));
        assert_eq!(
            get("/api/v1/namespaces/a/pods/web/log"),
            Err(RouteError::NotFound)
        );
        assert_eq!(get("/api/v1/widgets"), Err(RouteError::NotFound));
        assert_eq!(
            route("POST", "/api/v1/pods"),
            Err(RouteError::MethodNotAllowed),
            "a namespaced kind is created in its namespace"
        );
        assert_eq!(
            route("POST", "/api/v1/namespaces/default/pods"),
            Ok(Route::Create {
                kind: Kind::Pod,
                namespace: Some("default".into())
            })
        );
        assert_eq!(
            route("POST", "/api/v1/namespaces"),
            Ok(Route::Create {
                kind: Kind::Namespace,
                namespace: None
            })
        );
        assert_eq!(
            route("PUT", "/api/v1/namespaces/default/pods/a"),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            route("DELETE", "/api/v1/nowhere"),
            Err(RouteError::NotFound)
        );
    }

    #[test]
    fn query_decodes_selectors_and_go_booleans() {
        let q = query("&limit=500&labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=True")
            .unwrap_or_default();
        assert_eq!(q.label_selector.as_deref(), Some("app=web,tier in (a)"));
        assert!(q.watch);
        assert!(!query("watch=false").unwrap_or_default().watch);
        assert!(query("labelSelector=%zz").is_err());
        assert_eq!(query(""), Ok(Query::default()));
    }
}
