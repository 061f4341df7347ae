//! One set of AWS SDK clients per provider instance, configured the same way
//! for EC2, SSM and SQS: region, optional endpoint override, optional role to
//! assume, bounded timeouts and the SDK's standard (jittered exponential) retry.
//! SQS alone gets a longer attempt timeout: a long-polling receive holds its
//! connection open for up to 20 s by design.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::SharedCredentialsProvider;

use crate::config::ProviderConfig;

/// Connecting to an endpoint that does not answer fails after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One HTTP attempt of an operation fails after this long (then it is retried).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// An operation, all attempts included, fails after this long, so a reconcile
/// never hangs on AWS.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per operation (the first included); throttling and 5xx answers are
/// retried by the SDK with jittered exponential backoff.
pub const MAX_ATTEMPTS: u32 = 3;
/// One HTTP attempt of an SQS operation fails after this long: a
/// long-polling receive waits up to 20 s for a message before SQS answers,
/// and that wait must not read as a timeout.
pub const SQS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// An SQS operation, all attempts included, fails after this long.
pub const SQS_OPERATION_TIMEOUT: Duration = Duration::from_secs(70);

/// The clients one provider instance uses.
#[derive(Debug, Clone)]
pub struct AwsClients {
    /// EC2: images, instances, subnets, security groups, instance types.
    pub ec2: aws_sdk_ec2::Client,
    /// SSM: image parameters.
    pub ssm: aws_sdk_ssm::Client,
    /// SQS: the interruption queue (same region, endpoint override and
    /// credentials as EC2, so a simulator or VPC endpoint serves both).
    pub sqs: aws_sdk_sqs::Client,
}

impl AwsClients {
    /// Builds the clients with the standard credential chain (environment
    /// variables first, so `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` never wait
    /// on the instance metadata service; then profile, web identity, ECS, IMDS).
    pub async fn connect(config: &ProviderConfig) -> AwsClients {
        AwsClients::from_sdk_config(&sdk_config(config, None).await)
    }

    /// Builds the clients with fixed credentials instead of the chain, for
    /// simulators and tests that must not depend on the process environment.
    pub async fn connect_with_credentials(
        config: &ProviderConfig,
        credentials: SharedCredentialsProvider,
    ) -> AwsClients {
        AwsClients::from_sdk_config(&sdk_config(config, Some(credentials)).await)
    }

    /// Builds the clients from an SDK config prepared elsewhere.
    pub fn from_sdk_config(sdk: &SdkConfig) -> AwsClients {
        AwsClients {
            ec2: aws_sdk_ec2::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
            sqs: sqs_client(sdk),
        }
    }
}

/// The SDK config for one provider instance. `credentials` replaces the
/// standard chain when given; an `assumeRoleArn` is assumed on top of either.
pub async fn sdk_config(
    config: &ProviderConfig,
    credentials: Option<SharedCredentialsProvider>,
) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .timeout_config(timeouts())
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    let base = loader.load().await;
    let Some(role) = &config.assume_role_arn else {
        return base;
    };
    // STS is called with the base config (same region, endpoint, timeouts and
    // credentials); the SDK refreshes the role's session before it expires.
    let assumed = AssumeRoleProvider::builder(role.clone())
        .session_name(format!("hostforge-{}", config.name))
        .configure(&base)
        .build()
        .await;
    base.into_builder()
        .credentials_provider(SharedCredentialsProvider::new(assumed))
        .build()
}

/// The SQS client of `sdk`: everything as for EC2 but the timeouts, which
/// leave room for a long poll.
fn sqs_client(sdk: &SdkConfig) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::config::Builder::from(sdk)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(SQS_ATTEMPT_TIMEOUT)
                .operation_timeout(SQS_OPERATION_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}
