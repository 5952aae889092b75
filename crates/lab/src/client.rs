//! How the CLI (and lab daemons) find a running lab's store.

use crate::names::Lab;
use crate::topology::LabError;

/// Key prefix of every flatnet key in etcd (design.md §4).
pub const PREFIX: &str = "/flatnet/";

/// The etcd endpoint of a running lab.
pub fn endpoint(lab: &Lab) -> Result<String, LabError> {
    std::fs::read_to_string(lab.etcd_endpoint_file())
        .map(|s| s.trim().to_string())
        .map_err(|_| LabError::NotUp(lab.name.clone()))
}

/// A store client for a running lab.
pub async fn connect(lab: &Lab) -> Result<store::EtcdStore, LabError> {
    let ep = endpoint(lab)?;
    store::EtcdStore::connect(std::slice::from_ref(&ep), PREFIX).await.map_err(|e| match e {
        store::StoreError::Unavailable(_) => LabError::Other(format!(
            "the etcd of lab {} at {ep} does not answer (see `flatnet lab status`; `flatnet lab start etcd` starts it again)",
            lab.name
        )),
        e => LabError::Store(e),
    })
}
