//! The interruption queue on SQS: receive by long polling, delete each message,
//! resolve a queue name to its URL once. Calls are reported to the observer
//! like EC2's, but take no EC2 rate-limit tokens (SQS has its own, far
//! higher, limits).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use tracing::warn;

use super::calls::Calls;
use super::event_message;
use super::limits::Limiter;
use crate::config::rate_limits::RateLimitConfig;
use crate::config::QueueRef;
use crate::provider::queue::{
    EventQueue, QueueMessage, QueueMessageError, MAX_MESSAGES, MAX_WAIT_SECONDS,
};
use crate::provider::{CallObserver, ErrorDetail, ProviderError};

/// How long a received message stays hidden from other receives: long
/// enough for the consumer to see the machine's status written and delete
/// it, short enough that a message an operator crash left behind is handled
/// again within a minute.
pub const VISIBILITY_TIMEOUT_SECONDS: i32 = 60;

/// One provider instance's interruption queue.
pub struct SqsQueue {
    sqs: aws_sdk_sqs::Client,
    target: QueueRef,
    url: OnceCell<String>,
    calls: Calls,
}

impl SqsQueue {
    /// The queue `target` of provider instance `provider`, reached through
    /// `sqs` (see [`super::AwsClients::sqs`]).
    pub fn new(
        provider: &str,
        sqs: aws_sdk_sqs::Client,
        target: QueueRef,
        observer: Arc<dyn CallObserver>,
    ) -> SqsQueue {
        let mut unlimited = RateLimitConfig::default();
        unlimited.enabled = false;
        SqsQueue {
            sqs,
            target,
            url: OnceCell::new(),
            calls: Calls::new(provider, observer, Arc::new(Limiter::new(unlimited))),
        }
    }
}

#[async_trait]
impl EventQueue for SqsQueue {
    fn provider(&self) -> &str {
        self.calls.provider()
    }

    async fn resolve(&self) -> Result<String, ProviderError> {
        let url = self
            .url
            .get_or_try_init(|| async {
                match &self.target {
                    QueueRef::Url(url) => Ok(url.clone()),
                    QueueRef::Name(name) => {
                        let out = self
                            .calls
                            .run("GetQueueUrl", || {
                                self.sqs.get_queue_url().queue_name(name).send()
                            })
                            .await?;
                        out.queue_url.ok_or_else(|| {
                            ProviderError::Unknown(ErrorDetail {
                                operation: "GetQueueUrl",
                                code: "NoQueueUrl".into(),
                                message: format!("the answer for queue {name:?} held no URL"),
                            })
                        })
                    }
                }
            })
            .await?;
        Ok(url.clone())
    }

    async fn receive(&self, wait_seconds: i32) -> Result<Vec<QueueMessage>, ProviderError> {
        let url = self.resolve().await?;
        let out = self
            .calls
            .run("ReceiveMessage", || {
                self.sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(MAX_MESSAGES)
                    .wait_time_seconds(wait_seconds.clamp(0, MAX_WAIT_SECONDS))
                    .visibility_timeout(VISIBILITY_TIMEOUT_SECONDS)
                    .send()
            })
            .await?;
        let mut messages = Vec::new();
        for m in out.messages.unwrap_or_default() {
            let Some(receipt) = m.receipt_handle else {
                warn!(provider = %self.provider(), "a queue message without a receipt handle cannot be deleted; skipped");
                continue;
            };
            let event = event_message::parse(m.body.as_deref().unwrap_or_default()).map_err(|e| {
                QueueMessageError {
                    category: e.category(),
                    message: e.to_string(),
                }
            });
            messages.push(QueueMessage {
                receipt,
                message_id: m.message_id.unwrap_or_default(),
                event,
            });
        }
        Ok(messages)
    }

    async fn delete(&self, receipts: &[String]) -> Result<(), ProviderError> {
        if receipts.is_empty() {
            return Ok(());
        }
        let url = self.resolve().await?;
        // One DeleteMessage per message (a handful per receive): the batch
        // call is authorised by the same IAM action and saves nothing here.
        // Every receipt is tried; the first failure is reported.
        let mut first_error = None;
        for receipt in receipts {
            let sent = self
                .calls
                .run("DeleteMessage", || {
                    self.sqs
                        .delete_message()
                        .queue_url(&url)
                        .receipt_handle(receipt)
                        .send()
                })
                .await;
            if let Err(err) = sent {
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            None => Ok(()),
            Some(err) => Err(err),
        }
    }
}
