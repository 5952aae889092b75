use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::*;
use crate::MemStore;

/// Every wait in these tests ends; with the clock paused a stuck one fails at once.
const WAIT: Duration = Duration::from_secs(30);

async fn next<L: ListWatch>(r: &mut Reflector<L>) -> Result<Event, StoreError> {
    tokio::time::timeout(WAIT, r.next())
        .await
        .expect("reflector answers within the wait")
}

/// Events up to and including `InitDone`.
async fn listing<L: ListWatch>(r: &mut Reflector<L>) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let ev = next(r).await.unwrap();
        let done = matches!(ev, Event::InitDone { .. });
        out.push(ev);
        if done {
            return out;
        }
    }
}

/// Keys of the `InitApply` events.
fn listed(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::InitApply(kv) => Some(kv.key.clone()),
            _ => None,
        })
        .collect()
}

/// `Apply key` / `Delete key` of a change event.
fn change(ev: &Event) -> String {
    match ev {
        Event::Apply(kv) => format!("Apply {}", kv.key),
        Event::Delete { key, .. } => format!("Delete {key}"),
        other => format!("{other:?}"),
    }
}

/// True when `r` has nothing to report (it waits without end).
async fn quiet<L: ListWatch>(r: &mut Reflector<L>) -> bool {
    tokio::time::timeout(Duration::from_secs(10), r.next())
        .await
        .is_err()
}

async fn store_with(keys: &[&str]) -> MemStore {
    let s = MemStore::new();
    for k in keys {
        s.put(k, k.as_bytes().to_vec()).await.unwrap();
    }
    s
}

#[tokio::test(start_paused = true)]
async fn lists_every_prefix_in_order_then_says_done_at_the_last_revision() {
    let s = store_with(&["b/1", "a/2", "a/1", "c/1"]).await;
    let rev = s.revision().await.unwrap();
    let mut r = Reflector::new(s.clone(), &["a/", "b/"]);
    let events = listing(&mut r).await;
    assert_eq!(events[0], Event::Init);
    assert_eq!(listed(&events), ["a/1", "a/2", "b/1"]);
    assert_eq!(events.last(), Some(&Event::InitDone { revision: rev }));
    assert_eq!(events.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn changes_after_the_listing_follow_as_apply_and_delete() {
    let s = store_with(&["a/1", "b/1"]).await;
    let mut r = Reflector::new(s.clone(), &["a/", "b/"]);
    listing(&mut r).await;
    s.put("a/2", b"x".to_vec()).await.unwrap();
    s.put("c/1", b"not watched".to_vec()).await.unwrap();
    let deleted_at = {
        s.delete("b/1").await.unwrap();
        s.revision().await.unwrap()
    };
    match next(&mut r).await.unwrap() {
        Event::Apply(kv) => assert_eq!((kv.key.as_str(), kv.value.as_slice()), ("a/2", &b"x"[..])),
        other => panic!("expected Apply a/2, got {other:?}"),
    }
    assert_eq!(
        next(&mut r).await.unwrap(),
        Event::Delete {
            key: "b/1".into(),
            revision: deleted_at
        }
    );
    assert!(quiet(&mut r).await, "c/ is not watched");
}

/// A source that writes `a/late` while `b/` is being listed: after the first listing.
struct WriteDuringList(MemStore);

impl ListWatch for WriteDuringList {
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        if prefix == "b/" {
            self.0.put("a/late", vec![]).await?;
        }
        Store::list(&self.0, prefix).await
    }

    async fn watch(&self, prefix: &str, from: i64) -> Result<WatchReceiver, StoreError> {
        Store::watch(&self.0, prefix, from).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_change_between_two_listings_is_seen_by_the_watch() {
    let s = store_with(&["a/1", "b/1"]).await;
    let mut r = Reflector::new(WriteDuringList(s.clone()), &["a/", "b/"]);
    let events = listing(&mut r).await;
    assert_eq!(
        listed(&events),
        ["a/1", "b/1"],
        "a/ was listed before the write"
    );
    assert_eq!(change(&next(&mut r).await.unwrap()), "Apply a/late");
}

#[tokio::test(start_paused = true)]
async fn relist_after_compaction_drops_keys_deleted_meanwhile() {
    let s = store_with(&["a/1", "a/2", "b/1"]).await;
    let mut r = Reflector::new(s.clone(), &["a/", "b/"]);
    listing(&mut r).await;
    // Break the watch, then change and compact the history it would resume from.
    s.set_available(false);
    let err = next(&mut r).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    s.set_available(true);
    s.delete("a/1").await.unwrap();
    s.put("b/2", vec![]).await.unwrap();
    s.compact(s.revision().await.unwrap()).unwrap();

    let events = listing(&mut r).await;
    assert_eq!(events[0], Event::Init, "compaction means a relist");
    assert_eq!(listed(&events), ["a/2", "b/1", "b/2"], "a/1 is gone");
    // And the new watch follows.
    s.put("a/3", vec![]).await.unwrap();
    assert_eq!(change(&next(&mut r).await.unwrap()), "Apply a/3");
}

#[tokio::test(start_paused = true)]
async fn rewatch_after_an_outage_resumes_without_relisting_or_repeating() {
    let s = store_with(&["a/1", "b/1"]).await;
    let mut r = Reflector::new(s.clone(), &["a/", "b/"]);
    listing(&mut r).await;
    s.put("a/2", vec![]).await.unwrap();
    assert_eq!(change(&next(&mut r).await.unwrap()), "Apply a/2");

    s.set_available(false);
    let err = next(&mut r).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(r.retry_in(), Backoff::MIN);
    s.set_available(true);
    s.put("a/3", vec![]).await.unwrap();
    s.put("b/2", vec![]).await.unwrap();
    s.delete("a/1").await.unwrap();

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(change(&next(&mut r).await.unwrap()));
    }
    got.sort();
    assert_eq!(got, ["Apply a/3", "Apply b/2", "Delete a/1"]);
    assert!(quiet(&mut r).await, "nothing repeated, no relist");
}

/// A source whose listings and watches the test hands out, recording the calls.
#[derive(Clone, Default)]
struct Script(Arc<Mutex<ScriptState>>);

#[derive(Default)]
struct ScriptState {
    lists: VecDeque<(Vec<KeyValue>, i64)>,
    watches: VecDeque<WatchReceiver>,
    calls: Vec<String>,
}

impl Script {
    fn listing(&self, revision: i64) {
        self.0
            .lock()
            .unwrap()
            .lists
            .push_back((Vec::new(), revision));
    }

    /// The next watch call gets a stream fed by the returned sender.
    fn watch(&self) -> mpsc::Sender<Result<WatchEvent, StoreError>> {
        let (tx, rx) = mpsc::channel(16);
        self.0.lock().unwrap().watches.push_back(rx);
        tx
    }

    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap().calls)
    }
}

impl ListWatch for Script {
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let mut st = self.0.lock().unwrap();
        st.calls.push(format!("list {prefix}"));
        st.lists
            .pop_front()
            .ok_or_else(|| StoreError::Unavailable("no listing scripted".into()))
    }

    async fn watch(&self, prefix: &str, from: i64) -> Result<WatchReceiver, StoreError> {
        let mut st = self.0.lock().unwrap();
        st.calls.push(format!("watch {prefix} from {from}"));
        st.watches
            .pop_front()
            .ok_or_else(|| StoreError::Unavailable("no watch scripted".into()))
    }
}

fn del(key: &str, revision: i64) -> Result<WatchEvent, StoreError> {
    Ok(WatchEvent::Delete {
        key: key.into(),
        mod_revision: revision,
    })
}

fn put(key: &str, revision: i64) -> Result<WatchEvent, StoreError> {
    Ok(WatchEvent::Put(KeyValue {
        key: key.into(),
        value: Vec::new(),
        mod_revision: revision,
        create_revision: revision,
        lease: 0,
    }))
}

#[tokio::test(start_paused = true)]
async fn watches_start_after_the_first_listing_and_resume_after_the_last_change_per_prefix() {
    let src = Script::default();
    src.listing(10);
    src.listing(12);
    let (a, _b) = (src.watch(), src.watch());
    let mut r = Reflector::new(src.clone(), &["a/", "b/"]);
    let events = listing(&mut r).await;
    assert_eq!(events.last(), Some(&Event::InitDone { revision: 12 }));
    a.send(put("a/1", 13)).await.unwrap();
    assert_eq!(change(&next(&mut r).await.unwrap()), "Apply a/1");
    assert_eq!(
        src.calls(),
        ["list a/", "list b/", "watch a/ from 11", "watch b/ from 11"]
    );
    a.send(Err(StoreError::Unavailable("gone".into())))
        .await
        .unwrap();
    assert!(next(&mut r).await.is_err());
    let (_a2, _b2) = (src.watch(), src.watch());
    assert!(quiet(&mut r).await);
    assert_eq!(
        src.calls(),
        ["watch a/ from 14", "watch b/ from 11"],
        "no relist; each prefix after its own last change"
    );
}

#[tokio::test(start_paused = true)]
async fn a_revision_cut_by_a_broken_watch_is_delivered_whole_and_once() {
    let src = Script::default();
    src.listing(10);
    src.listing(10);
    let (a, b) = (src.watch(), src.watch());
    let mut r = Reflector::new(src.clone(), &["a/", "b/"]);
    listing(&mut r).await;
    // One revision deleting two keys of a/; b/'s watch breaks after the first is taken.
    a.send(del("a/1", 12)).await.unwrap();
    a.send(del("a/2", 12)).await.unwrap();
    b.send(Err(StoreError::Unavailable("gone".into())))
        .await
        .unwrap();
    assert_eq!(change(&next(&mut r).await.unwrap()), "Delete a/1");
    assert!(next(&mut r).await.is_err(), "b/ is polled next");
    src.calls();

    let (a2, _b2) = (src.watch(), src.watch());
    a2.send(del("a/1", 12)).await.unwrap();
    a2.send(del("a/2", 12)).await.unwrap();
    a2.send(put("a/3", 13)).await.unwrap();
    assert_eq!(change(&next(&mut r).await.unwrap()), "Delete a/2");
    assert_eq!(change(&next(&mut r).await.unwrap()), "Apply a/3");
    assert_eq!(
        src.calls(),
        ["watch a/ from 12", "watch b/ from 11"],
        "a/ was dropped inside revision 12: from it again"
    );
    assert!(quiet(&mut r).await);
}

#[tokio::test(start_paused = true)]
async fn compaction_reported_by_a_watch_relists_at_once_without_an_error() {
    let src = Script::default();
    src.listing(10);
    let a = src.watch();
    let mut r = Reflector::new(src.clone(), &["a/"]);
    listing(&mut r).await;
    a.send(Err(StoreError::Compacted { revision: 20 }))
        .await
        .unwrap();
    src.listing(25);
    let _a2 = src.watch();
    let started = Instant::now();
    let events = listing(&mut r).await;
    assert_eq!(
        events,
        [Event::Init, Event::InitDone { revision: 25 }],
        "an empty relisting"
    );
    assert_eq!(started.elapsed(), Duration::ZERO, "no backoff");
    src.calls();
    assert!(quiet(&mut r).await);
    assert_eq!(src.calls(), ["watch a/ from 26"]);
}

#[test]
fn backoff_doubles_from_200ms_to_5s_and_resets() {
    let mut b = Backoff::new();
    let waits: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
    assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
    b.reset();
    assert_eq!(b.next_delay(), Backoff::MIN);
}

#[tokio::test(start_paused = true)]
async fn failed_attempts_wait_the_backoff_and_a_success_resets_it() {
    let s = store_with(&["a/1"]).await;
    s.set_available(false);
    let mut r = Reflector::new(s.clone(), &["a/"]);
    let t0 = Instant::now();
    let mut failed_at = Vec::new();
    for _ in 0..3 {
        let err = next(&mut r).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable(_)),
            "no Init before a listing"
        );
        failed_at.push(t0.elapsed().as_millis() as u64);
    }
    assert_eq!(failed_at, [0, 200, 600]);
    s.set_available(true);
    listing(&mut r).await;
    assert_eq!(t0.elapsed(), Duration::from_millis(1400), "waited 800 ms");

    // The listing succeeded: the next failure (starting the watch) waits 200 ms again.
    s.set_available(false);
    assert!(next(&mut r).await.is_err());
    let t1 = Instant::now();
    assert!(next(&mut r).await.is_err());
    assert_eq!(t1.elapsed(), Backoff::MIN);
}

/// Polls `f` once; its output if it was ready, else None (and `f` is dropped).
async fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn dropping_next_mid_way_loses_no_event_and_keeps_the_backoff_deadline() {
    let s = store_with(&["a/1", "b/1"]).await;
    let mut r = Reflector::new(s.clone(), &["a/", "b/"]);
    let mut events = Vec::new();
    let mut written = Vec::new();
    let mut cut = 0;
    for i in 0..40 {
        // A write now and then; every call is cut short after one poll, as a losing
        // `select!` branch is.
        if i % 3 == 0 {
            let key = format!("{}/{i}", if i % 2 == 0 { "a" } else { "b" });
            s.put(&key, vec![]).await.unwrap();
            written.push(format!("Apply {key}"));
        }
        match poll_once(r.next()).await {
            Some(ev) => events.push(ev.unwrap()),
            None => cut += 1,
        }
        tokio::task::yield_now().await;
    }
    assert!(cut > 0, "some calls were cut short");
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(1), r.next()).await {
        events.push(ev);
    }
    let done = events
        .iter()
        .position(|e| matches!(e, Event::InitDone { .. }))
        .unwrap();
    let listed = listed(&events[..done]);
    let mut seen: Vec<String> = events[done + 1..].iter().map(change).collect();
    // What was written before its prefix was listed may come as a listing and again as a
    // change (the watch starts at the first listing); nothing is lost.
    for w in &written {
        let key = w.trim_start_matches("Apply ");
        assert!(
            seen.contains(w) || listed.iter().any(|k| k == key),
            "{w} lost: listed {listed:?}, changes {seen:?}"
        );
    }
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), n, "no change delivered twice");

    // A backoff wait cut short keeps its deadline.
    s.set_available(false);
    assert!(next(&mut r).await.is_err());
    s.set_available(true);
    let t0 = Instant::now();
    assert!(poll_once(r.next()).await.is_none(), "waiting the backoff");
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.put("a/after", vec![]).await.unwrap();
    assert_eq!(change(&next(&mut r).await.unwrap()), "Apply a/after");
    assert_eq!(
        t0.elapsed(),
        Backoff::MIN,
        "the first deadline, not a new one"
    );
}

#[tokio::test(start_paused = true)]
async fn batch_applies_after_the_window_at_once_after_a_listing_and_retries_after_a_second() {
    let never = Duration::from_secs(3600);
    let waited = |b: &Batch| {
        let ready = b.ready();
        async move {
            let t = Instant::now();
            tokio::time::timeout(never, ready)
                .await
                .map(|()| t.elapsed())
                .ok()
        }
    };
    let mut b = Batch::new();
    assert_eq!(waited(&b).await, None, "nothing to apply");
    b.saw(&Event::Init);
    b.saw(&Event::InitApply(KeyValue {
        key: "a/1".into(),
        value: Vec::new(),
        mod_revision: 2,
        create_revision: 2,
        lease: 0,
    }));
    assert_eq!(waited(&b).await, None, "not while listing");
    b.saw(&Event::InitDone { revision: 2 });
    assert_eq!(
        waited(&b).await,
        Some(Duration::ZERO),
        "at once after a listing"
    );
    b.applied(false);
    assert!(b.is_pending());
    assert_eq!(waited(&b).await, Some(RETRY), "a failed apply is retried");
    b.saw(&Event::Delete {
        key: "a/1".into(),
        revision: 3,
    });
    assert_eq!(
        waited(&b).await,
        Some(BATCH_WINDOW),
        "a change waits the window"
    );
    b.applied(true);
    assert!(!b.is_pending());
    assert_eq!(waited(&b).await, None);
}

#[test]
fn events_read_as_the_store_changes_they_stand_for() {
    let kv = KeyValue {
        key: "a/1".into(),
        value: vec![1],
        mod_revision: 4,
        create_revision: 3,
        lease: 0,
    };
    assert_eq!(
        Event::Apply(kv.clone()).into_change(),
        Some(WatchEvent::Put(kv.clone()))
    );
    assert_eq!(
        Event::InitApply(kv.clone()).into_change(),
        Some(WatchEvent::Put(kv))
    );
    assert_eq!(
        Event::Delete {
            key: "a/1".into(),
            revision: 5
        }
        .into_change(),
        Some(WatchEvent::Delete {
            key: "a/1".into(),
            mod_revision: 5
        })
    );
    assert_eq!(Event::Init.into_change(), None);
    assert_eq!(Event::InitDone { revision: 1 }.into_change(), None);
}
