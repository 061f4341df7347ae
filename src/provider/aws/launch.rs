//! Launching one batch: RunInstances (here) or an instant EC2 Fleet
//! ([`super::fleet`]), with the batch's ClientToken and every tag applied in the
//! launch call itself. The request builders are plain functions of the spec, so
//! unit tests can read back exactly what would be sent.

use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMarketOptionsRequest, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceType, MarketType, SpotMarketOptions, VolumeType,
};
use base64::Engine as _;

use super::calls::Calls;
use super::clients::AwsClients;
use super::describe::to_machine;
use super::errors::detail;
use super::{fleet, tags};
use crate::provider::{LaunchApi, LaunchSpec, Machine, ProviderError};

/// Where the root volume settings apply when the image did not say: the root
/// device of Amazon Linux and most current Linux images.
pub(super) const DEFAULT_ROOT_DEVICE: &str = "/dev/xvda";

/// Launches `spec` (see [`crate::provider::MachineProvider::launch`]).
pub(super) async fn launch(
    clients: &AwsClients,
    calls: &Calls,
    spec: &LaunchSpec,
) -> Result<Vec<Machine>, ProviderError> {
    match spec.api {
        LaunchApi::RunInstances => run_instances(clients, calls, spec).await,
        LaunchApi::Fleet => fleet::launch(clients, calls, spec).await,
    }
}

/// One RunInstances call; its answer holds the full instances, so no describe
/// follows.
async fn run_instances(
    clients: &AwsClients,
    calls: &Calls,
    spec: &LaunchSpec,
) -> Result<Vec<Machine>, ProviderError> {
    let request = run_instances_request(&clients.ec2, spec)?;
    let out = calls.run("RunInstances", || request.send()).await?;
    let machines: Vec<Machine> = out.instances().iter().filter_map(to_machine).collect();
    if machines.is_empty() {
        // EC2 answers MinCount=1 with at least one instance or an error, so an
        // empty success should not happen. Treated as a capacity verdict: the
        // same ClientToken would only replay this answer, so the caller must
        // move on to another type, subnet or capacity type as a new batch.
        return Err(ProviderError::Capacity(detail(
            "RunInstances",
            "NoInstancesLaunched",
            format!(
                "RunInstances for batch {} succeeded without instances",
                spec.batch_id
            ),
        )));
    }
    Ok(machines)
}

/// The RunInstances request for `spec`: the first instance type and subnet,
/// MinCount 1 and MaxCount `count`, spot when the spec is all spot.
pub(super) fn run_instances_request(
    ec2: &aws_sdk_ec2::Client,
    spec: &LaunchSpec,
) -> Result<RunInstancesFluentBuilder, ProviderError> {
    const OP: &str = "RunInstances";
    check_common(OP, spec)?;
    let market = match spec.capacity.on_demand_percent {
        100 => None,
        0 => Some(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .spot_options(
                    SpotMarketOptions::builder()
                        .set_max_price(spec.capacity.max_price.clone())
                        .build(),
                )
                .build(),
        ),
        p => {
            return Err(invalid(
                OP,
                format!("RunInstances launches all on-demand or all spot, not {p} % on-demand"),
            ))
        }
    };
    let instance_type = spec
        .instance_types
        .first()
        .map(|t| InstanceType::from(t.name.as_str()));
    let root = spec.root_volume.as_ref().map(|v| {
        BlockDeviceMapping::builder()
            .device_name(root_device(spec))
            .ebs(
                EbsBlockDevice::builder()
                    .volume_size(v.size_gib)
                    .volume_type(VolumeType::from(v.volume_type.as_str()))
                    .set_iops(v.iops)
                    .set_throughput(v.throughput)
                    .encrypted(v.encrypted)
                    .set_kms_key_id(v.kms_key_id.clone())
                    .delete_on_termination(true)
                    .build(),
            )
            .build()
    });
    let profile = spec.instance_profile.as_deref().map(|p| {
        let b = IamInstanceProfileSpecification::builder();
        if is_arn(p) {
            b.arn(p).build()
        } else {
            b.name(p).build()
        }
    });
    let metadata = InstanceMetadataOptionsRequest::builder()
        .http_tokens(if spec.metadata.http_tokens_required {
            HttpTokensState::Required
        } else {
            HttpTokensState::Optional
        })
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .set_http_put_response_hop_limit(spec.metadata.hop_limit)
        .build();
    Ok(ec2
        .run_instances()
        .image_id(&spec.image_id)
        .set_instance_type(instance_type)
        .min_count(1)
        .max_count(spec.count)
        .set_client_token(client_token(spec))
        .set_subnet_id(spec.subnet_ids.first().cloned())
        .set_security_group_ids(non_empty(&spec.security_group_ids))
        .set_key_name(spec.key_name.clone())
        .set_iam_instance_profile(profile)
        .set_user_data(user_data(spec))
        .set_block_device_mappings(root.map(|r| vec![r]))
        .metadata_options(metadata)
        .set_instance_market_options(market)
        .set_tag_specifications(non_empty(&tags::tag_specifications(
            &spec.tags,
            &tags::LAUNCHED,
        ))))
}

/// Refuses specs that cannot launch anything, before any call: both APIs need
/// a positive count and at least one instance type.
pub(super) fn check_common(
    operation: &'static str,
    spec: &LaunchSpec,
) -> Result<(), ProviderError> {
    if spec.count < 1 {
        return Err(invalid(
            operation,
            format!("batch {} asks for {} machines", spec.batch_id, spec.count),
        ));
    }
    if spec.instance_types.is_empty() {
        return Err(invalid(
            operation,
            format!("batch {} names no instance type", spec.batch_id),
        ));
    }
    Ok(())
}

/// A bad spec found by the adapter itself (no call was made).
pub(super) fn invalid(operation: &'static str, message: String) -> ProviderError {
    ProviderError::InvalidParameter(detail(operation, "InvalidParameterValue", message))
}

/// The spec's ClientToken, absent when empty (EC2 rejects an empty token).
pub(super) fn client_token(spec: &LaunchSpec) -> Option<String> {
    Some(spec.client_token.clone()).filter(|t| !t.is_empty())
}

/// The user data as EC2 wants it: base64 of the bytes the machine should see.
pub(super) fn user_data(spec: &LaunchSpec) -> Option<String> {
    spec.user_data
        .as_deref()
        .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
}

/// The device the root volume settings apply to.
pub(super) fn root_device(spec: &LaunchSpec) -> String {
    spec.root_device_name
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_ROOT_DEVICE.to_string())
}

/// Whether an instance profile value is an ARN rather than a name.
pub(super) fn is_arn(profile: &str) -> bool {
    profile.starts_with("arn:")
}

/// `None` for an empty list, so optional list parameters are left out.
pub(super) fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::provider::{InstanceTypeChoice, LaunchCapacity, MetadataSpec, VolumeSpec};
    use aws_sdk_ec2::types::ResourceType;

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
        }
    }

    #[test]
    fn run_instances_carries_the_whole_spec() {
        let client = offline_client();
        let req = run_instances_request(&client, &spec()).expect("valid");
        let i = req.as_input();
        assert_eq!(i.get_image_id().as_deref(), Some("ami-1"));
        assert_eq!(i.get_instance_type(), &Some(InstanceType::C6iXlarge));
        assert_eq!((i.get_min_count(), i.get_max_count()), (&Some(1), &Some(3)));
        assert_eq!(i.get_client_token().as_deref(), Some("tok-1"));
        assert_eq!(i.get_subnet_id().as_deref(), Some("subnet-a"));
        assert_eq!(i.get_security_group_ids(), &Some(vec!["sg-1".to_string()]));
        assert_eq!(i.get_key_name().as_deref(), Some("key"));
        let profile = i.get_iam_instance_profile().as_ref().expect("profile");
        assert_eq!(profile.arn(), Some("arn:aws:iam::1:instance-profile/p"));
        assert_eq!(profile.name(), None);
        assert_eq!(
            i.get_user_data().as_deref(),
            Some("IyEvYmluL3NoCmVjaG8gaGkK")
        );
        let bdm = i.get_block_device_mappings().as_ref().expect("root");
        assert_eq!(bdm.len(), 1);
        assert_eq!(bdm[0].device_name(), Some(DEFAULT_ROOT_DEVICE));
        let ebs = bdm[0].ebs().expect("ebs");
        assert_eq!(ebs.volume_size(), Some(50));
        assert_eq!(ebs.volume_type(), Some(&VolumeType::Gp3));
        assert_eq!((ebs.iops(), ebs.throughput()), (Some(4000), Some(250)));
        assert_eq!(ebs.encrypted(), Some(true));
        assert_eq!(ebs.kms_key_id(), Some("key-1"));
        assert_eq!(ebs.delete_on_termination(), Some(true));
        let md = i.get_metadata_options().as_ref().expect("metadata");
        assert_eq!(md.http_tokens(), Some(&HttpTokensState::Required));
        assert_eq!(
            md.http_endpoint(),
            Some(&InstanceMetadataEndpointState::Enabled)
        );
        assert_eq!(md.http_put_response_hop_limit(), Some(2));
        assert_eq!(i.get_instance_market_options(), &None, "on-demand");
        let ts = i.get_tag_specifications().as_ref().expect("tags");
        let types: Vec<_> = ts.iter().filter_map(|t| t.resource_type()).collect();
        assert_eq!(types, [&ResourceType::Instance, &ResourceType::Volume]);
        assert!(ts.iter().all(|t| t.tags().len() == 2));
    }

    #[test]
    fn minimal_spec_leaves_optional_parameters_out() {
        let mut s = spec();
        s.subnet_ids.clear();
        s.security_group_ids.clear();
        s.key_name = None;
        s.instance_profile = Some("worker".into());
        s.user_data = None;
        s.root_volume = None;
        s.tags.clear();
        s.client_token.clear();
        s.metadata = MetadataSpec {
            http_tokens_required: false,
            hop_limit: None,
        };
        let client = offline_client();
        let req = run_instances_request(&client, &s).expect("valid");
        let i = req.as_input();
        assert_eq!(i.get_subnet_id(), &None);
        assert_eq!(i.get_security_group_ids(), &None);
        assert_eq!(i.get_key_name(), &None);
        assert_eq!(i.get_user_data(), &None);
        assert_eq!(i.get_block_device_mappings(), &None);
        assert_eq!(i.get_tag_specifications(), &None);
        assert_eq!(i.get_client_token(), &None);
        let profile = i.get_iam_instance_profile().as_ref().expect("profile");
        assert_eq!((profile.name(), profile.arn()), (Some("worker"), None));
        let md = i.get_metadata_options().as_ref().expect("metadata");
        assert_eq!(md.http_tokens(), Some(&HttpTokensState::Optional));
        assert_eq!(md.http_put_response_hop_limit(), None);
    }

    #[test]
    fn root_volume_follows_the_image_root_device() {
        let mut s = spec();
        s.root_device_name = Some("/dev/sda1".into());
        let client = offline_client();
        let req = run_instances_request(&client, &s).expect("valid");
        let bdm = req.as_input().get_block_device_mappings().clone();
        assert_eq!(bdm.expect("root")[0].device_name(), Some("/dev/sda1"));
    }

    #[test]
    fn all_spot_uses_the_spot_market_with_the_max_price() {
        let mut s = spec();
        s.capacity = LaunchCapacity {
            on_demand_percent: 0,
            max_price: Some("0.12".into()),
            allocation_strategy: None,
        };
        let client = offline_client();
        let req = run_instances_request(&client, &s).expect("valid");
        let m = req
            .as_input()
            .get_instance_market_options()
            .clone()
            .expect("spot");
        assert_eq!(m.market_type(), Some(&MarketType::Spot));
        assert_eq!(m.spot_options().and_then(|o| o.max_price()), Some("0.12"));
    }

    #[test]
    fn mixed_capacity_and_empty_batches_are_refused_before_any_call() {
        let client = offline_client();
        let mut s = spec();
        s.capacity.on_demand_percent = 50;
        let err = run_instances_request(&client, &s).expect_err("mixed");
        assert!(matches!(err, ProviderError::InvalidParameter(_)), "{err}");
        assert_eq!(err.detail().operation, "RunInstances");

        let mut s = spec();
        s.count = 0;
        let err = run_instances_request(&client, &s).expect_err("no machines");
        assert!(matches!(err, ProviderError::InvalidParameter(_)), "{err}");

        let mut s = spec();
        s.instance_types.clear();
        let err = run_instances_request(&client, &s).expect_err("no type");
        assert!(matches!(err, ProviderError::InvalidParameter(_)), "{err}");
    }
}
