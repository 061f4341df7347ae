//! The interruption queue port: where the cloud's own events about machines
//! arrive (on AWS, an SQS queue fed by EventBridge rules), read by long
//! polling so a notice reaches a machine's status in seconds, without the
//! per-interval describe calls that share the launch rate-limit budget.

use async_trait::async_trait;

use super::{CloudEvent, ProviderError};

/// The most messages one receive returns (SQS's own limit).
pub const MAX_MESSAGES: i32 = 10;

/// The longest a receive waits for a message (SQS's own limit, in seconds).
pub const MAX_WAIT_SECONDS: i32 = 20;

/// One message taken from the queue, not yet deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// What deleting this receipt of the message takes.
    pub receipt: String,
    /// The queue's id of the message, for logs.
    pub message_id: String,
    /// The event the body holds, or why it holds none hostforge reads (the
    /// error's text is for logs, its category for metrics).
    pub event: Result<CloudEvent, QueueMessageError>,
}

/// Why a message body is not an event: its text for logs, a bounded
/// category for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueueMessageError {
    /// A bounded name (`not_json`, `missing_field`, `bad_value`,
    /// `unsupported`).
    pub category: &'static str,
    /// What is wrong, for a human.
    pub message: String,
}

/// A queue of cloud events for one provider instance.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// The provider instance the queue belongs to (metrics, logs).
    fn provider(&self) -> &str;

    /// The queue's address, looked up from its name the first time when the
    /// config gave a name (then kept).
    async fn resolve(&self) -> Result<String, ProviderError>;

    /// Waits up to `wait_seconds` (at most [`MAX_WAIT_SECONDS`]) for up to
    /// [`MAX_MESSAGES`] messages. A received message is hidden from other
    /// receives for the queue's visibility timeout and comes back unless it
    /// is deleted.
    async fn receive(&self, wait_seconds: i32) -> Result<Vec<QueueMessage>, ProviderError>;

    /// Deletes messages by their receipts; no call for none.
    async fn delete(&self, receipts: &[String]) -> Result<(), ProviderError>;
}
