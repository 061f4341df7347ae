//! The AWS adapter as the tests build it: pointed at an endpoint, with a
//! recorder of every call it reports.

use super::*;

/// Remembers every reported call.
#[derive(Default)]
pub(super) struct Recorder {
    pub(super) calls: Mutex<Vec<(String, &'static str, &'static str)>>,
}

impl CallObserver for Recorder {
    fn aws_call(
        &self,
        provider: &str,
        operation: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        assert!(seconds >= 0.0);
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push((
            provider.to_string(),
            operation,
            outcome,
        ));
    }
}

impl Recorder {
    pub(super) fn count(&self, operation: &str, outcome: &str) -> usize {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, op, out)| *op == operation && *out == outcome)
            .count()
    }

    pub(super) fn total(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

pub(super) fn provider_config(endpoint: &str) -> ProviderConfig {
    ProviderConfig {
        name: "aws-test".into(),
        kind: ProviderKind::Aws,
        region: hostforge_testbed::REGION.into(),
        endpoint_url: Some(endpoint.into()),
        assume_role_arn: None,
        rate_limits: Default::default(),
    }
}

/// The fixed credentials moto accepts.
pub(super) fn base_credentials() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new("testing", "testing", None, None, "test"))
}

/// The adapter on `endpoint` with the fixed credentials, reporting to a recorder.
pub(super) async fn adapter(endpoint: &str) -> (AwsProvider, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let provider = AwsProvider::connect_with_credentials(
        &provider_config(endpoint),
        base_credentials(),
        recorder.clone(),
    )
    .await;
    (provider, recorder)
}
