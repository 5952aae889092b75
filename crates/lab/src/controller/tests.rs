use super::*;
use serde_json::json;

#[test]
fn pods_map_to_their_owning_deployment() {
    assert_eq!(
        deployment_of("objects/deployments/default/web", None),
        Some(("default".into(), "web".into()))
    );
    let pod = json!({"metadata": {"ownerReferences": [{"kind": "Deployment", "name": "web"}]}});
    assert_eq!(
        deployment_of("objects/pods/x/web-abc", Some(&pod)),
        Some(("x".into(), "web".into()))
    );
    assert_eq!(
        deployment_of("objects/pods/x/solo", Some(&json!({"metadata": {}}))),
        None
    );
    assert_eq!(deployment_of("objects/services/x/web", None), None);
}
