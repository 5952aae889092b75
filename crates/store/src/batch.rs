//! The follow loop the service proxy and the NetworkPolicy task share: take store events into
//! a view, apply the view once no event came for [`BATCH_WINDOW`], retry a failed apply after
//! [`RETRY`], and return why the watches ended.

use std::future::Future;
use std::time::Duration;

use crate::{StoreError, WatchEvent, WatchReceiver};
use tokio::time::sleep;

/// How long a task waits for more events before it applies a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Wait before retrying a failed apply.
pub const RETRY: Duration = Duration::from_secs(1);

/// A task that keeps a view of store objects and applies it to the kernel.
pub trait Batcher {
    type View;
    /// Takes one event into the view.
    fn take(view: &mut Self::View, ev: &WatchEvent);
    /// Applies the view; whether it applied.
    fn apply(&mut self, view: &mut Self::View) -> impl Future<Output = bool>;
}

/// Follows the three watches until one ends; returns why. `ok`: whether `view` is applied.
pub async fn follow<B: Batcher>(
    b: &mut B,
    view: &mut B::View,
    ok: bool,
    [wa, wb, wc]: [&mut WatchReceiver; 3],
) -> StoreError {
    // Some(delay): the view is not applied yet; apply it after the delay.
    let mut pending = (!ok).then_some(RETRY);
    loop {
        let ev = tokio::select! {
            ev = wa.recv() => ev,
            ev = wb.recv() => ev,
            ev = wc.recv() => ev,
            () = sleep(pending.unwrap_or(BATCH_WINDOW)), if pending.is_some() => {
                pending = (!b.apply(view).await).then_some(RETRY);
                continue;
            }
        };
        match ev {
            Some(Ok(ev)) => {
                B::take(view, &ev);
                pending = Some(pending.unwrap_or(BATCH_WINDOW).min(BATCH_WINDOW));
            }
            Some(Err(e)) => return e,
            None => return StoreError::Unavailable("watch closed".into()),
        }
    }
}
