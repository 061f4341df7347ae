//! EC2 clients through the forwarder, launches marked per test, and what
//! moto and the SDK saw of them.

use super::*;

/// Tag that marks the instances of one test, so moto's shared state can be
/// asked about that test's launches only.
pub(super) const MARK: &str = "hostforge.io/forwarder-test";

fn ec2_with(endpoint: &str, retry: RetryConfig) -> aws_sdk_ec2::Client {
    let conf = hostforge_testbed::ec2_client(endpoint)
        .config()
        .to_builder()
        .retry_config(retry)
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// One attempt per call: the SDK's answer is exactly the forwarder's.
pub(super) fn ec2_no_retry(endpoint: &str) -> aws_sdk_ec2::Client {
    ec2_with(endpoint, RetryConfig::disabled())
}

/// The SDK's standard strategy (3 attempts) with millisecond backoff.
pub(super) fn ec2_fast_retry(endpoint: &str) -> aws_sdk_ec2::Client {
    ec2_with(
        endpoint,
        RetryConfig::standard()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(5)),
    )
}

pub(super) async fn launch(
    ec2: &aws_sdk_ec2::Client,
    ami: &str,
    instance_type: &str,
    marker: &str,
    count: i32,
) -> Result<Vec<String>, SdkError<RunInstancesError>> {
    let out = ec2
        .run_instances()
        .image_id(ami)
        .instance_type(InstanceType::from(instance_type))
        .min_count(1)
        .max_count(count)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key(MARK).value(marker).build())
                .build(),
        )
        .send()
        .await?;
    Ok(out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect())
}

/// `(instance id, type)` of the instances moto itself holds with tag
/// `MARK=marker`, asked directly, not through the forwarder.
pub(super) async fn in_moto(env: &TestEnv, marker: &str) -> Vec<(String, String)> {
    let out = env
        .ec2()
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{MARK}"))
                .values(marker)
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances directly in moto");
    let mut found: Vec<(String, String)> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.instance_type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    found.sort();
    found
}

/// The AWS error code and HTTP status the SDK saw.
pub(super) fn code_and_status<E: ProvideErrorMetadata>(err: &SdkError<E>) -> (String, Option<u16>) {
    (
        err.code().unwrap_or("<no code>").to_string(),
        err.raw_response().map(|r| r.status().as_u16()),
    )
}
