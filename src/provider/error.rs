//! Why a provider call failed, grouped by what the caller should do about it
//! (retry, try another type or zone, report), with what the cloud said.

use std::fmt;

/// What the cloud said when a call failed: enough to act on and to show a
/// user, never credentials or raw request data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The API operation, e.g. `DescribeImages`.
    pub operation: &'static str,
    /// The cloud's error code, e.g. `InvalidAMIID.NotFound`, or one of ours for
    /// conditions found without an error (e.g. `NoMatchingImage`).
    pub code: String,
    /// The cloud's (or our) message.
    pub message: String,
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.operation, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Why a provider call failed, grouped by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The thing asked for does not exist (or is not visible yet).
    #[error("not found: {0}")]
    NotFound(ErrorDetail),
    /// The operator's credentials may not do this.
    #[error("access denied: {0}")]
    AccessDenied(ErrorDetail),
    /// The cloud's rate limit was hit; retry later with backoff.
    #[error("throttled: {0}")]
    Throttled(ErrorDetail),
    /// The request itself is wrong (a bad spec); retrying will not help.
    #[error("invalid parameter: {0}")]
    InvalidParameter(ErrorDetail),
    /// No capacity or quota for this type/zone/capacity type; try another.
    #[error("insufficient capacity: {0}")]
    Capacity(ErrorDetail),
    /// A 5xx, timeout or connection failure; retry with backoff.
    #[error("transient failure: {0}")]
    Transient(ErrorDetail),
    /// The cloud answered the call with a client error (HTTP 4xx) that no
    /// other variant names, e.g. `VolumeLimitExceeded`: EC2 refused the call
    /// and did nothing, so trying the same call again will not help
    /// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>:
    /// client errors are "usually caused by something the client did").
    #[error("refused: {0}")]
    Refused(ErrorDetail),
    /// Anything else (no answer, or an answer that cannot be read): the call
    /// may or may not have taken effect.
    #[error("unexpected error: {0}")]
    Unknown(ErrorDetail),
}

impl ProviderError {
    /// A bounded label for metrics, Event and condition reasons.
    pub fn category(&self) -> &'static str {
        match self {
            ProviderError::NotFound(_) => "NotFound",
            ProviderError::AccessDenied(_) => "AccessDenied",
            ProviderError::Throttled(_) => "Throttled",
            ProviderError::InvalidParameter(_) => "InvalidParameter",
            ProviderError::Capacity(_) => "Capacity",
            ProviderError::Transient(_) => "Transient",
            ProviderError::Refused(_) => "Refused",
            ProviderError::Unknown(_) => "Unknown",
        }
    }

    /// Whether the same call may succeed if simply tried again later.
    /// Capacity errors are not: the answer is a different type or zone.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Throttled(_) | ProviderError::Transient(_)
        )
    }

    /// The details, whatever the category.
    pub fn detail(&self) -> &ErrorDetail {
        match self {
            ProviderError::NotFound(d)
            | ProviderError::AccessDenied(d)
            | ProviderError::Throttled(d)
            | ProviderError::InvalidParameter(d)
            | ProviderError::Capacity(d)
            | ProviderError::Transient(d)
            | ProviderError::Refused(d)
            | ProviderError::Unknown(d) => d,
        }
    }

    /// The cloud's error code (e.g. `InvalidAMIID.NotFound`).
    pub fn code(&self) -> &str {
        &self.detail().code
    }

    /// Whether a launch was refused because every instance an earlier send
    /// of the same ClientToken launched is terminated: EC2 launches nothing
    /// and never will for that token, so the batch is settled with nothing
    /// live (EC2's `IdempotentInstanceTerminated`,
    /// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>).
    pub fn is_token_terminated(&self) -> bool {
        self.code() == IDEMPOTENT_INSTANCE_TERMINATED
    }

    /// Whether a launch was refused because its ClientToken was used before
    /// with other parameters: proof that an earlier send did launch, so its
    /// machines must be looked up, not launched again (EC2's
    /// `IdempotentParameterMismatch`,
    /// <https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>).
    pub fn is_token_mismatch(&self) -> bool {
        self.code() == IDEMPOTENT_PARAMETER_MISMATCH
    }
}

/// EC2's code for a token whose instances are all terminated.
pub const IDEMPOTENT_INSTANCE_TERMINATED: &str = "IdempotentInstanceTerminated";
/// EC2's code for a token reused with other parameters.
pub const IDEMPOTENT_PARAMETER_MISMATCH: &str = "IdempotentParameterMismatch";

#[cfg(test)]
mod tests {
    use super::*;

    fn detail() -> ErrorDetail {
        ErrorDetail {
            operation: "DescribeImages",
            code: "InvalidAMIID.NotFound".into(),
            message: "The image id '[ami-1]' does not exist".into(),
        }
    }

    #[test]
    fn categories_are_bounded_and_retry_follows_them() {
        let all = [
            ProviderError::NotFound(detail()),
            ProviderError::AccessDenied(detail()),
            ProviderError::Throttled(detail()),
            ProviderError::InvalidParameter(detail()),
            ProviderError::Capacity(detail()),
            ProviderError::Transient(detail()),
            ProviderError::Refused(detail()),
            ProviderError::Unknown(detail()),
        ];
        let cats: Vec<_> = all.iter().map(ProviderError::category).collect();
        assert_eq!(
            cats,
            [
                "NotFound",
                "AccessDenied",
                "Throttled",
                "InvalidParameter",
                "Capacity",
                "Transient",
                "Refused",
                "Unknown"
            ]
        );
        let retryable: Vec<_> = all.iter().map(ProviderError::is_retryable).collect();
        assert_eq!(
            retryable,
            [false, false, true, false, false, true, false, false]
        );
    }

    #[test]
    fn messages_carry_operation_code_and_text() {
        let e = ProviderError::NotFound(detail());
        assert_eq!(
            e.to_string(),
            "not found: DescribeImages failed: InvalidAMIID.NotFound: The image id '[ami-1]' does not exist"
        );
        assert_eq!(e.code(), "InvalidAMIID.NotFound");
    }

    #[test]
    fn token_answers_are_recognised_by_code_whatever_the_category() {
        let with = |code: &str| ErrorDetail {
            operation: "RunInstances",
            code: code.into(),
            message: String::new(),
        };
        let terminated = ProviderError::Refused(with(IDEMPOTENT_INSTANCE_TERMINATED));
        assert!(terminated.is_token_terminated());
        assert!(!terminated.is_token_mismatch());
        let mismatch = ProviderError::InvalidParameter(with(IDEMPOTENT_PARAMETER_MISMATCH));
        assert!(mismatch.is_token_mismatch());
        assert!(!mismatch.is_token_terminated());
        let other = ProviderError::Refused(with("VolumeLimitExceeded"));
        assert!(!other.is_token_terminated() && !other.is_token_mismatch());
    }
}
