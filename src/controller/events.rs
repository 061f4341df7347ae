//! One way to publish an Event on an object hostforge reconciles: typed
//! reason, a note cut to the apiserver's limit, and a failure to publish
//! logged rather than failing the reconcile (an Event is a courtesy).

use std::error::Error as StdError;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use super::reason::Reason;
use super::{Context, Error};

/// The apiserver's limit on an Event's note, in bytes.
pub const NOTE_MAX: usize = 1024;

/// Publishes one Event on `object`.
pub async fn publish(
    recorder: &Recorder,
    object: &ObjectReference,
    type_: EventType,
    reason: Reason,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.as_str().into(),
        note: Some(truncate(note, NOTE_MAX)),
        action: action.into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, object).await {
        warn!(
            object = object.name.as_deref().unwrap_or_default(),
            reason = %reason,
            error = %err,
            "publishing event failed"
        );
    }
}

/// Publishes a Warning Event naming the error a reconcile ended in, from a
/// controller's synchronous error policy (the Event goes out in the
/// background; the retry does not wait for it).
pub fn spawn_failure(ctx: Arc<Context>, object: ObjectReference, err: &Error) {
    let reason = Reason::of_error(err);
    let note = chain(err);
    tokio::spawn(async move {
        publish(
            &ctx.recorder,
            &object,
            EventType::Warning,
            reason,
            "Reconcile",
            &note,
        )
        .await;
    });
}

/// The error and every cause under it, joined: what a user reads in a
/// Warning Event or a condition message.
pub fn chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Shortens `s` to at most `max` bytes (on a character boundary), the
/// ellipsis included.
pub fn truncate(s: &str, max: usize) -> String {
    const ELLIPSIS: &str = "…";
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_counts_the_ellipsis_and_keeps_characters_whole() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("abcdefghij", 8);
        assert_eq!(cut, "abcde…");
        assert!(cut.len() <= 8);
        let cut = truncate("ééééé", 6);
        assert!(cut.len() <= 6, "{cut}");
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn the_chain_names_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner;
        assert_eq!(chain(&Outer(Inner)), "outer: inner");
    }
}
