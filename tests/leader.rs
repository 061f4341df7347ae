//! Leader election with real operator processes against one apiserver: only
//! the Lease holder reconciles, a standby takes over after the leader is
//! SIGKILLed (within the lease duration of its last renewal) without launching
//! anything twice, a SIGTERMed leader hands over at once, and a leader whose
//! Lease is taken stops and exits.

use std::time::{Duration, Instant};

use hostforge_testbed::machines::{
    create_request, create_template, is_ready, moto_instances, moto_live, patch_spec, status_live,
    uid, wait_request,
};
use hostforge_testbed::operator::default_config;
use hostforge_testbed::OperatorProcess;
use hostforge_testbed::{TestEnv, AL2023_PARAM};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
/// The operator's lease duration and standby retry period (src/leader.rs).
const LEASE: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(2);
const BECAME_LEADER: &str = "became leader";

fn reconciles(r: &OperatorProcess) -> f64 {
    r.try_metric("hostforge_reconciles_total", &[])
        .unwrap_or(-1.0)
}

#[tokio::test]
async fn one_replica_reconciles_and_a_standby_takes_over_without_double_launches() {
    let started = Instant::now();
    let env = TestEnv::new("leader").await;
    env.install_crds().await;
    let config = format!(
        "{}pollInterval: 500ms\nsweepInterval: 2s\n",
        default_config(&env, "5m")
    );
    let lease_name = "hostforge-leader-test";
    let args = [
        "--leader-election",
        "--lease-name",
        lease_name,
        "--lease-namespace",
        env.namespace.as_str(),
    ];
    let kubeconfig = env.bed.kubeconfig.clone();
    let mut a = OperatorProcess::replica(&env, "a", &config, &kubeconfig, &args);
    let mut b = OperatorProcess::replica(&env, "b", &config, &kubeconfig, &args);

    // Both become ready (a standby is ready once it reached the Lease); one leads.
    assert!(a.wait_ready(Duration::from_secs(60)).await, "a never ready");
    assert!(b.wait_ready(Duration::from_secs(60)).await, "b never ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.log().contains(BECAME_LEADER) && !b.log().contains(BECAME_LEADER) {
        assert!(Instant::now() < deadline, "nobody became leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    let mr = create_request(&env, "pool", "compute", 2, true).await;
    let uid = uid(&mr);
    wait_request(&env, "pool", "Ready with 2", WAIT, is_ready).await;

    let a_leads = a.log().contains(BECAME_LEADER);
    let (mut leader, mut standby) = if a_leads { (a, b) } else { (b, a) };
    assert!(
        !standby.log().contains(BECAME_LEADER),
        "both replicas lead:\n{}",
        standby.log()
    );
    assert!(reconciles(&leader) > 0.0, "the leader reconciled nothing");
    assert_eq!(reconciles(&standby), 0.0, "the standby reconciled");
    assert_eq!(
        standby.try_metric("hostforge_aws_calls_total", &[]),
        Some(0.0),
        "the standby called AWS"
    );
    // Both replicas may have tried to create the Lease at the same instant: the
    // loser saw a conflict and says it stands by at its next try, a retry
    // period later, which can come after the request is already Ready.
    let deadline = Instant::now() + RETRY * 3;
    while !standby.log().contains("standing by") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        standby.log().contains("standing by"),
        "the standby never said it stands by:\n{}",
        standby.log()
    );

    // SIGKILL the leader: no release, the standby must wait for the lease to expire.
    let lease_api: Api<Lease> = Api::namespaced(env.client.clone(), &env.namespace);
    let before = lease_api.get(lease_name).await.expect("lease");
    let last_renewal = before
        .spec
        .as_ref()
        .and_then(|s| s.renew_time.clone())
        .expect("renewTime");
    if let (Some((l_rss, l_cpu)), Some((s_rss, s_cpu))) = (leader.usage(), standby.usage()) {
        eprintln!(
            "leader: peak RSS {l_rss} KiB, CPU {l_cpu:?}; standby: peak RSS {s_rss} KiB, CPU {s_cpu:?} (debug build, {:?} up)",
            started.elapsed()
        );
    }
    leader.kill9();
    let killed = Instant::now();
    assert!(
        standby
            .wait_log(
                BECAME_LEADER,
                LEASE + RETRY + RETRY + Duration::from_secs(3)
            )
            .await,
        "the standby did not take over within {:?}:\n{}",
        LEASE + RETRY * 2,
        standby.log()
    );
    let handover = killed.elapsed();
    let after = lease_api.get(lease_name).await.expect("lease");
    let spec = after.spec.clone().expect("lease spec");
    let acquired = spec.acquire_time.clone().expect("acquireTime").0;
    let since_renewal = acquired.duration_since(last_renewal.0);
    eprintln!(
        "handover after SIGKILL: {handover:?} from the kill, {since_renewal:?} after the dead leader's last renewal (lease {LEASE:?}, retry {RETRY:?})"
    );
    // The standby waits the full lease duration after the last renewal it saw
    // (which it sees up to one retry period late) and tries again right at expiry.
    assert!(
        handover <= LEASE + RETRY + Duration::from_secs(1),
        "handover took {handover:?}"
    );
    assert!(
        since_renewal.as_secs_f64() >= LEASE.as_secs_f64() - 0.5,
        "took over before the lease expired: {since_renewal:?}"
    );
    assert_eq!(spec.lease_transitions, Some(1));

    // The new leader carries on: scale to 4, nothing launched twice.
    patch_spec(&env, "pool", json!({"count": 4})).await;
    let mr = wait_request(&env, "pool", "Ready with 4", WAIT, |m| {
        is_ready(m) && status_live(m).len() == 4
    })
    .await;
    let all = moto_instances(&env, &uid).await;
    assert_eq!(
        all.len(),
        4,
        "every instance ever launched for the request: {all:?}"
    );
    assert_eq!(moto_live(&env, &uid).await, status_live(&mr));
    assert!(reconciles(&standby) > 0.0);

    // A graceful stop releases the Lease: a new standby takes over at its next try.
    let mut c = OperatorProcess::replica(&env, "c", &config, &kubeconfig, &args);
    assert!(c.wait_ready(Duration::from_secs(60)).await, "c never ready");
    assert!(c.wait_log("standing by", Duration::from_secs(10)).await);
    let stopping = Instant::now();
    let (status, _) = standby.terminate(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(standby.log().contains("released the lease"));
    assert!(
        c.wait_log(BECAME_LEADER, RETRY * 2 + Duration::from_secs(2))
            .await,
        "no quick handover after a release:\n{}",
        c.log()
    );
    let graceful = stopping.elapsed();
    eprintln!("handover after SIGTERM (release): {graceful:?}");

    // Someone else takes the Lease: the leader stops reconciling and exits non-zero.
    lease_api
        .patch(
            lease_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "holderIdentity": "intruder",
                "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    k8s_openapi::jiff::Timestamp::now()),
                "leaseDurationSeconds": 3600,
            }})),
        )
        .await
        .expect("steal the lease");
    let stolen = Instant::now();
    let status = c.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "the deposed leader did not exit non-zero: {status:?}\n{}",
        c.log()
    );
    eprintln!("deposed leader exited after {:?}", stolen.elapsed());
    assert!(c.log().contains("lost leadership"), "{}", c.log());
    assert!(c.log().contains("intruder"));
    assert_eq!(moto_instances(&env, &uid).await.len(), 4);
    drop(leader);
}
