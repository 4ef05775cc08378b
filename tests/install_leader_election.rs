//! Leader election against an in-memory Lease API served through a `tower-test` mock.
//!
//! The fake keeps one Lease per name and applies the same field-ownership rule the API server
//! does for server-side apply: applying `holderIdentity` owned by another field manager is a 409.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::client::Body;
use rvf_operator::controller::leader::{LeaderElectionArgs, Leadership};
use serde_json::{json, Value};

const NAMESPACE: &str = "rvf-system";
const LEASE: &str = "rvf-operator";

/// What the fake API server holds and saw.
#[derive(Default)]
struct FakeApi {
    lease: Option<Value>,
    holder_manager: Option<String>,
    resource_version: u64,
    /// (HTTP method, path without query) of every request.
    calls: Vec<(String, String)>,
}

type Shared = Arc<Mutex<FakeApi>>;

fn client_with(api: Shared) -> kube::Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let response = serve(&api, request).await;
            respond.send_response(response);
        }
    });
    kube::Client::new(service, NAMESPACE)
}

async fn serve(api: &Shared, request: Request<Body>) -> Response<Body> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");

    let mut api = api.lock().unwrap();
    api.calls.push((method.clone(), path.clone()));
    let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases");
    let item = format!("{collection}/{LEASE}");

    match (method.as_str(), path.as_str()) {
        ("GET", p) if p == item => match &api.lease {
            Some(lease) => respond(StatusCode::OK, lease.clone()),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "leases \"rvf-operator\" not found",
            ),
        },
        ("POST", p) if p == collection => {
            if api.lease.is_some() {
                return status(StatusCode::CONFLICT, "AlreadyExists", "lease exists");
            }
            let mut lease: Value = serde_json::from_slice(&body).expect("lease JSON");
            api.resource_version += 1;
            lease["metadata"]["resourceVersion"] = json!(api.resource_version.to_string());
            api.lease = Some(lease.clone());
            respond(StatusCode::CREATED, lease)
        }
        ("PATCH", p) if p == item => {
            let Some(mut lease) = api.lease.clone() else {
                return status(StatusCode::NOT_FOUND, "NotFound", "lease not found");
            };
            let manager = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("fieldManager="))
                .unwrap_or("unknown")
                .to_owned();
            let patch: Value = serde_json::from_slice(&body).expect("patch JSON");
            let new_holder = patch["spec"].get("holderIdentity").cloned();
            let current_holder = lease["spec"]["holderIdentity"].clone();

            if content_type.starts_with("application/apply-patch")
                && new_holder
                    .as_ref()
                    .is_some_and(|h| !h.is_null() && *h != current_holder)
                && api.holder_manager.as_ref().is_some_and(|m| *m != manager)
                && !current_holder.is_null()
            {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "holderIdentity is owned by another manager",
                );
            }

            merge_spec(&mut lease, &patch["spec"]);
            match new_holder {
                Some(Value::Null) => api.holder_manager = None,
                Some(_) => api.holder_manager = Some(manager),
                None => {}
            }
            api.resource_version += 1;
            lease["metadata"]["resourceVersion"] = json!(api.resource_version.to_string());
            api.lease = Some(lease.clone());
            respond(StatusCode::OK, lease)
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such path in the fake API",
        ),
    }
}

fn merge_spec(lease: &mut Value, patch: &Value) {
    if !lease["spec"].is_object() {
        lease["spec"] = json!({});
    }
    let spec = lease["spec"].as_object_mut().unwrap();
    for (key, value) in patch.as_object().into_iter().flatten() {
        if value.is_null() {
            spec.remove(key);
        } else {
            spec.insert(key.clone(), value.clone());
        }
    }
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code.as_u16(),
        }),
    )
}

fn args(identity: &str) -> LeaderElectionArgs {
    LeaderElectionArgs {
        identity: Some(identity.to_owned()),
        lease_duration_seconds: 3,
        renew_grace_seconds: 1,
        ..Default::default()
    }
}

fn seeded(holder: &str, renewed: Timestamp, duration_seconds: i32) -> Shared {
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            acquire_time: Some(MicroTime(renewed)),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(duration_seconds),
            ..Default::default()
        }),
    };
    Arc::new(Mutex::new(FakeApi {
        lease: Some(serde_json::to_value(lease).unwrap()),
        holder_manager: Some(format!("other-manager-{holder}")),
        resource_version: 1,
        ..Default::default()
    }))
}

fn holder(api: &Shared) -> Option<String> {
    let api = api.lock().unwrap();
    api.lease.as_ref()?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

async fn acquire_within(api: &Shared, identity: &str, secs: u64) -> Option<Leadership> {
    let client = client_with(api.clone());
    tokio::time::timeout(
        Duration::from_secs(secs),
        Leadership::acquire(client, &args(identity)),
    )
    .await
    .ok()
    .map(|r| r.expect("leader election must not fail against the fake API"))
}

#[tokio::test]
async fn a_lone_replica_creates_the_lease_and_becomes_leader() {
    let api = Shared::default();

    let leadership = acquire_within(&api, "replica-a", 10)
        .await
        .expect("elected");

    assert_eq!(holder(&api).as_deref(), Some("replica-a"));
    let target = leadership.target().expect("election is enabled");
    assert_eq!(
        (target.namespace.as_str(), target.name.as_str()),
        (NAMESPACE, LEASE)
    );
    let lease = api.lock().unwrap().lease.clone().unwrap();
    assert_eq!(lease["spec"]["leaseDurationSeconds"], json!(3));
}

#[tokio::test]
async fn a_replica_waits_while_another_holds_a_fresh_lease() {
    let api = seeded("replica-b", Timestamp::now(), 30);

    let elected = acquire_within(&api, "replica-a", 2).await;

    assert!(
        elected.is_none(),
        "must not lead while replica-b's lease is fresh"
    );
    assert_eq!(holder(&api).as_deref(), Some("replica-b"));
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    let an_hour_ago = Timestamp::now() - SignedDuration::from_hours(1);
    let api = seeded("replica-b", an_hour_ago, 15);

    acquire_within(&api, "replica-a", 10)
        .await
        .expect("elected");

    assert_eq!(holder(&api).as_deref(), Some("replica-a"));
}

#[tokio::test]
async fn releasing_hands_the_lease_to_the_standby() {
    let api = Shared::default();
    let leader = acquire_within(&api, "replica-a", 10)
        .await
        .expect("a elected");
    let standby = {
        let client = client_with(api.clone());
        tokio::spawn(async move { Leadership::acquire(client, &args("replica-b")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(holder(&api).as_deref(), Some("replica-a"));

    leader.release().await.expect("release");
    // The standby polls at the expiry it last saw: at most one lease duration (3 s) away.
    let standby = tokio::time::timeout(Duration::from_millis(4500), standby)
        .await
        .expect("standby elected after release")
        .unwrap()
        .expect("standby election");

    assert_eq!(holder(&api).as_deref(), Some("replica-b"));
    drop(standby);
}

#[tokio::test]
async fn leadership_is_lost_when_another_replica_holds_the_lease() {
    let api = Shared::default();
    let mut leadership = acquire_within(&api, "replica-a", 10)
        .await
        .expect("elected");

    {
        let mut api = api.lock().unwrap();
        let lease = api.lease.as_mut().unwrap();
        lease["spec"]["holderIdentity"] = json!("intruder");
        lease["spec"]["leaseDurationSeconds"] = json!(30);
        api.holder_manager = Some("intruder-manager".into());
    }

    tokio::time::timeout(Duration::from_secs(6), leadership.lost())
        .await
        .expect("loss noticed at the next renewal");
}

#[tokio::test]
async fn disabled_election_is_immediate_and_never_lost() {
    let api = Shared::default();
    let client = client_with(api.clone());
    let disabled = LeaderElectionArgs {
        enabled: false,
        ..Default::default()
    };

    let mut leadership = Leadership::acquire(client, &disabled).await.unwrap();

    assert!(leadership.target().is_none());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), leadership.lost())
            .await
            .is_err()
    );
    assert!(
        api.lock().unwrap().calls.is_empty(),
        "no Lease calls when disabled"
    );
}

/// The RBAC in deploy/ and the chart grants get, create and patch on leases: nothing else may
/// be needed.
#[tokio::test]
async fn the_elector_only_gets_creates_and_patches_leases() {
    let api = Shared::default();
    let leader = acquire_within(&api, "replica-a", 10)
        .await
        .expect("elected");
    tokio::time::sleep(Duration::from_millis(2500)).await; // one renewal
    leader.release().await.unwrap();

    let methods: BTreeSet<String> = api
        .lock()
        .unwrap()
        .calls
        .iter()
        .map(|(m, _)| m.clone())
        .collect();
    let allowed: BTreeSet<String> = ["GET", "POST", "PATCH"].map(String::from).into();
    assert!(methods.is_subset(&allowed), "unexpected verbs: {methods:?}");
    assert!(
        api.lock().unwrap().calls.iter().all(
            |(_, p)| p.starts_with("/apis/coordination.k8s.io/v1/namespaces/rvf-system/leases")
        ),
        "only the Lease API is called"
    );
}
