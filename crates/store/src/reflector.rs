//! The one watch path every component follows the store with (kube-rs's `watcher` is the
//! model): list each prefix, then watch them all from the listing's revision, relist when the
//! watch fell behind compaction, rewatch where it stopped when it broke, and wait one
//! [`Backoff`] policy between failed attempts.
//!
//! A consumer keeps a view and takes [`Event`]s from [`Reflector::next`]:
//! - [`Event::Init`] starts a (re)listing: start a fresh view;
//! - [`Event::InitApply`] is one listed key: put it in the fresh view;
//! - [`Event::InitDone`] ends the listing: the fresh view replaces the old one (so a relist
//!   after compaction drops objects deleted meanwhile);
//! - [`Event::Apply`] and [`Event::Delete`] follow, one per change.
//!
//! A store error is returned as it is (for logs and status) and the view is kept; the next
//! call waits the backoff first, then carries on: a failed listing starts over with a new
//! [`Event::Init`], a broken watch is resumed without a relist.
//!
//! [`Batch`] says when a consumer that applies its view somewhere (the kernel, the proxy's
//! routes) should do so: [`BATCH_WINDOW`] after the last change, at once after a listing, and
//! [`RETRY`] after a failed apply.
//!
//! The source is a [`ListWatch`], implemented for every [`Store`]; it is the seam for a second
//! source (the Kubernetes API) behind the same reflector.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::{KeyValue, Store, StoreError, WatchEvent, WatchReceiver};

/// How long a consumer waits for more events before it applies a batch of them.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// How long a consumer waits before it tries a failed apply again.
pub const RETRY: Duration = Duration::from_secs(1);

/// Where a [`Reflector`] reads from: a listing with its revision, and a watch from a revision.
/// Every [`Store`] is one.
pub trait ListWatch {
    /// Every key under `prefix`, and the revision the listing was read at.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<(Vec<KeyValue>, i64), StoreError>> + Send;

    /// Changes under `prefix` from `from_revision` on, in order, ending with at most one error
    /// ([`StoreError::Compacted`]: relist; another: resume from the last revision seen).
    fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> impl Future<Output = Result<WatchReceiver, StoreError>> + Send;
}

impl<S: Store> ListWatch for S {
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<(Vec<KeyValue>, i64), StoreError>> + Send {
        Store::list(self, prefix)
    }

    fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> impl Future<Output = Result<WatchReceiver, StoreError>> + Send {
        Store::watch(self, prefix, from_revision)
    }
}

/// What a [`Reflector`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A listing starts: collect the following [`Event::InitApply`] into a fresh view.
    Init,
    /// One key of the listing.
    InitApply(KeyValue),
    /// The listing is complete: replace the view with the fresh one.
    InitDone {
        /// Revision of the last prefix's listing. Changes after the first prefix's listing
        /// follow as [`Event::Apply`]/[`Event::Delete`], so some may repeat what was listed.
        revision: i64,
    },
    /// A key was written.
    Apply(KeyValue),
    /// A key was deleted.
    Delete {
        /// The deleted key.
        key: String,
        /// Revision of the deletion.
        revision: i64,
    },
}

impl Event {
    /// The change as the store's [`WatchEvent`], for views that take those: a listed or
    /// written key is a put, a deletion a delete; `None` for [`Event::Init`] and
    /// [`Event::InitDone`].
    pub fn into_change(self) -> Option<WatchEvent> {
        match self {
            Event::InitApply(kv) | Event::Apply(kv) => Some(WatchEvent::Put(kv)),
            Event::Delete { key, revision } => Some(WatchEvent::Delete {
                key,
                mod_revision: revision,
            }),
            Event::Init | Event::InitDone { .. } => None,
        }
    }
}

/// The one retry policy for the store: 200 ms after the first failure, doubling up to 5 s,
/// back to 200 ms after a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// First wait after a failure.
    pub const MIN: Duration = Duration::from_millis(200);
    /// Longest wait.
    pub const MAX: Duration = Duration::from_secs(5);

    /// A policy that has seen no failure yet.
    pub fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// The wait after one more failure; the one after it is twice as long, up to [`Self::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// A success: the next failure waits [`Self::MIN`] again.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a watch of one prefix resumes.
#[derive(Debug, Clone, Copy)]
struct Resume {
    /// Revision of the last change delivered (or the first listing's, before any).
    revision: i64,
    /// How many changes of `revision` were delivered (one revision can change many keys);
    /// 0 when `revision` is known to be complete.
    delivered: usize,
    /// How many changes of `revision` the current watch will repeat, to be dropped.
    skip: usize,
}

impl Resume {
    fn after_listing(revision: i64) -> Self {
        Resume {
            revision,
            delivered: 0,
            skip: 0,
        }
    }

    /// Revision to watch from: past the last change delivered; at it when its revision may
    /// be cut (a watch dropped while it was handing out a revision changing several keys),
    /// so the rest of that revision is not lost, the part already delivered being skipped.
    fn rewatch_from(&mut self) -> i64 {
        self.skip = self.delivered;
        if self.delivered > 0 {
            self.revision
        } else {
            self.revision + 1
        }
    }

    /// Whether to deliver a change at `revision` from the current watch.
    fn take(&mut self, revision: i64) -> bool {
        if self.skip > 0 && revision == self.revision {
            self.skip -= 1;
            return false;
        }
        self.skip = 0;
        if revision == self.revision {
            self.delivered += 1;
        } else {
            self.revision = revision;
            self.delivered = 1;
        }
        true
    }
}

enum Phase {
    /// Listing `prefixes[index]`, or handing out `items`, the rest of its listing.
    Listing {
        index: usize,
        items: Option<std::vec::IntoIter<KeyValue>>,
        /// Revision of the first prefix's listing: every watch starts after it.
        first: Option<i64>,
        last: i64,
    },
    /// Following the watches; a `None` watch is (re)started from its `resume` before polling.
    Watching {
        watches: Vec<Option<WatchReceiver>>,
        resume: Vec<Resume>,
        /// Watch polled first next time, so no prefix starves the others.
        turn: usize,
    },
}

impl Phase {
    fn relist() -> Self {
        Phase::Listing {
            index: 0,
            items: None,
            first: None,
            last: 0,
        }
    }
}

/// Lists and watches a set of prefixes of a [`ListWatch`], as [`Event`]s.
///
/// # Cancel safety
/// [`next`](Self::next) is cancel-safe: all its state is in the struct, and it changes only
/// once an awaited step completed, so dropping the future (a `tokio::select!` taking another
/// branch) loses no event; the next call resumes where the dropped one was (a listing or
/// watch request cut short is sent again, a backoff wait keeps its deadline).
pub struct Reflector<L> {
    source: L,
    prefixes: Vec<String>,
    phase: Phase,
    backoff: Backoff,
    /// After an error: the next call waits until then.
    retry_at: Option<Instant>,
}

impl<L> std::fmt::Debug for Reflector<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.phase {
            Phase::Listing { index, .. } => format!("listing prefix {index}"),
            Phase::Watching { .. } => "watching".to_string(),
        };
        f.debug_struct("Reflector")
            .field("prefixes", &self.prefixes)
            .field("phase", &phase)
            .field("backoff", &self.backoff)
            .field("retry_at", &self.retry_at)
            .finish()
    }
}

impl<L: ListWatch> Reflector<L> {
    /// A reflector over `prefixes`, listed in this order. Nothing is read before the first
    /// [`next`](Self::next).
    pub fn new(source: L, prefixes: &[&str]) -> Self {
        Reflector {
            source,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            phase: Phase::relist(),
            backoff: Backoff::new(),
            retry_at: None,
        }
    }

    /// The next event. After an error it first waits the backoff. Lists one prefix at a time
    /// and hands its keys out before listing the next (one listing held at once); watches
    /// every prefix from the first listing's revision plus one.
    ///
    /// Never returns [`StoreError::Compacted`]: a watch behind compaction is followed by a
    /// relist ([`Event::Init`]) at once. Other errors are returned; the call after one
    /// retries what failed.
    pub async fn next(&mut self) -> Result<Event, StoreError> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
        }
        let result = self.step().await;
        if result.is_err() {
            self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        }
        result
    }

    /// How long the next [`next`](Self::next) waits before it tries again (zero when it does
    /// not wait), for logs.
    pub fn retry_in(&self) -> Duration {
        self.retry_at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }

    /// Starts over with a new listing at the next call, dropping the watches (a consumer that
    /// re-lists on a timer, as the agent does for its subnet leases).
    pub fn relist(&mut self) {
        self.phase = Phase::relist();
    }

    /// The consumer could not use what it was given (a companion read at [`Event::InitDone`]
    /// failed): start over with a new listing after the backoff. Returns the wait, for logs.
    pub fn relist_after_error(&mut self) -> Duration {
        self.phase = Phase::relist();
        let delay = self.backoff.next_delay();
        self.retry_at = Some(Instant::now() + delay);
        delay
    }

    /// The source, for the consumer's own reads and writes.
    pub fn source(&self) -> &L {
        &self.source
    }

    async fn step(&mut self) -> Result<Event, StoreError> {
        let Reflector {
            source,
            prefixes,
            phase,
            backoff,
            ..
        } = self;
        loop {
            match phase {
                Phase::Listing {
                    index,
                    items,
                    first,
                    last,
                } => {
                    if let Some(it) = items {
                        if let Some(kv) = it.next() {
                            return Ok(Event::InitApply(kv));
                        }
                        // Dropped before the next prefix is listed.
                        *items = None;
                        *index += 1;
                    }
                    if *index >= prefixes.len() {
                        if first.is_none() {
                            // No prefix at all: an empty listing.
                            *first = Some(0);
                            return Ok(Event::Init);
                        }
                        let revision = *last;
                        let from = first.unwrap_or(revision);
                        *phase = Phase::Watching {
                            watches: prefixes.iter().map(|_| None).collect(),
                            resume: vec![Resume::after_listing(from); prefixes.len()],
                            turn: 0,
                        };
                        backoff.reset();
                        return Ok(Event::InitDone { revision });
                    }
                    let (kvs, revision) = match source.list(&prefixes[*index]).await {
                        Ok(listed) => listed,
                        Err(e) => {
                            *phase = Phase::relist();
                            return Err(e);
                        }
                    };
                    *items = Some(kvs.into_iter());
                    *last = (*last).max(revision);
                    if first.is_none() {
                        *first = Some(revision);
                        return Ok(Event::Init);
                    }
                }
                Phase::Watching {
                    watches,
                    resume,
                    turn,
                } => {
                    let mut started = false;
                    let mut compacted = false;
                    for (i, slot) in watches.iter_mut().enumerate() {
                        if slot.is_some() {
                            continue;
                        }
                        let from = resume[i].rewatch_from();
                        match source.watch(&prefixes[i], from).await {
                            Ok(w) => {
                                *slot = Some(w);
                                started = true;
                            }
                            Err(StoreError::Compacted { revision }) => {
                                tracing::info!(prefix = %prefixes[i], revision, "watch start behind compaction; relisting");
                                compacted = true;
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    if compacted {
                        *phase = Phase::relist();
                        continue;
                    }
                    if started {
                        backoff.reset();
                    }
                    let (i, item) = recv_any(watches, *turn).await;
                    *turn = (i + 1) % watches.len().max(1);
                    match item {
                        Some(Ok(ev)) => {
                            if !resume[i].take(ev.mod_revision()) {
                                continue;
                            }
                            return Ok(match ev {
                                WatchEvent::Put(kv) => Event::Apply(kv),
                                WatchEvent::Delete { key, mod_revision } => Event::Delete {
                                    key,
                                    revision: mod_revision,
                                },
                            });
                        }
                        Some(Err(StoreError::Compacted { revision })) => {
                            tracing::info!(prefix = %prefixes[i], revision, "watch fell behind compaction; relisting");
                            *phase = Phase::relist();
                        }
                        ended => {
                            // A source ends a watch between revisions: this one resumes past
                            // its last change. The others are dropped wherever they were.
                            resume[i].delivered = 0;
                            watches.iter_mut().for_each(|w| *w = None);
                            return Err(match ended {
                                Some(Err(e)) => e,
                                _ => StoreError::Unavailable(format!(
                                    "watch {}: closed",
                                    prefixes[i]
                                )),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// The next item of any of `watches` (all started), trying them from `turn` on; with none,
/// never completes. Cancel-safe: an item is taken only when the poll returns it.
async fn recv_any(
    watches: &mut [Option<WatchReceiver>],
    turn: usize,
) -> (usize, Option<Result<WatchEvent, StoreError>>) {
    let n = watches.len();
    std::future::poll_fn(|cx| {
        for k in 0..n {
            let i = (turn + k) % n;
            if let Some(w) = watches[i].as_mut()
                && let Poll::Ready(item) = w.poll_recv(cx)
            {
                return Poll::Ready((i, item));
            }
        }
        Poll::Pending
    })
    .await
}

/// When a consumer applies its view: [`BATCH_WINDOW`] after the last change, at once after a
/// listing, [`RETRY`] after a failed apply; never while a listing is under way (the view is
/// half built).
///
/// ```ignore
/// loop {
///     tokio::select! {
///         ev = reflector.next() => if let Ok(ev) = ev { batch.saw(&ev); view.take(ev) },
///         () = batch.ready() => batch.applied(apply(&view).await),
///     }
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    due: Option<Instant>,
    listing: bool,
}

impl Batch {
    /// Nothing to apply yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes note of an event the view took.
    pub fn saw(&mut self, ev: &Event) {
        match ev {
            Event::Init => self.listing = true,
            Event::InitApply(_) => {}
            Event::InitDone { .. } => {
                self.listing = false;
                self.due = Some(Instant::now());
            }
            Event::Apply(_) | Event::Delete { .. } => {
                self.due = Some(Instant::now() + BATCH_WINDOW);
            }
        }
    }

    /// The view was applied (`ok`) or not (tried again after [`RETRY`]).
    pub fn applied(&mut self, ok: bool) {
        self.due = (!ok).then(|| Instant::now() + RETRY);
    }

    /// Whether an apply is due (now or later).
    pub fn is_pending(&self) -> bool {
        self.due.is_some() && !self.listing
    }

    /// Completes when the view should be applied; never while nothing is due. The future
    /// borrows nothing, so it fits in a `tokio::select!` beside [`Reflector::next`].
    pub fn ready(&self) -> impl Future<Output = ()> + Send + use<> {
        let due = self.due.filter(|_| !self.listing);
        async move {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests;
