//! Every AWS call goes through [`Calls::run`], so each one is timed, classified
//! and reported to the observer in exactly one place.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use tracing::debug;

use super::errors;
use crate::provider::{CallObserver, ProviderError};

/// The provider instance's name and observer, shared by its modules.
#[derive(Clone)]
pub(super) struct Calls {
    provider: String,
    observer: Arc<dyn CallObserver>,
}

impl Calls {
    /// Calls made through this report as `provider` to `observer`.
    pub(super) fn new(provider: impl Into<String>, observer: Arc<dyn CallObserver>) -> Calls {
        Calls {
            provider: provider.into(),
            observer,
        }
    }

    /// The provider instance's name.
    pub(super) fn provider(&self) -> &str {
        &self.provider
    }

    /// Awaits one SDK call (`send()` future) of `operation`, reports it and maps
    /// its error.
    pub(super) async fn run<T, E, F>(
        &self,
        operation: &'static str,
        call: F,
    ) -> Result<T, ProviderError>
    where
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let start = Instant::now();
        let result = call.await.map_err(|e| errors::from_sdk(operation, e));
        let seconds = start.elapsed().as_secs_f64();
        let outcome = match &result {
            Ok(_) => "ok",
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
