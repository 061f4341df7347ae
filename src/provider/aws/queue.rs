//! The interruption queue on SQS: receive by long polling, delete by batch,
//! resolve a queue name to its URL once. Calls are reported to the observer
//! like EC2's, but take no EC2 rate-limit tokens (SQS has its own, far
//! higher, limits).

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
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
        for chunk in receipts.chunks(MAX_MESSAGES as usize) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, receipt) in chunk.iter().enumerate() {
                let entry = DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .map_err(|e| {
                        ProviderError::InvalidParameter(ErrorDetail {
                            operation: "DeleteMessageBatch",
                            code: "InvalidEntry".into(),
                            message: e.to_string(),
                        })
                    })?;
                entries.push(entry);
            }
            let out = self
                .calls
                .run("DeleteMessageBatch", || {
                    self.sqs
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                })
                .await?;
            if let Some(failed) = out.failed.first() {
                return Err(ProviderError::Unknown(ErrorDetail {
                    operation: "DeleteMessageBatch",
                    code: failed.code.clone(),
                    message: format!(
                        "{} of {} deletes failed: {}",
                        out.failed.len(),
                        chunk.len(),
                        failed.message.clone().unwrap_or_default()
                    ),
                }));
            }
        }
        Ok(())
    }
}
