//! The cloud's side of an interruption queue, on moto: an SQS queue, an
//! EventBridge rule on the default bus routing EC2's events to it (as
//! docs/interruptions.md sets them up), and PutEvents of EC2's documented
//! event JSON. Talks to moto directly, not through the forwarder, which
//! stands for the operator's network path only.

use aws_sdk_eventbridge::types::{PutEventsRequestEntry, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use hostforge_testbed::REGION;
use serde_json::{json, Value};

/// What can go wrong wiring the queue or putting an event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CloudEventsError {
    #[error("{call}: {message}")]
    Call { call: &'static str, message: String },
    #[error("{0} answered without the field it must carry")]
    Missing(&'static str),
    #[error("PutEvents: {0} entries failed")]
    Failed(i32),
}

fn call_error(call: &'static str, e: impl std::fmt::Display) -> CloudEventsError {
    CloudEventsError::Call {
        call,
        message: e.to_string(),
    }
}

/// Credentials and region for moto.
fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
            aws_sdk_sqs::config::Credentials::new("testing", "testing", None, None, "bench"),
        ))
        .build()
}

/// A queue with an EventBridge rule feeding it EC2's interruption events.
pub(crate) struct EventQueue {
    events: aws_sdk_eventbridge::Client,
}

/// The EC2 events the bench puts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Ec2Event {
    /// `EC2 Spot Instance Interruption Warning` (instance-action terminate).
    SpotWarning,
    /// `EC2 Instance Rebalance Recommendation`.
    Rebalance,
    /// `EC2 Instance State-change Notification` to `terminated`.
    Terminated,
}

impl Ec2Event {
    fn detail_type(self) -> &'static str {
        match self {
            Ec2Event::SpotWarning => "EC2 Spot Instance Interruption Warning",
            Ec2Event::Rebalance => "EC2 Instance Rebalance Recommendation",
            Ec2Event::Terminated => "EC2 Instance State-change Notification",
        }
    }

    /// The event's `detail`, as EC2 documents it
    /// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html,
    /// https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html,
    /// https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instance-state-changes.html).
    fn detail(self, id: &str) -> Value {
        match self {
            Ec2Event::SpotWarning => json!({"instance-id": id, "instance-action": "terminate"}),
            Ec2Event::Rebalance => json!({"instance-id": id}),
            Ec2Event::Terminated => json!({"instance-id": id, "state": "terminated"}),
        }
    }

    /// A short label for the table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Ec2Event::SpotWarning => "spot interruption warning",
            Ec2Event::Rebalance => "rebalance recommendation",
            Ec2Event::Terminated => "state-change to terminated",
        }
    }
}

impl EventQueue {
    /// Creates queue `name` on moto at `moto_url` and a rule of the same name
    /// sending EC2's interruption events to it.
    pub(crate) async fn wire(moto_url: &str, name: &str) -> Result<EventQueue, CloudEventsError> {
        let config = sdk_config(moto_url);
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
        let pattern = json!({
            "source": ["aws.ec2"],
            "detail-type": [
                Ec2Event::SpotWarning.detail_type(),
                Ec2Event::Rebalance.detail_type(),
                Ec2Event::Terminated.detail_type(),
            ]
        });
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
        Ok(EventQueue { events })
    }

    /// Puts `event` about instance `id` on the default bus; returns once
    /// PutEvents has answered (moto delivers to the queue inside the call).
    pub(crate) async fn put(&self, event: Ec2Event, id: &str) -> Result<(), CloudEventsError> {
        let arn = format!("arn:aws:ec2:{REGION}:123456789012:instance/{id}");
        let entry = PutEventsRequestEntry::builder()
            .source("aws.ec2")
            .detail_type(event.detail_type())
            .resources(arn)
            .detail(event.detail(id).to_string())
            .build();
        let out = self
            .events
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| call_error("PutEvents", e))?;
        if out.failed_entry_count != 0 {
            return Err(CloudEventsError::Failed(out.failed_entry_count));
        }
        Ok(())
    }
}
