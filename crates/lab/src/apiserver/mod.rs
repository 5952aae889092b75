//! The lab's Kubernetes API server (issue 15): the REST API kubectl and client libraries speak,
//! over the lab's one registry ([`crate::api`]). This slice serves discovery, health, get, list
//! and watch (label and field selectors, Tables), create and delete over plain HTTP on
//! `127.0.0.1`; design.md §11 "Issue 15" has the plan for the rest (update, patch, HTTPS).
//!
//! # Layout
//! - `route`: method + path + query to a [`route::Route`] (pure).
//! - `discovery`: `/version`, `/api`, `/apis`, the resource lists, from [`model::Kind`] (pure).
//! - `filter`: `labelSelector` and `fieldSelector` (pure).
//! - `encode`: lists and objects with `resourceVersion`, `Status` errors (pure).
//! - this file: [`plan`] (pure: what a request gets, before any store read), the daemon
//!   (`flatnet lab apiserver`): port file, kubeconfig, hyper serving.
//!
//! The server must not decode, default or validate objects itself: every read and write goes
//! through [`crate::api`], which `flatnet apply/get/delete/label` use too.

pub mod discovery;
pub mod encode;
pub mod filter;
pub mod route;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::channel::{Channel, Sender};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::names::Lab;
use route::{Route, RouteError};

/// Why the API server could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The listening socket could not be bound.
    #[error("bind the API server to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the lab's state (port file, kubeconfig) could not be read or written.
    #[error("{path}: {source}")]
    StateFile {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server did not answer `/healthz` in time.
    #[error("the API server of lab {lab} did not answer /healthz within {timeout:?}")]
    NotReady {
        /// The lab's name.
        lab: String,
        /// How long was waited.
        timeout: Duration,
    },
    /// Accepting a connection failed.
    #[error("accept on {addr}: {source}")]
    Accept {
        /// The listening address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

fn state_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ApiServerError + '_ {
    move |source| ApiServerError::StateFile {
        path: path.display().to_string(),
        source,
    }
}

/// The port recorded by the first start of the lab's API server, if any.
pub fn recorded_port(lab: &Lab) -> Option<u16> {
    std::fs::read_to_string(lab.apiserver_port_file())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Binds the API server's socket on loopback: the recorded port (so a restart keeps the
/// kubeconfig valid), else an ephemeral one, which is then recorded.
pub async fn bind(lab: &Lab) -> Result<TcpListener, ApiServerError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, recorded_port(lab).unwrap_or(0)));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ApiServerError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ApiServerError::Bind { addr, source })?;
    let path = lab.apiserver_port_file();
    std::fs::write(&path, local.port().to_string()).map_err(state_err(&path))?;
    Ok(listener)
}

/// The kubeconfig for a server on `port` (YAML; one cluster, user and context named after the
/// lab, namespace `default`).
pub fn kubeconfig(lab: &Lab, port: u16) -> String {
    let n = format!("flatnet-{}", lab.name);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: {n}\n  context:\n    cluster: {n}\n    user: {n}\n    namespace: default\ncurrent-context: {n}\nusers:\n- name: {n}\n  user: {{}}\npreferences: {{}}\n"
    )
}

/// Waits until the lab's API server answers `/healthz` (its port file written and the store
/// connected), then writes the kubeconfig; returns the port.
pub async fn wait_ready_and_write_kubeconfig(
    lab: &Lab,
    timeout: Duration,
) -> Result<u16, ApiServerError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(port) = recorded_port(lab)
            && healthz(port).await
        {
            let path = lab.kubeconfig();
            std::fs::write(&path, kubeconfig(lab, port)).map_err(state_err(&path))?;
            return Ok(port);
        }
        if Instant::now() > deadline {
            return Err(ApiServerError::NotReady {
                lab: lab.name.clone(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `GET /healthz` on the loopback port answers 200.
async fn healthz(port: u16) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<bool, std::io::Error>(
            buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200"),
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}

/// What every request handler shares.
struct State {
    store: store::EtcdStore,
    /// `127.0.0.1:PORT`, for `/api`'s `serverAddressByClientCIDRs`.
    server: String,
}

/// The daemon: binds, connects to the lab's etcd (retrying until it answers), then serves
/// until killed.
pub async fn run(lab: Lab) -> Result<(), ApiServerError> {
    let listener = bind(&lab).await?;
    let store = loop {
        match crate::client::connect(&lab).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "store not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    serve(listener, store).await
}

/// Serves HTTP/1.1 on `listener`, one task per connection.
pub async fn serve(listener: TcpListener, store: store::EtcdStore) -> Result<(), ApiServerError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ApiServerError::Accept {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            source,
        })?;
    tracing::info!(%addr, "API server listening (plain HTTP)");
    let state = Arc::new(State {
        store,
        server: addr.to_string(),
    });
    loop {
        let (io, peer) = listener
            .accept()
            .await
            .map_err(|source| ApiServerError::Accept { addr, source })?;
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Every response body: a whole one, or a watch's stream.
type Body = BoxBody<Bytes, Infallible>;

fn respond(code: u16, content_type: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn whole(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes)).boxed()
}

/// The largest request body read (DeleteOptions, later objects); more is 413.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

async fn handle(state: &Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let s = encode::status(
                413,
                "RequestEntityTooLarge",
                &format!("request body: {e}"),
                None,
            );
            return respond(
                413,
                "application/json",
                whole(serde_json::to_vec(&s).unwrap_or_default()),
            );
        }
    };
    let (code, resp) = match answer(state, &method, &path, &query, &accept, &body).await {
        Answer::Json(code, v) => (
            code,
            respond(
                code,
                "application/json",
                whole(serde_json::to_vec(&v).unwrap_or_default()),
            ),
        ),
        Answer::Raw(code, ct, body) => (code, respond(code, ct, whole(body))),
        Answer::Watch(w) => {
            let (tx, body) = Channel::<Bytes, Infallible>::new(WATCH_BUFFER);
            tokio::spawn(watch(state.clone(), *w, tx));
            (200, respond(200, "application/json", body.boxed()))
        }
    };
    tracing::debug!(%method, %path, code, "request");
    resp
}

/// Events a watch may have queued for a client that does not read; then the watch waits
/// (its store watch's own buffer then fills, and etcd holds the rest).
pub const WATCH_BUFFER: usize = 64;

/// Streams one watch until its timeout, a store error or the client going away. A store watch
/// per HTTP watch (design.md §11 "Issue 15": a shared reflector per kind comes with the load
/// work).
async fn watch(state: Arc<State>, w: WatchRequest, mut tx: Sender<Bytes, Infallible>) {
    let deadline = tokio::time::Instant::now() + w.timeout;
    let matches = |v: &Value| w.filter.matches(v);
    let as_served = |v: Value, rev: i64| {
        if w.table {
            encode::table(w.kind, vec![(v, rev)], None)
        } else {
            encode::object(v, rev)
        }
    };
    let error_event = |e: &store::StoreError, requested: i64| match e {
        store::StoreError::Compacted { revision } => encode::expired(requested, *revision),
        e => encode::status(503, "ServiceUnavailable", &e.to_string(), None),
    };
    let from = match w.after {
        Some(rv) => rv + 1,
        None => {
            let listed =
                match crate::api::list(&state.store, w.kind, w.namespace.as_deref(), None).await {
                    Ok(l) => l,
                    Err(e) => {
                        let (_, s) = encode::api_error(&e);
                        let _ = tx
                            .send_data(Bytes::from(encode::watch_event("ERROR", &s)))
                            .await;
                        return;
                    }
                };
            for (v, rev) in listed.items {
                if matches(&v) {
                    let line = encode::watch_event("ADDED", &as_served(v, rev));
                    if tx.send_data(Bytes::from(line)).await.is_err() {
                        return;
                    }
                }
            }
            listed.revision + 1
        }
    };
    let prefix = crate::api::list_prefix(w.kind, w.namespace.as_deref());
    let mut rx = match state.store.watch(&prefix, from).await {
        Ok(rx) => rx,
        Err(e) => {
            let s = error_event(&e, from - 1);
            let _ = tx
                .send_data(Bytes::from(encode::watch_event("ERROR", &s)))
                .await;
            return;
        }
    };
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = tokio::time::sleep_until(deadline) => return,
        };
        let line = match event {
            None => return,
            Some(Err(e)) => {
                // Compaction ends the watch with an in-stream 410 (clients relist); a broken
                // store watch just ends it (clients watch again from their last revision).
                if matches!(e, store::StoreError::Compacted { .. }) {
                    let _ = tx
                        .send_data(Bytes::from(encode::watch_event(
                            "ERROR",
                            &error_event(&e, from - 1),
                        )))
                        .await;
                }
                return;
            }
            Some(Ok(store::WatchEvent::Put(kv))) => {
                let Ok(v) = kv.decode::<Value>() else {
                    continue;
                };
                if !matches(&v) {
                    continue;
                }
                let t = if kv.create_revision == kv.mod_revision {
                    "ADDED"
                } else {
                    "MODIFIED"
                };
                encode::watch_event(t, &as_served(v, kv.mod_revision))
            }
            Some(Ok(store::WatchEvent::Delete { key, mod_revision })) => encode::watch_event(
                "DELETED",
                &encode::deleted_object(w.kind, &key, mod_revision),
            ),
        };
        if tx.send_data(Bytes::from(line)).await.is_err() {
            return;
        }
    }
}

/// A response before it is put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A JSON body with its HTTP code.
    Json(u16, Value),
    /// Another body: code, content type, bytes.
    Raw(u16, &'static str, Vec<u8>),
    /// A watch stream (200, one JSON event per line).
    Watch(Box<WatchRequest>),
}

/// What to do for a request, decided without the store (pure, so tests cover routing,
/// discovery and bad requests without etcd).
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Answer with this at once (discovery, health, a `Status` error).
    Answer(Answer),
    /// Read from the registry: one object (`name`) or a list filtered by `filter`.
    Read {
        /// The kind read.
        kind: model::Kind,
        /// The namespace; None for all namespaces and cluster-scoped kinds.
        namespace: Option<String>,
        /// One object by name, or None for a list.
        name: Option<String>,
        /// The parsed `labelSelector` and `fieldSelector` (empty: everything).
        filter: filter::Filter,
        /// Answer with a `meta.k8s.io/v1` Table (kubectl's `as=Table`).
        table: bool,
    },
    /// Stream changes of a list (`watch=true`).
    Watch(WatchRequest),
    /// Create one object through the registry (from the body).
    Create {
        /// Its kind.
        kind: model::Kind,
        /// The namespace from the path; None for cluster-scoped kinds.
        namespace: Option<String>,
    },
    /// Delete one object through the registry (options from the body).
    Delete {
        /// Its kind.
        kind: model::Kind,
        /// Its namespace; None for cluster-scoped kinds.
        namespace: Option<String>,
        /// `metadata.name`.
        name: String,
    },
}

/// A watch of one kind, as asked.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchRequest {
    /// The kind watched.
    pub kind: model::Kind,
    /// The namespace; None for all namespaces and cluster-scoped kinds.
    pub namespace: Option<String>,
    /// Only objects matching it are sent.
    pub filter: filter::Filter,
    /// Changes after this revision; None (`resourceVersion` unset or `0`): synthetic ADDED
    /// events for the current state first, then changes after it.
    pub after: Option<i64>,
    /// When the stream ends (`timeoutSeconds`, else [`WATCH_TIMEOUT`]).
    pub timeout: Duration,
    /// Each event's object is a one-row Table (kubectl `get -w` asks for them).
    pub table: bool,
}

/// How long a watch without `timeoutSeconds` runs (kube-apiserver picks 30-60 min at random).
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn failure(code: u16, reason: &str, message: &str) -> Answer {
    Answer::Json(code, encode::status(code, reason, message, None))
}

/// Decides what a request gets (`accept`: its `Accept` header).
pub fn plan(server: &str, method: &str, path: &str, query: &str, accept: &str) -> Plan {
    let table = encode::wants_table(accept);
    let r = match route::route(method, path) {
        Ok(r) => r,
        Err(e @ RouteError::NotFound) => {
            return Plan::Answer(failure(404, "NotFound", &e.to_string()));
        }
        Err(e @ RouteError::MethodNotAllowed) => {
            return Plan::Answer(failure(405, "MethodNotAllowed", &e.to_string()));
        }
    };
    let q = match route::query(query) {
        Ok(q) => q,
        Err(m) => return Plan::Answer(failure(400, "BadRequest", &m)),
    };
    let answer = match r {
        Route::Version => Answer::Json(200, discovery::version()),
        Route::Api => Answer::Json(200, discovery::api(server)),
        Route::Apis => Answer::Json(200, discovery::apis()),
        Route::Resources { group_version } => match discovery::resources(&group_version) {
            Some(v) => Answer::Json(200, v),
            None => failure(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        },
        Route::Health => Answer::Raw(200, "text/plain; charset=utf-8", b"ok".to_vec()),
        // An empty document: kubectl then skips client-side validation of kinds it does not
        // find (kube-api.md).
        Route::OpenApiV2 => Answer::Raw(
            200,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            Vec::new(),
        ),
        Route::OpenApiV3 => Answer::Json(200, json!({"paths": {}})),
        Route::Create { .. } | Route::Delete { .. } if q.dry_run.is_some() => failure(
            400,
            "BadRequest",
            "dryRun is not supported yet (issue 15); nothing was written",
        ),
        Route::Create { kind, namespace } => return Plan::Create { kind, namespace },
        Route::Delete {
            kind,
            namespace,
            name,
        } => {
            return Plan::Delete {
                kind,
                namespace,
                name,
            };
        }
        Route::Get { .. } if q.watch => failure(
            405,
            "MethodNotAllowed",
            "watch a list with fieldSelector=metadata.name=NAME instead (not served yet)",
        ),
        Route::Get {
            kind,
            namespace,
            name,
        } => {
            return Plan::Read {
                kind,
                namespace,
                name: Some(name),
                filter: filter::Filter::default(),
                table,
            };
        }
        Route::List { kind, namespace } => {
            let filter = match filter::Filter::parse(
                kind,
                q.label_selector.as_deref(),
                q.field_selector.as_deref(),
            ) {
                Ok(f) => f,
                Err(m) => return Plan::Answer(failure(400, "BadRequest", &m)),
            };
            if q.watch {
                let after = match q.resource_version.as_deref() {
                    None | Some("") | Some("0") => None,
                    Some(rv) => match rv.parse::<i64>() {
                        Ok(n) if n > 0 => Some(n),
                        _ => {
                            return Plan::Answer(failure(
                                400,
                                "BadRequest",
                                &format!("resourceVersion {rv:?} is not a revision"),
                            ));
                        }
                    },
                };
                return Plan::Watch(WatchRequest {
                    kind,
                    namespace,
                    filter,
                    after,
                    timeout: q.timeout_seconds.map_or(WATCH_TIMEOUT, Duration::from_secs),
                    table,
                });
            }
            return Plan::Read {
                kind,
                namespace,
                name: None,
                filter,
                table,
            };
        }
    };
    Plan::Answer(answer)
}

async fn answer(
    state: &State,
    method: &str,
    path: &str,
    query: &str,
    accept: &str,
    body: &[u8],
) -> Answer {
    let (kind, ns, name, filter, table) = match plan(&state.server, method, path, query, accept) {
        Plan::Answer(a) => return a,
        Plan::Watch(w) => return Answer::Watch(Box::new(w)),
        Plan::Delete {
            kind,
            namespace,
            name,
        } => return delete(state, kind, namespace.as_deref(), &name, body).await,
        Plan::Create { kind, namespace } => {
            return create(state, kind, namespace.as_deref(), body).await;
        }
        Plan::Read {
            kind,
            namespace,
            name,
            filter,
            table,
        } => (kind, namespace, name, filter, table),
    };
    let registry_error = |e: &crate::api::ApiError| {
        let (code, s) = encode::api_error(e);
        Answer::Json(code, s)
    };
    let mut listed =
        match crate::api::list(&state.store, kind, ns.as_deref(), name.as_deref()).await {
            Ok(l) => l,
            Err(e) => return registry_error(&e),
        };
    if kind == model::Kind::Node {
        // As `flatnet get` shows nodes: podCIDR from the subnet lease, agent annotations.
        let (mut values, revs): (Vec<Value>, Vec<i64>) = listed.items.into_iter().unzip();
        if let Err(e) = crate::api::annotate_nodes(&state.store, &mut values).await {
            return registry_error(&e);
        }
        listed.items = values.into_iter().zip(revs).collect();
    }
    if table {
        if name.is_none() {
            listed.items.retain(|(v, _)| filter.matches(v));
        }
        let rev = name.is_none().then_some(listed.revision);
        return Answer::Json(200, encode::table(kind, listed.items, rev));
    }
    if name.is_some() {
        // `api::list` by name returns exactly the one object or NotFound.
        return match listed.items.pop() {
            Some((v, rev)) => Answer::Json(200, encode::object(v, rev)),
            None => failure(500, "InternalError", "a read by name returned nothing"),
        };
    }
    listed.items.retain(|(v, _)| filter.matches(v));
    Answer::Json(200, encode::list(kind, listed))
}

/// The object a create body holds (pure): JSON of `kind`, its namespace the path's (filled in
/// when missing), parsed and validated by `model::parse_manifests` as `flatnet apply` does.
/// Errors are the answer: 400 for a body that is no such object, 422 for an invalid one.
pub fn create_body(
    kind: model::Kind,
    namespace: Option<&str>,
    body: &[u8],
) -> Result<model::Object, Answer> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| failure(400, "BadRequest", &format!("request body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(failure(
            400,
            "BadRequest",
            "request body is not a JSON object",
        ));
    }
    if v.get("kind").and_then(Value::as_str) != Some(kind.as_str()) {
        return Err(failure(
            400,
            "BadRequest",
            &format!(
                "the kind of the object ({}) does not match the resource ({})",
                v.get("kind").and_then(Value::as_str).unwrap_or("none"),
                kind.plural()
            ),
        ));
    }
    if let Some(ns) = namespace {
        match v.pointer("/metadata/namespace").and_then(Value::as_str) {
            None | Some("") => {
                if !v.get("metadata").is_some_and(Value::is_object) {
                    v["metadata"] = json!({});
                }
                v["metadata"]["namespace"] = json!(ns);
            }
            Some(given) if given != ns => {
                return Err(failure(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            Some(_) => {}
        }
    }
    let mut objects = model::parse_manifests(&v.to_string(), "request body")
        .map_err(|e| failure(422, "Invalid", &e.to_string()))?;
    match (objects.pop(), objects.is_empty()) {
        (Some(obj), true) => Ok(obj),
        _ => Err(failure(
            400,
            "BadRequest",
            "the request body must hold exactly one object",
        )),
    }
}

/// A POST through the registry (`api::create`: `flatnet apply`'s defaulting, validation and
/// allocation; 409 when the object exists). Answers 201 with the object as stored.
async fn create(state: &State, kind: model::Kind, namespace: Option<&str>, body: &[u8]) -> Answer {
    let obj = match create_body(kind, namespace, body) {
        Ok(o) => o,
        Err(a) => return a,
    };
    let name = obj.name().to_string();
    let registry_error = |e: &crate::api::ApiError| {
        let (code, s) = encode::api_error(e);
        Answer::Json(code, s)
    };
    if let Err(e) = crate::api::create(&state.store, vec![obj]).await {
        return registry_error(&e);
    }
    match crate::api::list(&state.store, kind, namespace, Some(&name)).await {
        Ok(mut l) => match l.items.pop() {
            Some((v, rev)) => Answer::Json(201, encode::object(v, rev)),
            None => failure(500, "InternalError", "the created object is gone"),
        },
        Err(e) => registry_error(&e),
    }
}

/// A DELETE through the registry (`api::delete`: a pod gracefully, a namespace with its
/// contents). Answers the object as it is now (a pod being terminated, with its
/// `deletionTimestamp`), or a Success `Status` when it is gone at once.
async fn delete(
    state: &State,
    kind: model::Kind,
    namespace: Option<&str>,
    name: &str,
    body: &[u8],
) -> Answer {
    let opts = match encode::delete_options(body) {
        Ok(o) => o,
        Err(m) => return failure(400, "BadRequest", &m),
    };
    let registry_error = |e: &crate::api::ApiError| {
        let (code, s) = encode::api_error(e);
        Answer::Json(code, s)
    };
    if let Err(e) = crate::api::delete(&state.store, kind, namespace, name, opts).await {
        return registry_error(&e);
    }
    match crate::api::list(&state.store, kind, namespace, Some(name)).await {
        Ok(mut l) => match l.items.pop() {
            Some((v, rev)) => Answer::Json(200, encode::object(v, rev)),
            None => Answer::Json(200, encode::deleted(kind, name)),
        },
        Err(crate::api::ApiError::NotFound { .. }) => {
            Answer::Json(200, encode::deleted(kind, name))
        }
        Err(e) => registry_error(&e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn answer(method: &str, path: &str, query: &str) -> Answer {
        match plan("127.0.0.1:6443", method, path, query, "application/json") {
            Plan::Answer(a) => a,
            read => panic!("{method} {path}?{query} needs the store: {read:?}"),
        }
    }

    fn json(a: Answer) -> (u16, Value) {
        match a {
            Answer::Json(code, v) => (code, v),
            other => panic!("not JSON: {other:?}"),
        }
    }

    #[test]
    fn discovery_and_health_are_answered_without_a_store() {
        let (code, v) = json(answer("GET", "/version", ""));
        assert_eq!((code, v["minor"].as_str()), (200, Some(discovery::MINOR)));
        let (_, v) = json(answer("GET", "/api", ""));
        assert_eq!(v["versions"], json!(["v1"]));
        assert_eq!(
            v["serverAddressByClientCIDRs"][0]["serverAddress"],
            "127.0.0.1:6443"
        );
        let (_, v) = json(answer("GET", "/apis", ""));
        assert_eq!(v["kind"], "APIGroupList");
        let (code, v) = json(answer("GET", "/apis/networking.k8s.io/v1", ""));
        assert_eq!(
            (code, v["groupVersion"].as_str()),
            (200, Some("networking.k8s.io/v1"))
        );
        assert_eq!(
            answer("GET", "/readyz", ""),
            Answer::Raw(200, "text/plain; charset=utf-8", b"ok".to_vec())
        );
        let (code, v) = json(answer("GET", "/openapi/v3", ""));
        assert_eq!((code, v), (200, json!({"paths": {}})));
    }

    #[test]
    fn reads_go_to_the_registry_with_their_selector() {
        let Plan::Read {
            kind,
            namespace,
            name,
            filter,
            table,
        } = plan(
            "x",
            "GET",
            "/api/v1/namespaces/default/pods",
            "limit=500&labelSelector=app%3Dweb",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        else {
            panic!("a list is a read")
        };
        assert_eq!(kind, model::Kind::Pod);
        assert_eq!(namespace.as_deref(), Some("default"));
        assert_eq!(name, None);
        assert!(table, "kubectl's Accept asks for a Table");
        assert!(filter.matches(&json!({"metadata": {"name": "a", "labels": {"app": "web"}}})));
        assert!(!filter.matches(&json!({"metadata": {"name": "a"}})));
        let Plan::Read { name, .. } = plan("x", "GET", "/api/v1/nodes/node1", "", "") else {
            panic!("a get is a read")
        };
        assert_eq!(name.as_deref(), Some("node1"));
    }

    #[test]
    fn watches_are_planned_with_their_start_revision_and_timeout() {
        let Plan::Watch(w) = plan(
            "x",
            "GET",
            "/apis/apps/v1/namespaces/shop/deployments",
            "watch=true&resourceVersion=41&timeoutSeconds=290&allowWatchBookmarks=true",
            "application/json",
        ) else {
            panic!("a watch")
        };
        assert_eq!(w.kind, model::Kind::Deployment);
        assert_eq!(w.namespace.as_deref(), Some("shop"));
        assert_eq!(w.after, Some(41));
        assert_eq!(w.timeout, Duration::from_secs(290));
        // "0" and unset: the current state first (synthetic ADDED), then changes
        for q in ["watch=1&resourceVersion=0", "watch=True"] {
            let Plan::Watch(w) = plan("x", "GET", "/api/v1/pods", q, "") else {
                panic!("a watch: {q}")
            };
            assert_eq!((w.after, w.timeout), (None, WATCH_TIMEOUT), "{q}");
        }
    }

    #[test]
    fn bad_requests_are_status_objects() {
        let (code, s) = json(answer("GET", "/apis/batch/v1/jobs", ""));
        assert_eq!(code, 404);
        assert_eq!(
            (s["kind"].as_str(), s["reason"].as_str(), s["code"].as_u64()),
            (Some("Status"), Some("NotFound"), Some(404))
        );
        let (code, s) = json(answer("PUT", "/api/v1/namespaces/default/pods/a", ""));
        assert_eq!(
            (code, s["reason"].as_str()),
            (405, Some("MethodNotAllowed"))
        );
        let (code, s) = json(answer("GET", "/api/v1/pods", "labelSelector=app%20in%20("));
        assert_eq!(code, 400);
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains("invalid label selector"),
            "{s}"
        );
        let (code, _) = json(answer("GET", "/api/v1/pods", "watch=1&resourceVersion=abc"));
        assert_eq!(code, 400, "a resourceVersion that is no revision");
        let (code, _) = json(answer("GET", "/api/v1/pods", "watch=1&timeoutSeconds=x"));
        assert_eq!(code, 400);
        let (code, _) = json(answer("GET", "/api/v1/pods", "labelSelector=%zz"));
        assert_eq!(code, 400);
        let (code, s) = json(answer(
            "GET",
            "/api/v1/services",
            "fieldSelector=spec.nodeName%3Dx",
        ));
        assert_eq!(code, 400);
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains("field label not supported"),
            "{s}"
        );
    }

    #[test]
    fn create_bodies_take_the_paths_namespace_and_are_validated() {
        let pod = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},"spec":{"containers":[{"name":"c"}]}}"#;
        let obj = create_body(model::Kind::Pod, Some("shop"), pod).unwrap();
        assert_eq!((obj.namespace(), obj.name()), (Some("shop"), "web"));
        let code = |r: Result<model::Object, Answer>| match r {
            Err(Answer::Json(code, _)) => code,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            code(create_body(model::Kind::Service, Some("shop"), pod)),
            400,
            "kind"
        );
        let elsewhere = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"x"},"spec":{"containers":[{"name":"c"}]}}"#;
        assert_eq!(
            code(create_body(model::Kind::Pod, Some("shop"), elsewhere)),
            400,
            "namespace"
        );
        assert_eq!(
            code(create_body(model::Kind::Pod, Some("shop"), b"{")),
            400,
            "JSON"
        );
        let invalid = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"Web_1"},"spec":{"containers":[]}}"#;
        assert_eq!(
            code(create_body(model::Kind::Pod, Some("shop"), invalid)),
            422,
            "invalid"
        );
    }

    #[test]
    fn dry_runs_are_refused_until_served() {
        let (code, s) = json(answer(
            "POST",
            "/api/v1/namespaces/default/pods",
            "dryRun=All",
        ));
        assert_eq!(code, 400);
        assert!(s["message"].as_str().unwrap().contains("dryRun"), "{s}");
    }

    #[test]
    fn kubeconfig_points_at_loopback_with_one_context() {
        let lab = Lab::new("lab").unwrap();
        let k = kubeconfig(&lab, 41234);
        assert!(k.contains("server: http://127.0.0.1:41234\n"), "{k}");
        assert!(k.contains("current-context: flatnet-lab\n"), "{k}");
    }
}

#[cfg(test)]
mod store_tests;
