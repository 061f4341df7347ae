//! Every AWS call goes through [`Calls::run`], so each one is rate limited
//! (client-side EC2 token buckets, [`super::limits`]), timed, classified and
//! reported to the observer in exactly one place.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use tracing::debug;

use super::errors;
use super::limits::Limiter;
use crate::provider::{CallObserver, ProviderError};

/// The provider instance's name, observer and rate limiter, shared by its
/// modules.
#[derive(Clone)]
pub(super) struct Calls {
    provider: String,
    observer: Arc<dyn CallObserver>,
    limiter: Arc<Limiter>,
}

impl Calls {
    /// Calls made through this report as `provider` to `observer` and wait
    /// for `limiter`'s tokens.
    pub(super) fn new(
        provider: impl Into<String>,
        observer: Arc<dyn CallObserver>,
        limiter: Arc<Limiter>,
    ) -> Calls {
        Calls {
            provider: provider.into(),
            observer,
            limiter,
        }
    }

    /// The provider instance's name.
    pub(super) fn provider(&self) -> &str {
        &self.provider
    }

    /// Waits for `operation`'s request token, then makes one SDK call of
    /// `operation` (`call` returns its `send()` future), reports it and maps
    /// its error. The wait is not part of the reported latency, and not of
    /// the SDK's operation timeout. For calls that also cost instance tokens
    /// see [`Calls::run_for`].
    ///
    /// The call's future is made, on the heap, only once the token is here:
    /// an SDK call future is about 10 KB before it is ever polled, and a
    /// thousand launches waiting for RunInstances tokens held 23 MB of them.
    pub(super) async fn run<T, E, C, F>(
        &self,
        operation: &'static str,
        call: C,
    ) -> Result<T, ProviderError>
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        self.run_for(operation, 0, call).await
    }

    /// [`Calls::run`] of a call that also costs `instances` tokens of its
    /// operation's instance bucket (RunInstances: its `MaxCount`;
    /// TerminateInstances: its ids). Both kinds of token are taken at the
    /// one moment the call goes, as EC2 charges them when it arrives.
    pub(super) async fn run_for<T, E, C, F>(
        &self,
        operation: &'static str,
        instances: usize,
        call: C,
    ) -> Result<T, ProviderError>
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let n = u32::try_from(instances).unwrap_or(u32::MAX);
        let waited = self.limiter.acquire(operation, n).await;
        if !waited.is_zero() {
            self.observer
                .rate_limit_wait(&self.provider, operation, waited.as_secs_f64());
            debug!(provider = %self.provider, operation, instances, waited = waited.as_secs_f64(),
                "waited for the rate limit");
        }
        let start = Instant::now();
        let result = Box::pin(call())
            .await
            .map_err(|e| errors::from_sdk(operation, e));
        let seconds = start.elapsed().as_secs_f64();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if is_dry_run_ok(e) => "dry-run",
            Err(e) => e.category(),
        };
        self.observer
            .aws_call(&self.provider, operation, outcome, seconds);
        match &result {
            Ok(_) => debug!(provider = %self.provider, operation, seconds, "aws call"),
            Err(e) => {
                debug!(provider = %self.provider, operation, seconds, error = %e, "aws call failed")
            }
        }
        result
    }
}

/// EC2's answer to a dry run that would have succeeded.
const DRY_RUN_OPERATION: &str = "DryRunOperation";

fn is_dry_run_ok(e: &ProviderError) -> bool {
    e.detail().code == DRY_RUN_OPERATION
}

impl Calls {
    /// [`Calls::run`] of a call sent with `DryRun=true`: `Ok` when EC2
    /// answers `DryRunOperation` (the call would have succeeded; counted in
    /// metrics with outcome `dry-run`), else EC2's refusal. An answer that
    /// is a success is an error too: the cloud did not honour the dry run,
    /// and may have done the call.
    pub(super) async fn dry_run<T, E, C, F>(
        &self,
        operation: &'static str,
        call: C,
    ) -> Result<(), ProviderError>
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        match self.run(operation, call).await {
            Err(e) if is_dry_run_ok(&e) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(ProviderError::Unknown(errors::detail(
                operation,
                "DryRunIgnored",
                format!("{operation} with DryRun=true answered as if it was made"),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use aws_sdk_ec2::operation::run_instances::RunInstancesError;

    use super::*;
    use crate::config::rate_limits::RateLimitConfig;

    /// Records every rate-limit wait it is told about.
    #[derive(Default)]
    struct Waits(Mutex<Vec<(String, &'static str, f64)>>);

    impl CallObserver for Waits {
        fn aws_call(&self, _: &str, _: &'static str, _: &'static str, _: f64) {}

        fn rate_limit_wait(&self, provider: &str, operation: &'static str, seconds: f64) {
            if let Ok(mut w) = self.0.lock() {
                w.push((provider.to_string(), operation, seconds));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_the_instance_bucket_is_reported() {
        let waits = Arc::new(Waits::default());
        let calls = Calls::new(
            "aws-default",
            waits.clone(),
            Arc::new(Limiter::new(RateLimitConfig::default())),
        );
        // A call that never reaches the network: only its tokens matter.
        let sent = || async { Ok::<(), SdkError<RunInstancesError, HttpResponse>>(()) };
        // EC2's launched-instances bucket holds 1,000: the first takes it all.
        calls
            .run_for("RunInstances", 1000, sent)
            .await
            .expect("no call fails");
        assert!(waits.0.lock().expect("lock").is_empty());
        calls
            .run_for("RunInstances", 10, sent)
            .await
            .expect("no call fails");
        let seen = waits.0.lock().expect("lock").clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let (provider, operation, seconds) = &seen[0];
        assert_eq!(
            (provider.as_str(), *operation),
            ("aws-default", "RunInstances")
        );
        assert!(*seconds > 0.0, "{seconds}");
    }
}
