//! The hook through which every cloud call is counted, so metrics see calls by
//! operation and outcome without the adapters knowing the metrics library.

/// Told about every cloud API call, so metrics can count calls by operation and
/// outcome without the adapters knowing about the metrics library.
pub trait CallObserver: Send + Sync {
    /// One call (one page of a paginated call) finished. `outcome` is `"ok"` or a
    /// [`super::ProviderError::category`]; `seconds` includes the SDK's own retries.
    fn aws_call(
        &self,
        provider: &str,
        operation: &'static str,
        outcome: &'static str,
        seconds: f64,
    );

    /// A call of `operation` waited `seconds` for the operator's own
    /// client-side token bucket (`rateLimits`) before it was made: how much
    /// of a burst's time is the bucket's, not EC2's.
    fn rate_limit_wait(&self, _provider: &str, _operation: &'static str, _seconds: f64) {}
}

/// An observer that ignores everything, for tools and tests that need no metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl CallObserver for NoopObserver {
    fn aws_call(
        &self,
        _provider: &str,
        _operation: &'static str,
        _outcome: &'static str,
        _seconds: f64,
    ) {
    }
}
