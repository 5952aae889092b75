//! The store behaviour suite against the in-memory fake.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::Harness;
use store::MemStore;

struct Mem(MemStore);

impl Harness for Mem {
    type S = MemStore;

    fn store(&self) -> &MemStore {
        &self.0
    }

    async fn compact(&self, revision: i64) {
        self.0.compact(revision).unwrap();
    }

    async fn expire_leases(&self) {
        self.0.expire_leases_now();
    }
}

async fn mem(_test: &str) -> Option<Mem> {
    Some(Mem(MemStore::new()))
}

store_suite!(mem;
    create_is_if_absent,
    concurrent_creates_exactly_one_wins,
    put_if_compares_mod_revision,
    delete_if_compares_mod_revision,
    revisions_count_writes,
    list_is_sorted_and_limited_to_the_prefix,
    list_pages_through_many_keys,
    delete_prefix_removes_only_the_prefix,
    empty_key_is_invalid,
    lease_expiry_deletes_the_key,
    keep_alive_and_revoke,
    lease_ttl_reports_remaining_and_granted,
    put_detaches_the_lease,
    watch_resumes_from_a_revision,
    watch_from_now_sees_only_later_changes,
    watch_after_list_misses_nothing,
    watch_on_a_compacted_revision_yields_compacted,
    dropping_the_receiver_cancels_the_watch,
);
