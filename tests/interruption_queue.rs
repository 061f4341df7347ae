//! The interruption queue end to end, on real components: EC2's events are
//! put on moto's default EventBridge bus in EC2's documented JSON (source
//! `aws.ec2` / `aws.health`, AWS's `detail-type`s), a rule routes them to an
//! SQS queue, and the operator reads that queue through the forwarder. The
//! machines' status shows each event, the request publishes an Event for it,
//! and every message is deleted, including one about an instance no request
//! holds and one that is no event at all. While the queue answers, no
//! DescribeSpotInstanceRequests call is made; when it does not, the polling
//! takes over. With the `failpoints` feature (`make test`), an operator killed
//! between the status write and the delete leaves the message to come back,
//! and the restarted one handles it again with the same result.
//!
//! moto delivers EventBridge → SQS for every shape used here (the message
//! body is the event itself, as on AWS), so only the malformed message is
//! sent to the queue directly: EventBridge cannot carry a body that is not
//! an event.

use std::collections::BTreeSet;
use std::time::Duration;

use hostforge::api::request::ScheduledEventKind;
use hostforge::api::{MachineRequest, MachineState, TerminationReason};
use hostforge_testbed::cloud_events::{Ec2Event, EventQueue};
use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::machines::{create_request, create_template, is_ready, wait_request};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::wait::eventually;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

/// How long a message left undeleted takes to be handled again, with room
/// for a loaded machine: the visibility timeout (60 s), a long poll (20 s).
#[cfg(feature = "failpoints")]
const REDELIVERY_WAIT: Duration = Duration::from_secs(300);

/// An instance id no request holds (another cluster's machine).
const FOREIGN: &str = "i-0fffffffffffffff0";

/// The cloud's side of the wiring, straight on moto (not through the
/// forwarder, which stands for the operator's network path): a queue called
/// `name` and a rule on the default bus sending EC2's and AWS Health's
/// events to it, as docs/interruptions.md sets them up.
async fn wire(env: &TestEnv, name: &str) -> EventQueue {
    let mut detail_types = Ec2Event::ALL.map(Ec2Event::detail_type).to_vec();
    detail_types.push("AWS Health Event");
    EventQueue::wire(
        &env.bed.moto_url,
        name,
        &["aws.ec2", "aws.health"],
        &detail_types,
    )
    .await
    .expect("wiring the queue")
}

/// The operator's config (loops quick, the sweep slow so only the queue can
/// tell it a machine went, spot notices polled every second unless the queue
/// answers) with `queue` as the provider's interruption queue.
fn config_with_queue(env: &TestEnv, fwd: &Forwarder, queue: &str) -> String {
    let cfg = config_via(env, fwd, "10m", "spotNoticeInterval: 1s\n");
    let endpoint = format!("    endpointUrl: {}\n", fwd.endpoint());
    assert!(cfg.contains(&endpoint), "{cfg}");
    cfg.replace(
        &endpoint,
        &format!("{endpoint}    interruptionQueue: {queue}\n"),
    )
}

async fn spot_request(env: &TestEnv, name: &str, count: i32) -> MachineRequest {
    create_template(
        env,
        "spot",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "capacityType": "spot",
        }),
    )
    .await;
    create_request(env, name, "spot", count, true).await;
    wait_request(env, name, "Ready", WAIT, is_ready).await
}

fn machine<'a>(mr: &'a MachineRequest, id: &str) -> Option<&'a hostforge::api::Machine> {
    mr.status.as_ref()?.machines.iter().find(|m| m.id == id)
}

#[tokio::test]
async fn queue_events_reach_status_and_every_message_is_deleted() {
    let env = TestEnv::new("queue-events").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let name = format!("hf-{}", env.namespace);
    let cloud = wire(&env, &name).await;
    let op = OperatorProcess::start(&env, &config_with_queue(&env, &fwd, &name)).await;

    let mr = spot_request(&env, "held", 3).await;
    let ids: Vec<String> = mr
        .status
        .as_ref()
        .expect("status")
        .machines
        .iter()
        .map(|m| m.id.clone())
        .collect();
    let [warned, rebalanced, lost] = [&ids[0], &ids[1], &ids[2]];

    // EC2 takes `lost` back (outside the operator), then says so.
    env.ec2()
        .terminate_instances()
        .instance_ids(lost)
        .send()
        .await
        .expect("terminate in moto");
    cloud
        .put_event(Ec2Event::SpotWarning, warned)
        .await
        .expect("PutEvents");
    cloud
        .put_event(Ec2Event::Rebalance, rebalanced)
        .await
        .expect("PutEvents");
    cloud
        .put(
            "aws.health",
            "AWS Health Event",
            &[rebalanced],
            json!({
                "eventArn": "arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED_1",
                "service": "EC2",
                "eventTypeCode": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
                "eventTypeCategory": "scheduledChange",
                "startTime": "Wed, 06 Jan 2027 08:00:00 GMT",
                "endTime": "Wed, 06 Jan 2027 10:00:00 GMT",
                "eventDescription": [{"language": "en_US", "latestDescription": "retirement"}],
                "affectedEntities": [{"entityValue": rebalanced}]
            }),
        )
        .await
        .expect("PutEvents");
    cloud
        .put_event(Ec2Event::Terminated, lost)
        .await
        .expect("PutEvents");
    // Another cluster's machine, and a body that is no event (sent to the
    // queue directly: EventBridge only carries events).
    cloud
        .put_ec2(
            "EC2 Instance State-change Notification",
            FOREIGN,
            json!({"instance-id": FOREIGN, "state": "stopped"}),
        )
        .await
        .expect("PutEvents");
    cloud
        .sqs
        .send_message()
        .queue_url(&cloud.queue_url)
        .message_body("this is not an event")
        .send()
        .await
        .expect("SendMessage");

    // Each event is in the machine's status.
    let mr = wait_request(&env, "held", "every event in status", WAIT, |mr| {
        let noticed = machine(mr, warned).is_some_and(|m| m.interruption_notice_time.is_some());
        let rebalance = machine(mr, rebalanced).is_some_and(|m| {
            m.rebalance_recommendation_time.is_some()
                && m.scheduled_event
                    .as_ref()
                    .is_some_and(|s| s.kind == ScheduledEventKind::Retirement)
        });
        let gone = machine(mr, lost).is_some_and(|m| {
            m.state == MachineState::Terminated
                && m.termination_reason == Some(TerminationReason::Lost)
        });
        noticed && rebalance && gone
    })
    .await;
    let scheduled = machine(&mr, rebalanced)
        .and_then(|m| m.scheduled_event.clone())
        .expect("scheduled event");
    assert_eq!(
        scheduled.time.map(|t| t.0.to_string()).as_deref(),
        Some("2027-01-06T08:00:00Z")
    );

    // replaceLost: the lost machine is replaced without waiting for a sweep
    // (the sweep runs every 10 minutes here).
    let mr = wait_request(&env, "held", "Ready with a replacement", WAIT, |mr| {
        let live: BTreeSet<&str> = mr
            .status
            .iter()
            .flat_map(|s| &s.machines)
            .filter(|m| m.is_live())
            .map(|m| m.id.as_str())
            .collect();
        is_ready(mr) && live.len() == 3 && !live.contains(lost.as_str())
    })
    .await;
    assert!(machine(&mr, warned).is_some_and(|m| m.interruption_notice_time.is_some()));

    // An Event for each.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let wanted = [
        "SpotInterruption",
        "RebalanceRecommendation",
        "ScheduledChange",
        "MachineLost",
    ];
    eventually("an Event per event kind", WAIT, || {
        let events = events.clone();
        async move {
            let reasons: BTreeSet<String> = events
                .list(&ListParams::default().fields("involvedObject.name=held"))
                .await
                .expect("list events")
                .items
                .into_iter()
                .filter_map(|e| e.reason)
                .collect();
            wanted.iter().all(|r| reasons.contains(*r))
        }
    })
    .await;

    // Every message is gone: applied, unknown and malformed alike.
    eventually("an empty queue", WAIT, || async {
        cloud.messages_left().await.expect("queue attributes") == 0
    })
    .await;
    eventually("the messages counted", WAIT, || async {
        let count = |outcome: &str| {
            op.metric(
                "hostforge_interruption_queue_messages_total",
                &[&format!("outcome=\"{outcome}\"")],
            )
        };
        count("applied") >= 4.0 && count("unknown_instance") >= 1.0 && count("malformed") >= 1.0
    })
    .await;

    // The queue went through the forwarder, and spot notices were not polled
    // although spot machines were held and the interval is 1 s.
    assert!(fwd.calls("ReceiveMessage") >= 1);
    assert!(fwd.calls("DeleteMessage") >= 1);
    assert_eq!(fwd.calls("DescribeSpotInstanceRequests"), 0);
}

#[tokio::test]
async fn an_unreachable_queue_falls_back_to_polling() {
    let env = TestEnv::new("queue-missing").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    // No such queue: GetQueueUrl fails on every try.
    let missing = format!("hf-missing-{}", env.namespace);
    let op = OperatorProcess::start(&env, &config_with_queue(&env, &fwd, &missing)).await;
    spot_request(&env, "held", 1).await;
    eventually("spot notices polled again", WAIT, || async {
        fwd.calls("DescribeSpotInstanceRequests") >= 1
    })
    .await;
    assert!(fwd.calls("GetQueueUrl") >= 1);
    assert!(op.metric("hostforge_interruption_queue_failures_total", &[]) >= 1.0);
    assert_eq!(op.metric("hostforge_interruption_queue_up", &[]), 0.0);
}

/// The operator dies after the status write and before the delete (failpoint
/// `queue-before-delete`): the message stays in the queue, comes back after
/// its visibility timeout (60 s) to the restarted operator, and is handled
/// again with the same result: deleted, the notice time unchanged, one
/// SpotInterruption Event.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_kill_between_status_write_and_delete_handles_the_message_again() {
    let env = TestEnv::new("queue-crash").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let name = format!("hf-{}", env.namespace);
    let cloud = wire(&env, &name).await;
    let cfg = config_with_queue(&env, &fwd, &name);
    let op = OperatorProcess::start(&env, &cfg).await;
    let mr = spot_request(&env, "held", 1).await;
    drop(op);
    let id = mr.status.as_ref().expect("status").machines[0].id.clone();
    cloud
        .put_ec2(
            "EC2 Spot Instance Interruption Warning",
            &id,
            json!({"instance-id": id, "instance-action": "stop"}),
        )
        .await
        .expect("PutEvents");
    OperatorProcess::crash_at(&env, &cfg, "queue-before-delete", WAIT).await;

    let crashed = hostforge_testbed::machines::requests(&env)
        .get("held")
        .await
        .expect("get");
    let noticed = machine(&crashed, &id)
        .and_then(|m| m.interruption_notice_time.clone())
        .expect("the status write came first");
    assert_eq!(
        cloud.messages_left().await.expect("queue attributes"),
        1,
        "not deleted before the crash"
    );

    let _op = OperatorProcess::start(&env, &cfg).await;
    // The queue's visibility timeout (60 s) and a long poll (20 s) first.
    eventually(
        "the message handled again and deleted",
        REDELIVERY_WAIT,
        || async { cloud.messages_left().await.expect("queue attributes") == 0 },
    )
    .await;
    let mr = hostforge_testbed::machines::requests(&env)
        .get("held")
        .await
        .expect("get");
    assert_eq!(
        machine(&mr, &id).and_then(|m| m.interruption_notice_time.clone()),
        Some(noticed),
        "the same notice"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let notices: Vec<Event> = events
        .list(&ListParams::default().fields("involvedObject.name=held"))
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SpotInterruption"))
        .collect();
    assert_eq!(notices.len(), 1, "announced once: {notices:?}");
    assert_eq!(notices[0].count.unwrap_or(1), 1, "{notices:?}");
}
