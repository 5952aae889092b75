//! [`EtcdStore`]: the [`Store`] over etcd v3 through `etcd-client`.
//!
//! Every request runs under [`REQUEST_TIMEOUT`] here, not only tonic's, because while etcd is
//! down the client's load balancer queues requests without a deadline. Errors are mapped once,
//! in [`map_error`], to what the caller should do: retry, relist, or give up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    ResponseHeader, Txn, TxnOp, WatchOptions, WatchResponse,
};
use tokio::sync::mpsc;

use crate::{KeyValue, Store, StoreError, WATCH_BUFFER, WatchEvent, WatchReceiver, prefix_end};

/// Limit for establishing the connection in [`EtcdStore::connect`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Limit for every request; past it the call returns [`StoreError::Unavailable`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on open streams, so a watch on a dead connection breaks instead of hanging.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per range request when listing; keeps each response far below the 4 MiB gRPC limit.
const LIST_PAGE: i64 = 500;
/// A compaction between two pages of one listing restarts it; give up after this many.
const LIST_ATTEMPTS: usize = 3;

/// [`Store`] over a real etcd cluster. Clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// Prepended to every key, e.g. `/flatnet/`.
    prefix: Arc<str>,
    endpoints: Arc<[String]>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connect and check that the server answers (within [`CONNECT_TIMEOUT`]). `prefix` gets a
    /// trailing `/` unless empty. An unreachable server is [`StoreError::Unavailable`]; the
    /// client reconnects by itself later, so a store that connected once stays usable.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Invalid("connect: no etcd endpoints".into()));
        }
        let what = endpoints.join(",");
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT);
        let client = within(
            CONNECT_TIMEOUT,
            "connect",
            &what,
            Client::connect(endpoints, Some(options)),
        )
        .await?;
        let mut prefix = prefix.to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let store = EtcdStore {
            client,
            prefix: prefix.into(),
            endpoints: endpoints.into(),
        };
        let mut kv = store.client.kv_client();
        let (key, _) = store.range("");
        within(
            CONNECT_TIMEOUT,
            "connect",
            &what,
            kv.get(key, Some(GetOptions::new().with_count_only())),
        )
        .await?;
        tracing::debug!(endpoints = %what, prefix = %store.prefix, "connected to etcd");
        Ok(store)
    }

    /// The prefix every key is stored under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Compact the whole keyspace (not only this prefix) up to `revision`, waiting until it
    /// is applied; watches from older revisions then end with [`StoreError::Compacted`].
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let options = etcd_client::CompactionOptions::new().with_physical();
        call(
            "compact",
            &format!("revision {revision}"),
            kv.compact(revision, Some(options)),
        )
        .await?;
        Ok(())
    }

    /// `op` on `key` only if its mod_revision is `expected_mod_revision`; the new revision, or
    /// [`StoreError::Conflict`].
    async fn txn_if(
        &self,
        what: &str,
        key: &str,
        expected_mod_revision: i64,
        op: TxnOp,
    ) -> Result<i64, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.full(key),
                CompareOp::Equal,
                expected_mod_revision,
            )])
            .and_then([op]);
        let mut kv = self.client.kv_client();
        let resp = call(what, key, kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(StoreError::Conflict {
                key: key.to_owned(),
            });
        }
        revision_of(resp.header(), what, key)
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// Start key and range end covering every key under `prefix`.
    fn range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let start = self.full(prefix);
        if start.is_empty() {
            return (vec![0], vec![0]);
        }
        let end = prefix_end(&start);
        (start, end)
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: relative(&self.prefix, kv.key()),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

fn relative(prefix: &str, key: &[u8]) -> String {
    let key = key.strip_prefix(prefix.as_bytes()).unwrap_or(key);
    String::from_utf8_lossy(key).into_owned()
}

fn require_key(op: &str, key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid(format!("{op}: empty key")));
    }
    Ok(())
}

fn revision_of(header: Option<&ResponseHeader>, op: &str, key: &str) -> Result<i64, StoreError> {
    header
        .map(ResponseHeader::revision)
        .ok_or_else(|| StoreError::Other(format!("{op} {key}: response without header")))
}

/// Run one etcd request under [`REQUEST_TIMEOUT`], mapping its error.
async fn call<T>(
    op: &str,
    key: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    within(REQUEST_TIMEOUT, op, key, request).await
}

async fn within<T>(
    limit: Duration,
    op: &str,
    key: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(map_error(op, key, err)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "{}: no answer from etcd within {}s",
            describe(op, key),
            limit.as_secs()
        ))),
    }
}

fn describe(op: &str, key: &str) -> String {
    if key.is_empty() {
        op.to_owned()
    } else {
        format!("{op} {key}")
    }
}

// gRPC status codes (tonic::Code, named here without depending on tonic).
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const INVALID_ARGUMENT: i32 = 3;
const DEADLINE_EXCEEDED: i32 = 4;
const NOT_FOUND: i32 = 5;
const ALREADY_EXISTS: i32 = 6;
const RESOURCE_EXHAUSTED: i32 = 8;
const FAILED_PRECONDITION: i32 = 9;
const ABORTED: i32 = 10;
const OUT_OF_RANGE: i32 = 11;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;

/// The one place etcd errors become [`StoreError`]s: transport trouble and server-side
/// timeouts are `Unavailable` (retry), a compacted revision is `Compacted` (relist), requests
/// etcd refuses as such are `Invalid`.
fn map_error(op: &str, key: &str, err: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    let what = describe(op, key);
    match err {
        E::GRpcStatus(status) => {
            let msg = format!("{what}: {}", status.message());
            match status.code() as i32 {
                CANCELLED | UNKNOWN | DEADLINE_EXCEEDED | RESOURCE_EXHAUSTED | ABORTED
                | INTERNAL | UNAVAILABLE => StoreError::Unavailable(msg),
                OUT_OF_RANGE if status.message().contains("compacted") => {
                    StoreError::Compacted { revision: 0 }
                }
                INVALID_ARGUMENT | NOT_FOUND | ALREADY_EXISTS | FAILED_PRECONDITION
                | OUT_OF_RANGE => StoreError::Invalid(msg),
                _ => StoreError::Other(msg),
            }
        }
        E::TransportError(e) => StoreError::Unavailable(format!("{what}: {e}")),
        E::IoError(e) => StoreError::Unavailable(format!("{what}: {e}")),
        E::WatchError(e) | E::LeaseKeepAliveError(e) => {
            StoreError::Unavailable(format!("{what}: {e}"))
        }
        E::InvalidArgs(e) | E::EndpointError(e) => StoreError::Invalid(format!("{what}: {e}")),
        E::InvalidUri(e) => StoreError::Invalid(format!("{what}: {e}")),
        other => StoreError::Other(format!("{what}: {other}")),
    }
}

fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() as i32 == NOT_FOUND && s.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        _ => false,
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        require_key("get", key)?;
        let mut kv = self.client.kv_client();
        let resp = call("get", key, kv.get(self.full(key), None)).await?;
        Ok(resp.kvs().first().map(|kv| self.key_value(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let (first, end) = self.range(prefix);
        let mut kv = self.client.kv_client();
        let mut attempt = 0;
        'listing: loop {
            attempt += 1;
            let mut out = Vec::new();
            let mut start = first.clone();
            // Pages after the first read at the first page's revision: one consistent snapshot.
            let mut revision = 0;
            loop {
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(LIST_PAGE);
                if revision != 0 {
                    options = options.with_revision(revision);
                }
                let resp = match call("list", prefix, kv.get(start.clone(), Some(options))).await {
                    Ok(resp) => resp,
                    Err(StoreError::Compacted { .. }) if attempt < LIST_ATTEMPTS => {
                        tracing::debug!(prefix, revision, "listing compacted midway, restarting");
                        continue 'listing;
                    }
                    Err(StoreError::Compacted { .. }) => {
                        return Err(StoreError::Unavailable(format!(
                            "list {prefix}: compacted while listing, {LIST_ATTEMPTS} times"
                        )));
                    }
                    Err(e) => return Err(e),
                };
                if revision == 0 {
                    revision = revision_of(resp.header(), "list", prefix)?;
                }
                out.extend(resp.kvs().iter().map(|kv| self.key_value(kv)));
                match resp.kvs().last() {
                    Some(last) if resp.more() => {
                        start = last.key().to_vec();
                        start.push(0);
                    }
                    _ => return Ok((out, revision)),
                }
            }
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        require_key("put", key)?;
        let mut kv = self.client.kv_client();
        let resp = call("put", key, kv.put(self.full(key), value, None)).await?;
        revision_of(resp.header(), "put", key)
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: i64,
    ) -> Result<i64, StoreError> {
        require_key("put_if", key)?;
        let full = self.full(key);
        self.txn_if(
            "put_if",
            key,
            expected_mod_revision,
            TxnOp::put(full, value, None),
        )
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<bool, StoreError> {
        require_key("create", key)?;
        let full = self.full(key);
        let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value, options)]);
        let mut kv = self.client.kv_client();
        let resp = call("create", key, kv.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        require_key("delete", key)?;
        let mut kv = self.client.kv_client();
        let resp = call("delete", key, kv.delete(self.full(key), None)).await?;
        Ok(resp.deleted() > 0)
    }

    async fn delete_if(&self, key: &str, expected_mod_revision: i64) -> Result<i64, StoreError> {
        require_key("delete_if", key)?;
        if expected_mod_revision == 0 {
            // 0 would mean "absent", and deleting an absent key is no delete.
            return Err(StoreError::Conflict {
                key: key.to_owned(),
            });
        }
        let full = self.full(key);
        self.txn_if(
            "delete_if",
            key,
            expected_mod_revision,
            TxnOp::delete(full, None),
        )
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let (start, end) = self.range(prefix);
        let options = DeleteOptions::new().with_range(end);
        let mut kv = self.client.kv_client();
        let resp = call("delete_prefix", prefix, kv.delete(start, Some(options))).await?;
        Ok(resp.deleted().unsigned_abs())
    }

    async fn grant_lease(&self, ttl_secs: i64) -> Result<i64, StoreError> {
        if ttl_secs <= 0 {
            return Err(StoreError::Invalid(format!(
                "grant lease: ttl {ttl_secs}s is not positive"
            )));
        }
        let mut leases = self.client.lease_client();
        let resp = call("grant_lease", "", leases.grant(ttl_secs, None)).await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Other(format!("grant lease: {}", resp.error())));
        }
        Ok(resp.id())
    }

    async fn keep_alive_once(&self, lease: i64) -> Result<i64, StoreError> {
        let mut leases = self.client.lease_client();
        let name = format!("lease {lease:x}");
        let renew = async move {
            // Opening the stream sends one keep-alive and swallows its answer; a second one on
            // the same stream reports the TTL.
            let (mut keeper, mut stream) = match leases.keep_alive(lease).await {
                Ok(pair) => pair,
                Err(e) if is_lease_not_found(&e) => return Ok(0),
                Err(e) => return Err(e),
            };
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(resp) => Ok(resp.ttl()),
                None => Err(etcd_client::Error::LeaseKeepAliveError(
                    "keep-alive stream closed".into(),
                )),
            }
        };
        call("keep_alive", &name, renew).await
    }

    async fn lease_ttl(&self, lease: i64) -> Result<(i64, i64), StoreError> {
        let mut leases = self.client.lease_client();
        let name = format!("lease {lease:x}");
        let ask = async move {
            match leases.time_to_live(lease, None).await {
                Ok(r) => Ok((r.ttl(), r.granted_ttl())),
                Err(e) if is_lease_not_found(&e) => Ok((0, 0)),
                Err(e) => Err(e),
            }
        };
        call("lease_ttl", &name, ask).await
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        let mut leases = self.client.lease_client();
        let name = format!("lease {lease:x}");
        let revoke = async move {
            match leases.revoke(lease).await {
                Err(e) if is_lease_not_found(&e) => Ok(()),
                other => other.map(drop),
            }
        };
        call("revoke_lease", &name, revoke).await
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchReceiver, StoreError> {
        let (start, end) = self.range(prefix);
        let mut options = WatchOptions::new().with_range(end);
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let mut client = self.client.watch_client();
        let stream = call("watch", prefix, client.watch(start, Some(options))).await?;
        // etcd ends the whole watch stream when its request half closes: keep the sender.
        let (requests, mut responses) = stream.split();
        // Wait for etcd to confirm the watch, so every change after this call returns is seen.
        let first = call("watch", prefix, responses.message()).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store_prefix = Arc::clone(&self.prefix);
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let _requests = requests;
            let mut next = first;
            loop {
                let Some(resp) = next else {
                    let end = StoreError::Unavailable(format!("watch {prefix}: stream closed"));
                    let _ = tx.send(Err(end)).await;
                    return;
                };
                if !forward(&store_prefix, &prefix, resp, &tx).await {
                    return;
                }
                next = tokio::select! {
                    () = tx.closed() => return,
                    msg = responses.message() => match msg {
                        Ok(msg) => msg,
                        Err(err) => {
                            // Whatever broke the stream, the remedy is to watch again.
                            let end = StoreError::Unavailable(format!("watch {prefix}: {err}"));
                            tracing::debug!(%prefix, error = %err, "etcd watch broke");
                            let _ = tx.send(Err(end)).await;
                            return;
                        }
                    },
                };
            }
        });
        Ok(rx)
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let (key, _) = self.range("");
        let mut kv = self.client.kv_client();
        let resp = call(
            "revision",
            "",
            kv.get(key, Some(GetOptions::new().with_count_only())),
        )
        .await?;
        revision_of(resp.header(), "revision", "")
    }
}

/// Pass one watch response on; false when the watch is over (ended by etcd or by the reader).
async fn forward(
    store_prefix: &str,
    prefix: &str,
    resp: WatchResponse,
    tx: &mpsc::Sender<Result<WatchEvent, StoreError>>,
) -> bool {
    if resp.compact_revision() != 0 {
        let end = StoreError::Compacted {
            revision: resp.compact_revision(),
        };
        let _ = tx.send(Err(end)).await;
        return false;
    }
    if resp.canceled() {
        let end = StoreError::Unavailable(format!(
            "watch {prefix}: canceled by etcd: {}",
            resp.cancel_reason()
        ));
        let _ = tx.send(Err(end)).await;
        return false;
    }
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let key = relative(store_prefix, kv.key());
        let event = match event.event_type() {
            EventType::Put => WatchEvent::Put(KeyValue {
                key,
                value: kv.value().to_vec(),
                mod_revision: kv.mod_revision(),
                create_revision: kv.create_revision(),
                lease: kv.lease(),
            }),
            EventType::Delete => WatchEvent::Delete {
                key,
                mod_revision: kv.mod_revision(),
            },
        };
        if tx.send(Ok(event)).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn keys_are_returned_relative_to_the_prefix() {
        assert_eq!(relative("/flatnet/", b"/flatnet/config"), "config");
        assert_eq!(relative("", b"/other/x"), "/other/x");
    }

    #[test]
    fn describe_names_the_key_when_there_is_one() {
        assert_eq!(describe("get", "config"), "get config");
        assert_eq!(describe("revision", ""), "revision");
    }
}
