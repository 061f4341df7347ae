//! `MachineProvider::launch` of the AWS adapter against the EC2 simulator
//! (moto): RunInstances and instant EC2 Fleet batches, checked by looking at
//! what moto then holds (instances, volumes, user data, launch templates), and
//! the calls each launch makes.
//!
//! moto models less than EC2 for fleets (observed with moto 5.2.5): its
//! CreateFleet reads image, key, user data and tags from the launch template but
//! not block devices, metadata options or security group ids, so fleet
//! instances get moto's default root volume (8 GiB gp2 on /dev/sda1) and
//! `httpTokens: optional`, hop limit 1, and the default security group
//! (on-demand) or none at all (spot); it launches every unit of a capacity type
//! from one override (the first, all prices being unknown, unless the spot
//! strategy is `diversified`); it never answers with `Errors`. Neither its
//! CreateFleet nor its RunInstances honours ClientToken: re-sending a launch
//! launches again. Those parts are covered by the request builders' unit tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_ec2::types::{
    Filter, HttpTokensState, Instance, InstanceAttributeName, InstanceLifecycleType,
    RequestLaunchTemplateData, Tag, Volume, VolumeType,
};
use base64::Engine as _;
use hostforge::config::rate_limits::RateLimitConfig;
use hostforge::config::{ProviderConfig, ProviderKind};
use hostforge::provider::aws::AwsProvider;
use hostforge::provider::{
    CallObserver, CapacityType, InstanceTypeChoice, LaunchApi, LaunchCapacity, LaunchSpec,
    MachineProvider, MachineState, MetadataSpec, ProviderError, VolumeSpec,
};
use hostforge_testbed::forwarder::{Forwarder, RateLimits};
use hostforge_testbed::TestEnv;

/// Remembers every reported call as (operation, outcome).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(&'static str, &'static str)>>,
}

impl CallObserver for Recorder {
    fn aws_call(&self, _: &str, operation: &'static str, outcome: &'static str, _: f64) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((operation, outcome));
    }
}

impl Recorder {
    /// Every call so far, in order.
    fn all(&self) -> Vec<(&'static str, &'static str)> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The adapter against moto with fixed credentials, reporting to a recorder.
async fn adapter(endpoint: &str) -> (AwsProvider, Arc<Recorder>) {
    adapter_limited(endpoint, RateLimitConfig::default()).await
}

/// [`adapter`] with its client-side buckets shaped by `rate_limits`.
async fn adapter_limited(
    endpoint: &str,
    rate_limits: RateLimitConfig,
) -> (AwsProvider, Arc<Recorder>) {
    let config = ProviderConfig {
        name: "aws-test".into(),
        kind: ProviderKind::Aws,
        region: hostforge_testbed::REGION.into(),
        endpoint_url: Some(endpoint.into()),
        assume_role_arn: None,
        rate_limits,
    };
    let credentials =
        SharedCredentialsProvider::new(Credentials::new("testing", "testing", None, None, "test"));
    let recorder = Arc::new(Recorder::default());
    let provider =
        AwsProvider::connect_with_credentials(&config, credentials, recorder.clone()).await;
    (provider, recorder)
}

/// An on-demand spec of `count` t3.micro for this test's batch (the namespace
/// name, unique in the run), tagged like the controller tags.
async fn spec(env: &TestEnv, api: LaunchApi, count: i32) -> LaunchSpec {
    let batch = env.namespace.clone();
    LaunchSpec {
        batch_id: batch.clone(),
        client_token: format!("tok-{batch}"),
        count,
        api,
        image_id: env.al2023_ami().await,
        root_device_name: Some("/dev/xvda".into()),
        instance_types: vec![InstanceTypeChoice {
            name: "t3.micro".into(),
            weight: None,
        }],
        subnet_ids: Vec::new(),
        availability_zone: None,
        capacity: LaunchCapacity::on_demand(),
        security_group_ids: Vec::new(),
        key_name: None,
        instance_profile: None,
        user_data: None,
        root_volume: None,
        metadata: MetadataSpec {
            http_tokens_required: true,
            hop_limit: None,
        },
        tags: [
            ("hostforge.io/cluster".to_string(), "test".to_string()),
            ("hostforge.io/batch".to_string(), batch.clone()),
            ("Name".to_string(), format!("{batch}-worker")),
            ("team".to_string(), "hpc".to_string()),
        ]
        .into(),
        options: hostforge::provider::LaunchOptions::default(),
    }
}

/// Every instance moto holds with this batch's tag.
async fn batch_instances(env: &TestEnv, batch: &str) -> Vec<Instance> {
    let out = env
        .ec2()
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:hostforge.io/batch")
                .values(batch)
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect()
}

/// The volumes attached to these instances.
async fn volumes_of(env: &TestEnv, ids: &[String]) -> Vec<Volume> {
    env.ec2()
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .set_values(Some(ids.to_vec()))
                .build(),
        )
        .send()
        .await
        .expect("DescribeVolumes")
        .volumes()
        .to_vec()
}

/// Tags as a map.
fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect()
}

/// Whether `have` holds every tag of `want`.
fn has_all(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Two subnets of the default VPC in different zones.
async fn two_subnets(env: &TestEnv) -> Vec<String> {
    let out = env
        .ec2()
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("default-for-az")
                .values("true")
                .build(),
        )
        .send()
        .await
        .expect("DescribeSubnets");
    let ids: Vec<String> = out
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id())
        .take(2)
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 2, "moto has a default subnet per zone");
    ids
}

/// The (id, name) of every launch template moto holds.
async fn templates(env: &TestEnv) -> Vec<(String, String)> {
    env.ec2()
        .describe_launch_templates()
        .send()
        .await
        .expect("DescribeLaunchTemplates")
        .launch_templates()
        .iter()
        .filter_map(|t| {
            Some((
                t.launch_template_id()?.into(),
                t.launch_template_name()?.into(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn run_instances_launches_the_batch_with_every_setting() {
    let env = TestEnv::new("launch-run").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let ec2 = env.ec2();
    let (subnet, group) = env.default_subnet_and_group().await;
    let key = env.namespace.clone();
    ec2.create_key_pair()
        .key_name(&key)
        .send()
        .await
        .expect("CreateKeyPair");
    let user_data = b"#!/bin/sh\necho launched by hostforge\n".to_vec();
    let mut s = spec(&env, LaunchApi::RunInstances, 3).await;
    s.instance_types[0].name = "t3.small".into();
    s.subnet_ids = vec![subnet.clone()];
    s.security_group_ids = vec![group.clone()];
    s.key_name = Some(key.clone());
    s.user_data = Some(user_data.clone());
    s.root_volume = Some(VolumeSpec {
        size_gib: 20,
        volume_type: "gp3".into(),
        iops: Some(3000),
        throughput: Some(125),
        encrypted: false,
        kms_key_id: None,
    });
    s.metadata.hop_limit = Some(2);

    let machines = provider.launch(&s).await.expect("launch").machines;
    assert_eq!(recorder.all(), [("RunInstances", "ok")]);
    assert_eq!(machines.len(), 3, "{machines:?}");
    let mut ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    for m in &machines {
        assert_eq!(m.instance_type.as_deref(), Some("t3.small"));
        assert_eq!(m.subnet_id.as_deref(), Some(subnet.as_str()));
        assert_eq!(m.capacity_type, CapacityType::OnDemand);
        assert!(has_all(&m.tags, &s.tags), "{m:?}");
    }

    // What moto holds: exactly these three, launched as asked.
    let instances = batch_instances(&env, &s.batch_id).await;
    let mut held: Vec<String> = instances
        .iter()
        .filter_map(|i| i.instance_id())
        .map(str::to_string)
        .collect();
    held.sort();
    assert_eq!(held, ids);
    for i in &instances {
        assert_eq!(i.instance_type().map(|t| t.as_str()), Some("t3.small"));
        assert_eq!(i.subnet_id(), Some(subnet.as_str()));
        assert_eq!(i.key_name(), Some(key.as_str()));
        assert_eq!(i.image_id(), Some(s.image_id.as_str()));
        let groups: Vec<_> = i
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(groups, [group.as_str()]);
        let md = i.metadata_options().expect("metadata options");
        assert_eq!(md.http_tokens(), Some(&HttpTokensState::Required));
        assert_eq!(md.http_put_response_hop_limit(), Some(2));
        assert_eq!(i.instance_lifecycle(), None, "on-demand");
        assert!(has_all(&tag_map(i.tags()), &s.tags), "{:?}", i.tags());
        // The root volume replaces the image's and goes with the machine.
        let bdm = i.block_device_mappings();
        assert_eq!(bdm.len(), 1, "{bdm:?}");
        assert_eq!(bdm[0].device_name(), Some("/dev/xvda"));
        let ebs = bdm[0].ebs().expect("ebs");
        assert_eq!(ebs.delete_on_termination(), Some(true));
    }

    // One root volume each, sized and typed as asked, tagged like the machine.
    let volumes = volumes_of(&env, &ids).await;
    assert_eq!(volumes.len(), 3, "{volumes:?}");
    for v in &volumes {
        assert_eq!(v.size(), Some(20));
        assert_eq!(v.volume_type(), Some(&VolumeType::Gp3));
        assert_eq!(v.attachments()[0].device(), Some("/dev/xvda"));
        assert!(has_all(&tag_map(v.tags()), &s.tags), "{:?}", v.tags());
    }

    // The machine sees the user data that was sent.
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(&ids[0])
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .expect("DescribeInstanceAttribute");
    let encoded = attr.user_data().and_then(|u| u.value()).expect("user data");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    assert_eq!(decoded, user_data);
}

#[tokio::test]
async fn all_spot_run_instances_launch_spot_machines() {
    let env = TestEnv::new("launch-spot").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let mut s = spec(&env, LaunchApi::RunInstances, 2).await;
    s.capacity = LaunchCapacity {
        on_demand_percent: 0,
        max_price: Some("0.05".into()),
        allocation_strategy: None,
        on_demand_units: None,
    };

    let machines = provider.launch(&s).await.expect("launch").machines;
    assert_eq!(recorder.all(), [("RunInstances", "ok")]);
    assert_eq!(machines.len(), 2);
    assert!(machines
        .iter()
        .all(|m| m.capacity_type == CapacityType::Spot));
    let instances = batch_instances(&env, &s.batch_id).await;
    assert_eq!(instances.len(), 2);
    for i in &instances {
        assert_eq!(i.instance_lifecycle(), Some(&InstanceLifecycleType::Spot));
    }
}

#[tokio::test]
async fn mixed_fleet_launches_both_capacity_types_in_one_call() {
    let env = TestEnv::new("launch-fleet").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let subnets = two_subnets(&env).await;
    let key = env.namespace.clone();
    env.ec2()
        .create_key_pair()
        .key_name(&key)
        .send()
        .await
        .expect("CreateKeyPair");
    let user_data = b"#!/bin/sh\necho fleet\n".to_vec();
    let mut s = spec(&env, LaunchApi::Fleet, 4).await;
    s.instance_types = vec![
        InstanceTypeChoice {
            name: "t3.micro".into(),
            weight: None,
        },
        InstanceTypeChoice {
            name: "t3.small".into(),
            weight: None,
        },
    ];
    s.subnet_ids = subnets.clone();
    s.key_name = Some(key.clone());
    s.user_data = Some(user_data.clone());
    s.capacity = LaunchCapacity {
        on_demand_percent: 50,
        max_price: Some("0.05".into()),
        allocation_strategy: Some("price-capacity-optimized".into()),
        on_demand_units: None,
    };

    let machines = provider.launch(&s).await.expect("launch").machines;
    assert_eq!(
        recorder.all(),
        [("CreateLaunchTemplate", "ok"), ("CreateFleet", "ok")],
        "no describe: the fleet's answer is enough, the poller describes later"
    );
    assert_eq!(machines.len(), 4, "{machines:?}");
    assert!(
        machines.iter().all(|m| m.state == MachineState::Pending
            && m.instance_type.is_some()
            && m.image_id.as_deref() == Some(s.image_id.as_str())),
        "{machines:?}"
    );
    let spot = machines
        .iter()
        .filter(|m| m.capacity_type == CapacityType::Spot)
        .count();
    assert_eq!(spot, 2, "{machines:?}");
    let mut ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
    ids.sort();

    let instances = batch_instances(&env, &s.batch_id).await;
    let mut held: Vec<String> = instances
        .iter()
        .filter_map(|i| i.instance_id())
        .map(str::to_string)
        .collect();
    held.sort();
    assert_eq!(held, ids, "the fleet launched exactly what it reported");
    let spot_held = instances
        .iter()
        .filter(|i| i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot))
        .count();
    assert_eq!(spot_held, 2);
    for i in &instances {
        let t = i.instance_type().map(|t| t.as_str().to_string());
        assert!(
            matches!(t.as_deref(), Some("t3.micro" | "t3.small")),
            "{t:?}"
        );
        assert!(subnets.iter().any(|s| Some(s.as_str()) == i.subnet_id()));
        assert_eq!(i.image_id(), Some(s.image_id.as_str()));
        assert_eq!(i.key_name(), Some(key.as_str()));
        assert!(has_all(&tag_map(i.tags()), &s.tags), "{:?}", i.tags());
    }
    let volumes = volumes_of(&env, &ids).await;
    assert_eq!(volumes.len(), 4, "{volumes:?}");
    // The volumes carry the tags every launch from the shared template has;
    // the batch and Name differ per launch and go on the instances only.
    let mut shared = s.tags.clone();
    shared.remove("hostforge.io/batch");
    shared.remove("Name");
    for v in &volumes {
        assert!(has_all(&tag_map(v.tags()), &shared), "{:?}", v.tags());
    }
    let attr = env
        .ec2()
        .describe_instance_attribute()
        .instance_id(&ids[0])
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .expect("DescribeInstanceAttribute");
    let encoded = attr.user_data().and_then(|u| u.value()).expect("user data");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64"),
        user_data
    );

    // The template stays for the next launch of the same content.
    let kept = provider.launch_templates_in_use(Duration::from_secs(600));
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        templates(&env)
            .await
            .iter()
            .filter(|(id, _)| kept.contains(id))
            .count(),
        1
    );
}

/// Batches whose launch template would be the same share one: a second
/// batch (another request's tags, token and count) makes only its
/// CreateFleet, and its instances carry its own tags from that call. A
/// batch with other user data gets a template of its own. Nothing is
/// deleted while the templates are kept; once idle, they are given up.
#[tokio::test]
async fn fleet_batches_of_one_content_share_a_launch_template() {
    let env = TestEnv::new("launch-share").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let first = spec(&env, LaunchApi::Fleet, 1).await;
    let mut second = first.clone();
    second.batch_id = format!("{}-2", first.batch_id);
    second.client_token = format!("{}-2", first.client_token);
    second.count = 2;
    second
        .tags
        .insert("hostforge.io/batch".into(), second.batch_id.clone());
    second
        .tags
        .insert("Name".into(), format!("{}-other", first.batch_id));

    provider.launch(&first).await.expect("first launch");
    provider.launch(&second).await.expect("second launch");
    assert_eq!(
        recorder.all(),
        [
            ("CreateLaunchTemplate", "ok"),
            ("CreateFleet", "ok"),
            ("CreateFleet", "ok"),
        ]
    );
    let instances = batch_instances(&env, &second.batch_id).await;
    assert_eq!(instances.len(), 2);
    for i in &instances {
        assert!(has_all(&tag_map(i.tags()), &second.tags), "{:?}", i.tags());
    }
    assert_eq!(batch_instances(&env, &first.batch_id).await.len(), 1);

    let mut other = second.clone();
    other.user_data = Some(b"#!/bin/sh\necho other\n".to_vec());
    provider.launch(&other).await.expect("other content");
    let creates = recorder
        .all()
        .iter()
        .filter(|(op, _)| *op == "CreateLaunchTemplate")
        .count();
    assert_eq!(creates, 2, "other user data, another template");
    assert_eq!(
        provider
            .launch_templates_in_use(Duration::from_secs(600))
            .len(),
        2
    );
    assert!(
        provider.launch_templates_in_use(Duration::ZERO).is_empty(),
        "idle templates are given up for the collector"
    );
    provider.launch(&first).await.expect("after giving up");
    let creates = recorder
        .all()
        .iter()
        .filter(|(op, _)| *op == "CreateLaunchTemplate")
        .count();
    assert_eq!(
        creates, 3,
        "a given-up template is never launched from again"
    );
    assert!(!recorder
        .all()
        .iter()
        .any(|(op, _)| *op == "DeleteLaunchTemplate"));
}

/// A template someone else made under `name`, with `owner_tags` on the
/// template itself; its instance tag `leftover=yes` shows when a fleet
/// launched from it.
async fn leftover_template(
    env: &TestEnv,
    s: &LaunchSpec,
    name: &str,
    owner_tags: &BTreeMap<String, String>,
) {
    use aws_sdk_ec2::types::{
        LaunchTemplateTagSpecificationRequest, ResourceType, TagSpecification,
    };
    env.ec2()
        .create_launch_template()
        .launch_template_name(name)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .set_tags(Some(
                    owner_tags
                        .iter()
                        .map(|(k, v)| Tag::builder().key(k).value(v).build())
                        .collect(),
                ))
                .build(),
        )
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(&s.image_id)
                .tag_specifications(
                    LaunchTemplateTagSpecificationRequest::builder()
                        .resource_type(ResourceType::Instance)
                        .tags(
                            Tag::builder()
                                .key("hostforge.io/batch")
                                .value(&s.batch_id)
                                .build(),
                        )
                        .tags(Tag::builder().key("leftover").value("yes").build())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplate");
}

/// A template someone else made, even under a hostforge-looking name and
/// with this batch's tags, is never launched from: the adapter launches only
/// from templates it created itself, by id.
#[tokio::test]
async fn fleet_never_launches_from_a_template_it_did_not_create() {
    let env = TestEnv::new("launch-foreign").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let s = spec(&env, LaunchApi::Fleet, 1).await;
    let name = format!("hostforge-fleet-{}", env.namespace);
    leftover_template(&env, &s, &name, &s.tags).await;

    let machines = provider.launch(&s).await.expect("launch").machines;
    assert_eq!(machines.len(), 1);
    let ops: Vec<_> = recorder.all().iter().map(|(op, _)| *op).collect();
    assert_eq!(ops, ["CreateLaunchTemplate", "CreateFleet"]);
    let instances = batch_instances(&env, &s.batch_id).await;
    assert_eq!(instances.len(), 1);
    assert_eq!(tag_map(instances[0].tags()).get("leftover"), None);
    assert!(
        templates(&env).await.iter().any(|(_, n)| *n == name),
        "another owner's template is not ours to delete"
    );
    env.ec2()
        .delete_launch_template()
        .launch_template_name(&name)
        .send()
        .await
        .expect("clean up");
}

/// A kept template deleted behind the adapter's back: EC2 answers NotFound,
/// which right after a creation is EC2's lag, so the batch is retried
/// (Transient) and nothing is launched.
#[tokio::test]
async fn a_kept_template_deleted_by_someone_else_launches_nothing() {
    let env = TestEnv::new("launch-deleted").await;
    let (provider, _recorder) = adapter(&env.bed.moto_url).await;
    let s = spec(&env, LaunchApi::Fleet, 1).await;
    provider.launch(&s).await.expect("first launch");
    let kept = provider.launch_templates_in_use(Duration::from_secs(600));
    for id in &kept {
        env.ec2()
            .delete_launch_template()
            .launch_template_id(id)
            .send()
            .await
            .expect("someone deletes it");
    }
    let mut again = s.clone();
    again.batch_id = format!("{}-2", s.batch_id);
    again.client_token = format!("{}-2", s.client_token);
    again
        .tags
        .insert("hostforge.io/batch".into(), again.batch_id.clone());
    let err = provider.launch(&again).await.expect_err("template gone");
    assert!(matches!(err, ProviderError::Transient(_)), "{err}");
    assert!(batch_instances(&env, &again.batch_id).await.is_empty());
}

#[tokio::test]
async fn invalid_launches_are_classified_and_launch_nothing() {
    let env = TestEnv::new("launch-invalid").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let unknown_subnet = "subnet-0123456789abcdef0".to_string();

    // A mixed RunInstances spec is refused before any call.
    let mut s = spec(&env, LaunchApi::RunInstances, 2).await;
    s.capacity.on_demand_percent = 50;
    let err = provider.launch(&s).await.expect_err("mixed RunInstances");
    assert!(matches!(err, ProviderError::InvalidParameter(_)), "{err}");
    assert!(recorder.all().is_empty());

    // An unknown subnet: RunInstances.
    let mut s = spec(&env, LaunchApi::RunInstances, 2).await;
    s.subnet_ids = vec![unknown_subnet.clone()];
    let err = provider.launch(&s).await.expect_err("unknown subnet");
    assert!(matches!(err, ProviderError::NotFound(_)), "{err}");
    assert_eq!(err.code(), "InvalidSubnetID.NotFound");
    assert_eq!(recorder.all(), [("RunInstances", "NotFound")]);

    // And a fleet: the template is cleaned up all the same.
    s.api = LaunchApi::Fleet;
    let err = provider.launch(&s).await.expect_err("unknown subnet");
    assert!(matches!(err, ProviderError::NotFound(_)), "{err}");
    assert_eq!(err.code(), "InvalidSubnetID.NotFound");
    assert_eq!(
        recorder.all()[1..],
        [("CreateLaunchTemplate", "ok"), ("CreateFleet", "NotFound")]
    );

    assert!(batch_instances(&env, &s.batch_id).await.is_empty());
}

/// A launch takes its request and instance tokens together, at the moment it
/// goes, as EC2 charges them when the call arrives. Both sides at a tenth of
/// EC2's buckets (RunInstances 1 burst, 0.2/s; launched instances 100 burst,
/// 0.2/s), EC2's modelled in the forwarder: the dry run empties the request
/// bucket, so the launch of 100 waits 5 s for its request token while EC2's
/// instance bucket stays full, and EC2 takes the 100 instance tokens only
/// then. The launch of 2 after it must wait until 2 of them have refilled
/// since that moment: had the limiter taken the 100 when the first launch
/// began to wait, it would have counted 5 s of refill that EC2 lost at the
/// cap, and EC2 would have throttled the launch of 2.
#[tokio::test]
async fn launches_take_their_request_and_instance_tokens_together() {
    let env = TestEnv::new("launch-limits").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let scale = 0.1;
    fwd.set_rate_limits(Some(RateLimits::ec2_defaults().scaled(scale)));
    let (provider, _) =
        adapter_limited(fwd.endpoint(), RateLimitConfig::default().scaled(scale)).await;
    let hundred = spec(&env, LaunchApi::RunInstances, 100).await;
    provider
        .validate_launch(&hundred)
        .await
        .expect("the dry run");
    let first = provider.launch(&hundred).await.expect("the launch of 100");
    let mut two = spec(&env, LaunchApi::RunInstances, 2).await;
    two.client_token = format!("{}-2", two.client_token);
    let second = provider.launch(&two).await.expect("the launch of 2");
    assert_eq!(
        (first.machines.len(), second.machines.len()),
        (100, 2),
        "{:?}",
        fwd.snapshot()
    );
    assert_eq!(fwd.throttled(), 0, "{:?}", fwd.snapshot());
    assert_eq!(fwd.forwarded("RunInstances"), 2, "{:?}", fwd.snapshot());
    assert_eq!(batch_instances(&env, &env.namespace).await.len(), 102);
}
