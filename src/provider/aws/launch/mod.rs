//! Launching one batch: RunInstances ([`run_instances`]) or an instant EC2
//! Fleet ([`fleet`]), with the batch's ClientToken and every tag applied in the
//! launch call itself. The request builders are plain functions of the spec, so
//! unit tests can read back exactly what would be sent.
//!
//! This module dispatches on the spec's API and holds what both launch paths
//! share (spec checks, token, user data, root device, instance profile); the
//! children use these helpers and never each other.

mod dry_run;
mod fleet;
mod layered;
mod reserve;
mod run_instances;
mod template_cache;

pub(super) use template_cache::TemplateCache;

use base64::Engine as _;

use crate::provider::aws::calls::Calls;
use crate::provider::aws::clients::AwsClients;
use crate::provider::aws::errors::detail;
use crate::provider::{LaunchAnswer, LaunchApi, LaunchSpec, ProviderError};

/// Where the root volume settings apply when the image did not say: the root
/// device of Amazon Linux and most current Linux images.
pub(super) const DEFAULT_ROOT_DEVICE: &str = "/dev/xvda";

/// Launches `spec` (see [`crate::provider::MachineProvider::launch`]).
/// Fleet launches use the templates `templates` keeps.
pub(super) async fn launch(
    clients: &AwsClients,
    calls: &Calls,
    templates: &TemplateCache,
    spec: &LaunchSpec,
) -> Result<LaunchAnswer, ProviderError> {
    match spec.api {
        LaunchApi::RunInstances => run_instances::launch(clients, calls, spec)
            .await
            .map(LaunchAnswer::of),
        LaunchApi::Fleet => fleet::launch(clients, calls, templates, spec).await,
    }
}

/// Dry-runs `spec`'s launch (see [`crate::provider::MachineProvider::validate_launch`]).
pub(super) async fn validate(
    clients: &AwsClients,
    calls: &Calls,
    spec: &LaunchSpec,
) -> Result<(), ProviderError> {
    dry_run::validate(clients, calls, spec).await
}

/// Refuses specs that cannot launch anything, before any call: both APIs need
/// a positive count and at least one instance type (or, for a fleet,
/// instance requirements).
fn check_common(operation: &'static str, spec: &LaunchSpec) -> Result<(), ProviderError> {
    if spec.count < 1 {
        return Err(invalid(
            operation,
            format!("batch {} asks for {} machines", spec.batch_id, spec.count),
        ));
    }
    if spec.instance_types.is_empty() && spec.options.instance_requirements.is_none() {
        return Err(invalid(
            operation,
            format!("batch {} names no instance type", spec.batch_id),
        ));
    }
    Ok(())
}

/// A bad spec found by the adapter itself (no call was made).
fn invalid(operation: &'static str, message: String) -> ProviderError {
    ProviderError::InvalidParameter(detail(operation, "InvalidParameterValue", message))
}

/// The spec's ClientToken, absent when empty (EC2 rejects an empty token).
fn client_token(spec: &LaunchSpec) -> Option<String> {
    Some(spec.client_token.clone()).filter(|t| !t.is_empty())
}

/// The user data as EC2 wants it: base64 of the bytes the machine should see.
fn user_data(spec: &LaunchSpec) -> Option<String> {
    spec.user_data
        .as_deref()
        .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
}

/// The device the root volume settings apply to.
fn root_device(spec: &LaunchSpec) -> String {
    spec.root_device_name
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_ROOT_DEVICE.to_string())
}

/// Whether an instance profile value is an ARN rather than a name.
fn is_arn(profile: &str) -> bool {
    profile.starts_with("arn:")
}

/// `None` for an empty list, so optional list parameters are left out.
fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

/// Builders and a full spec shared by the unit tests of both launch paths.
#[cfg(test)]
pub(super) mod fixtures {
    use crate::provider::{
        InstanceTypeChoice, LaunchApi, LaunchCapacity, LaunchOptions, LaunchSpec, MetadataSpec,
        VolumeSpec,
    };

    /// A client that is never sent anything: the builders only need one.
    pub(crate) fn offline_client() -> aws_sdk_ec2::Client {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-east-1"))
            .build();
        aws_sdk_ec2::Client::from_conf(config)
    }

    /// A spec using every field.
    pub(crate) fn spec() -> LaunchSpec {
        LaunchSpec {
            batch_id: "3f2a9c1e-4".into(),
            client_token: "tok-1".into(),
            count: 3,
            api: LaunchApi::RunInstances,
            image_id: "ami-1".into(),
            root_device_name: None,
            instance_types: vec![
                InstanceTypeChoice {
                    name: "c6i.xlarge".into(),
                    weight: None,
                },
                InstanceTypeChoice {
                    name: "m6i.xlarge".into(),
                    weight: Some(2),
                },
            ],
            subnet_ids: vec!["subnet-a".into(), "subnet-b".into()],
            availability_zone: None,
            capacity: LaunchCapacity::on_demand(),
            security_group_ids: vec!["sg-1".into()],
            key_name: Some("key".into()),
            instance_profile: Some("arn:aws:iam::1:instance-profile/p".into()),
            user_data: Some(b"#!/bin/sh\necho hi\n".to_vec()),
            root_volume: Some(VolumeSpec {
                size_gib: 50,
                volume_type: "gp3".into(),
                iops: Some(4000),
                throughput: Some(250),
                encrypted: true,
                kms_key_id: Some("key-1".into()),
            }),
            metadata: MetadataSpec {
                http_tokens_required: true,
                hop_limit: Some(2),
            },
            tags: [
                ("hostforge.io/batch".to_string(), "3f2a9c1e-4".to_string()),
                ("Name".to_string(), "w".to_string()),
            ]
            .into(),
            options: LaunchOptions::default(),
        }
    }
}
