//! The server over a real etcd (skipped without one, a failure under `REQUIRE_NETNS=1`):
//! lists carry the store's revisions, a watch from a list's revision sees later writes made
//! through the registry, a watch from `0` starts with the current state, DELETE goes through
//! the registry.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use testkit::{TempDir, start_etcd};

use super::*;

async fn start(endpoint: &str) -> (store::EtcdStore, u16) {
    let store = store::EtcdStore::connect(&[endpoint.to_string()], crate::client::PREFIX)
        .await
        .expect("connect");
    crate::api::ensure_builtin_namespaces(&store)
        .await
        .expect("namespaces");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(serve(listener, store.clone()));
    (store, port)
}

/// GET `path`; the status and a receiver of the body's chunks.
async fn get(port: u16, path: &str) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Bytes>) {
    send(port, "GET", path, "").await
}

/// Any request; the status and a receiver of the body's chunks.
async fn send(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Bytes>) {
    let stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let code = resp.status().as_u16();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut body = resp.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data()
                && tx.send(data).is_err()
            {
                return;
            }
        }
    });
    (code, rx)
}

async fn get_json(port: u16, path: &str) -> (u16, Value) {
    send_json(port, "GET", path, "").await
}

async fn send_json(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (code, mut rx) = send(port, method, path, body).await;
    let mut all = Vec::new();
    while let Some(b) = rx.recv().await {
        all.extend_from_slice(&b);
    }
    (code, serde_json::from_slice(&all).expect("json body"))
}

/// Watch events until `want` of them arrived (5 s at most).
async fn events(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Bytes>, want: usize) -> Vec<Value> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < want {
        let chunk = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {want} events: {out:?}", out.len()))
            .expect("stream open");
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            out.push(serde_json::from_slice(&line).expect("event is JSON"));
        }
    }
    out
}

fn namespace(name: &str) -> Vec<model::Object> {
    model::parse_manifests(
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{team: a}}\n"
        ),
        "ns.yaml",
    )
    .expect("manifest")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn lists_and_watches_follow_the_store_revisions() {
    let dir = TempDir::new("lab-apiserver");
    let Some(etcd) = start_etcd(dir.path()) else {
        return;
    };
    rt().block_on(async {
        let (store, port) = start(&etcd.endpoint).await;
        let (code, list) = get_json(port, "/api/v1/namespaces").await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(list["kind"], "NamespaceList");
        let rv: i64 = list["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("list resourceVersion");
        let names: Vec<&str> = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|n| n["metadata"]["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["default", "kube-system"]);
        for item in list["items"].as_array().expect("items") {
            let item_rv: i64 = item["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("item resourceVersion");
            assert!(item_rv <= rv, "{item}");
        }

        // a watch from the list's revision, with a selector
        let (code, mut w) = get(
            port,
            &format!("/api/v1/namespaces?watch=true&labelSelector=team%3Da&resourceVersion={rv}"),
        )
        .await;
        assert_eq!(code, 200);
        crate::api::apply(&store, namespace("shop"))
            .await
            .expect("apply");
        crate::api::label(
            &store,
            model::Kind::Namespace,
            None,
            "shop",
            &[("tier".into(), Some("x".into()))],
        )
        .await
        .expect("label");
        crate::api::delete(
            &store,
            model::Kind::Namespace,
            None,
            "shop",
            crate::api::DeleteOptions::default(),
        )
        .await
        .expect("delete");
        let ev = events(&mut w, 3).await;
        let types: Vec<&str> = ev
            .iter()
            .map(|e| e["type"].as_str().expect("type"))
            .collect();
        assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"], "{ev:?}");
        assert!(ev.iter().all(|e| e["object"]["metadata"]["name"] == "shop"));
        let revs: Vec<i64> = ev
            .iter()
            .map(|e| {
                e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("event resourceVersion")
            })
            .collect();
        assert!(
            revs.windows(2).all(|p| p[0] < p[1]) && revs[0] > rv,
            "{revs:?}"
        );

        // from "0": the current state as ADDED first
        let (_, mut w0) = get(
            port,
            "/api/v1/namespaces?watch=1&resourceVersion=0&timeoutSeconds=1",
        )
        .await;
        let ev = events(&mut w0, 2).await;
        assert!(ev.iter().all(|e| e["type"] == "ADDED"), "{ev:?}");
        // timeoutSeconds ends the stream
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while w0.recv().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the watch ends after timeoutSeconds");

        // DELETE goes through the registry: gone at once is a Success Status, then NotFound
        crate::api::apply(&store, namespace("gone"))
            .await
            .expect("apply");
        let (code, s) = send_json(
            port,
            "DELETE",
            "/api/v1/namespaces/gone",
            r#"{"propagationPolicy":"Background"}"#,
        )
        .await;
        assert_eq!((code, s["status"].as_str()), (200, Some("Success")), "{s}");
        let (code, s) = send_json(port, "DELETE", "/api/v1/namespaces/gone", "").await;
        assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")), "{s}");
        let (code, s) = send_json(port, "DELETE", "/api/v1/namespaces/default", "{").await;
        assert_eq!(code, 400, "a malformed DeleteOptions body: {s}");
        assert!(
            crate::api::get(&store, model::Kind::Namespace, None, Some("default"))
                .await
                .is_ok(),
            "nothing was deleted on a bad request"
        );

        // POST creates through the registry: 201 with the stored object, then 409
        let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},"spec":{"nodeName":"node1","containers":[{"name":"c"}]}}"#;
        let (code, v) = send_json(port, "POST", "/api/v1/namespaces/default/pods", pod).await;
        assert_eq!(code, 201, "{v}");
        assert_eq!(v["metadata"]["namespace"], "default");
        assert!(v["metadata"]["uid"].is_string(), "registry defaulting: {v}");
        let (code, s) = send_json(port, "POST", "/api/v1/namespaces/default/pods", pod).await;
        assert_eq!((code, s["reason"].as_str()), (409, Some("AlreadyExists")), "{s}");
        let (code, s) = send_json(port, "POST", "/api/v1/namespaces/nowhere/pods", pod).await;
        assert_eq!(code, 422, "a missing namespace: {s}");

        // a missing object is a NotFound Status
        let (code, s) = get_json(port, "/api/v1/namespaces/default/pods/nope").await;
        assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")));
    });
}
