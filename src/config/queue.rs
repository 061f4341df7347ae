//! `providers[].interruptionQueue`: an SQS queue URL or name, checked at
//! start so a typo stops the operator with the key named instead of a
//! receive failing every few seconds.

use super::checks::check_url;
use super::QueueRef;

/// Longest SQS queue name (SQS's own limit).
const MAX_QUEUE_NAME: usize = 80;

/// A queue URL (`http(s)://…/<account>/<name>`) or a bare queue name.
pub(super) fn check_queue(s: &str) -> Result<QueueRef, String> {
    if s.is_empty() {
        return Err("must not be empty (leave it out to poll for interruptions)".into());
    }
    if s.starts_with("https://") || s.starts_with("http://") {
        check_url(s)?;
        let name = s
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let segments = s
            .split("://")
            .nth(1)
            .map(|rest| rest.trim_end_matches('/').split('/').count())
            .unwrap_or(0);
        // host, account, name
        if segments < 3 || check_name(name).is_err() {
            return Err(format!(
                "{s:?} is not a queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue name>)"
            ));
        }
        return Ok(QueueRef::Url(s.to_string()));
    }
    check_name(s).map(|()| QueueRef::Name(s.to_string()))
}

/// SQS queue names: 1 to 80 letters, digits, `-` and `_`, with `.fifo` at
/// the end of a FIFO queue's.
fn check_name(s: &str) -> Result<(), String> {
    let base = s.strip_suffix(".fifo").unwrap_or(s);
    let ok = !base.is_empty()
        && s.len() <= MAX_QUEUE_NAME
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is neither a queue URL nor a queue name (1 to 80 letters, digits, '-' and '_')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OperatorConfig;

    #[test]
    fn urls_and_names_are_told_apart_and_checked() {
        assert_eq!(
            check_queue("https://sqs.us-east-1.amazonaws.com/123456789012/hostforge-interruptions"),
            Ok(QueueRef::Url(
                "https://sqs.us-east-1.amazonaws.com/123456789012/hostforge-interruptions".into()
            ))
        );
        assert_eq!(
            check_queue("hostforge-interruptions"),
            Ok(QueueRef::Name("hostforge-interruptions".into()))
        );
        assert_eq!(
            check_queue("events.fifo"),
            Ok(QueueRef::Name("events.fifo".into()))
        );
        for bad in [
            "",
            "my queue",
            "https://sqs.us-east-1.amazonaws.com/",
            "https://sqs.us-east-1.amazonaws.com/123/bad name",
            "http://sqs.example.com/123/q",
            &"q".repeat(81),
        ] {
            assert!(check_queue(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_config_reads_a_queue_per_provider_and_names_a_bad_one() {
        let c = OperatorConfig::from_yaml(
            "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1, interruptionQueue: hf-events}\n- {name: b, type: aws, region: us-east-1}\n",
        )
        .expect("valid");
        assert_eq!(
            c.interruption_queue("a"),
            Some(&QueueRef::Name("hf-events".into()))
        );
        assert_eq!(c.interruption_queue("b"), None, "polling by default");
        let err = OperatorConfig::from_yaml(
            "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1, interruptionQueue: 'no such/queue'}\n",
        )
        .expect_err("bad queue")
        .to_string();
        assert!(
            err.starts_with("providers[0].interruptionQueue: \"no such/queue\" is neither"),
            "{err}"
        );
    }
}
