//! The cloud's side of an interruption queue, on moto: an SQS queue, an
//! EventBridge rule on the default bus routing EC2's (and AWS Health's)
//! events to it, as docs/interruptions.md sets them up, and PutEvents of the
//! events in AWS's documented JSON. One implementation for the tests
//! (tests/interruption_queue.rs, tests/replacement.rs) and the bench
//! (hack/bench/scenarios/interruptions.rs), so their wiring cannot drift.
//!
//! It talks to moto directly, not through the forwarder, which stands for
//! the operator's network path only. moto delivers EventBridge → SQS inside
//! the PutEvents call, the message body being the event itself, as on AWS.
//!
//! Event shapes:
//! [spot interruption warning](https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html),
//! [rebalance recommendation](https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html),
//! [state-change notification](https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instance-state-changes.html),
//! [AWS Health events](https://docs.aws.amazon.com/health/latest/ug/aws-health-events-eventbridge-schema.html).

use aws_sdk_eventbridge::types::{PutEventsRequestEntry, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};

use crate::REGION;

/// What can go wrong wiring the queue or putting an event: the bench reports
/// it as a missed figure, tests `expect` it.
#[derive(Debug, thiserror::Error)]
pub enum CloudEventsError {
    /// An SQS or EventBridge call failed.
    #[error("{call}: {message}")]
    Call {
        /// The API call (or builder) that failed.
        call: &'static str,
        /// The SDK's error, rendered.
        message: String,
    },
    /// A call answered without the field the wiring needs.
    #[error("{0} answered without the field it must carry")]
    Missing(&'static str),
    /// PutEvents answered but did not accept every entry.
    #[error("PutEvents: {count} entries failed: {output}")]
    Failed {
        /// `FailedEntryCount`.
        count: i32,
        /// The whole answer, for the entries' error codes.
        output: String,
    },
}

fn call_error(call: &'static str, e: impl std::fmt::Display) -> CloudEventsError {
    CloudEventsError::Call {
        call,
        message: e.to_string(),
    }
}

/// The EC2 events an interruption queue carries, so callers name them
/// rather than spell their `detail-type`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ec2Event {
    /// `EC2 Spot Instance Interruption Warning` (instance-action terminate).
    SpotWarning,
    /// `EC2 Instance Rebalance Recommendation`.
    Rebalance,
    /// `EC2 Instance State-change Notification` to `terminated`.
    Terminated,
}

impl Ec2Event {
    /// Every kind, in the order the rules list them.
    pub const ALL: [Ec2Event; 3] = [
        Ec2Event::SpotWarning,
        Ec2Event::Rebalance,
        Ec2Event::Terminated,
    ];

    /// The event's EventBridge `detail-type`, as EC2 sends it.
    pub fn detail_type(self) -> &'static str {
        match self {
            Ec2Event::SpotWarning => "EC2 Spot Instance Interruption Warning",
            Ec2Event::Rebalance => "EC2 Instance Rebalance Recommendation",
            Ec2Event::Terminated => "EC2 Instance State-change Notification",
        }
    }

    /// The event's `detail` about instance `id`, as EC2 documents it (see
    /// the module doc for the pages).
    pub fn detail(self, id: &str) -> Value {
        match self {
            Ec2Event::SpotWarning => json!({"instance-id": id, "instance-action": "terminate"}),
            Ec2Event::Rebalance => json!({"instance-id": id}),
            Ec2Event::Terminated => json!({"instance-id": id, "state": "terminated"}),
        }
    }

    /// A short label, for the bench's table.
    pub fn label(self) -> &'static str {
        match self {
            Ec2Event::SpotWarning => "spot interruption warning",
            Ec2Event::Rebalance => "rebalance recommendation",
            Ec2Event::Terminated => "state-change to terminated",
        }
    }
}

/// The ARN EC2 puts in an event's `resources` for instance `id`.
pub fn instance_arn(id: &str) -> String {
    format!("arn:aws:ec2:{REGION}:123456789012:instance/{id}")
}

/// An SQS queue on moto with an EventBridge rule of the same name feeding it,
/// and the clients to put events and look at the queue.
pub struct EventQueue {
    /// SQS on moto, for looking at (or writing to) the queue directly.
    pub sqs: aws_sdk_sqs::Client,
    /// EventBridge on moto, for putting events on the default bus.
    pub events: aws_sdk_eventbridge::Client,
    /// The queue's URL.
    pub queue_url: String,
}

impl EventQueue {
    /// Creates queue `name` on moto at `moto_url` and a rule of the same name
    /// on the default bus, matching events whose `source` is one of `sources`
    /// and whose `detail-type` is one of `detail_types`, targeting the queue.
    pub async fn wire(
        moto_url: &str,
        name: &str,
        sources: &[&str],
        detail_types: &[&str],
    ) -> Result<EventQueue, CloudEventsError> {
        let config = crate::aws_config(moto_url);
        let sqs = aws_sdk_sqs::Client::new(&config);
        let events = aws_sdk_eventbridge::Client::new(&config);
        let queue_url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| call_error("CreateQueue", e))?
            .queue_url
            .ok_or(CloudEventsError::Missing("CreateQueue"))?;
        let arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| call_error("GetQueueAttributes", e))?
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or(CloudEventsError::Missing("GetQueueAttributes"))?;
        let pattern = json!({"source": sources, "detail-type": detail_types});
        events
            .put_rule()
            .name(name)
            .event_pattern(pattern.to_string())
            .send()
            .await
            .map_err(|e| call_error("PutRule", e))?;
        let target = Target::builder()
            .id("queue")
            .arn(arn)
            .build()
            .map_err(|e| call_error("Target", e))?;
        events
            .put_targets()
            .rule(name)
            .targets(target)
            .send()
            .await
            .map_err(|e| call_error("PutTargets", e))?;
        Ok(EventQueue {
            sqs,
            events,
            queue_url,
        })
    }

    /// Puts one event on the default bus; returns once PutEvents has
    /// answered and accepted it (moto delivers to the queue inside the call).
    pub async fn put(
        &self,
        source: &str,
        detail_type: &str,
        resources: &[&str],
        detail: Value,
    ) -> Result<(), CloudEventsError> {
        let mut entry = PutEventsRequestEntry::builder()
            .source(source)
            .detail_type(detail_type)
            .detail(detail.to_string());
        for r in resources {
            entry = entry.resources(*r);
        }
        let out = self
            .events
            .put_events()
            .entries(entry.build())
            .send()
            .await
            .map_err(|e| call_error("PutEvents", e))?;
        if out.failed_entry_count != 0 {
            return Err(CloudEventsError::Failed {
                count: out.failed_entry_count,
                output: format!("{out:?}"),
            });
        }
        Ok(())
    }

    /// Puts an `aws.ec2` event of `detail_type` about instance `id` with
    /// `detail` (for details other than [`Ec2Event::detail`]'s).
    pub async fn put_ec2(
        &self,
        detail_type: &str,
        id: &str,
        detail: Value,
    ) -> Result<(), CloudEventsError> {
        self.put("aws.ec2", detail_type, &[&instance_arn(id)], detail)
            .await
    }

    /// Puts `event` about instance `id` in EC2's documented shape.
    pub async fn put_event(&self, event: Ec2Event, id: &str) -> Result<(), CloudEventsError> {
        self.put_ec2(event.detail_type(), id, event.detail(id))
            .await
    }

    /// Messages in the queue, visible or received and not deleted.
    pub async fn messages_left(&self) -> Result<u64, CloudEventsError> {
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| call_error("GetQueueAttributes", e))?
            .attributes
            .unwrap_or_default();
        Ok(attrs.values().map(|v| v.parse::<u64>().unwrap_or(0)).sum())
    }
}
