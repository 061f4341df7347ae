//! The AWS adapter of the provider port against the EC2/SSM simulator (moto):
//! image look-ups from each source, existence checks, describe and terminate,
//! error classification, and the calls reported to the observer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use hostforge::config::{OperatorConfig, ProviderConfig, ProviderKind};
use hostforge::provider::aws::{clients, AwsProvider};
use hostforge::provider::registry::ProviderRegistry;
use hostforge::provider::{
    CallObserver, CapacityType, ImageSource, MachineProvider, MachineState, ProviderError,
};
use hostforge_testbed::{TestEnv, AL2023_PARAM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod adapter;
mod fixed_server;

use adapter::{adapter, base_credentials, provider_config, Recorder};
use fixed_server::fixed_answer_server;

/// The public parameter that Amazon Linux 2023 images are published under.
/// The account moto answers as.
const MOTO_ACCOUNT: &str = "123456789012";

#[tokio::test]
async fn ssm_parameter_resolves_to_the_ami_it_holds() {
    let env = TestEnv::new("aws-ssm").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let want = env.al2023_ami().await;

    let image = provider
        .lookup_image(&ImageSource::SsmParameter(AL2023_PARAM.into()))
        .await
        .expect("resolves");
    assert_eq!(image.id, want);
    assert_eq!(image.source, "ssmParameter");
    assert!(
        image
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("al2023-ami-")),
        "{image:?}"
    );
    assert!(image.creation_date.is_some(), "{image:?}");
    assert_eq!(recorder.count("GetParameter", "ok"), 1);
    assert_eq!(recorder.count("DescribeImages", "ok"), 1);
    assert!(recorder
        .calls
        .lock()
        .expect("calls")
        .iter()
        .all(|(p, _, _)| p == "aws-test"));

    // A parameter that does not exist.
    let missing = format!("/hostforge/{}/missing", env.namespace);
    let err = provider
        .lookup_image(&ImageSource::SsmParameter(missing))
        .await
        .expect_err("missing parameter");
    assert!(matches!(err, ProviderError::NotFound(_)), "{err}");
    assert_eq!(err.code(), "ParameterNotFound");
    assert_eq!(recorder.count("GetParameter", "NotFound"), 1);

    // A parameter that holds something else than an image id.
    let ssm = env.ssm();
    let bad = format!("/hostforge/{}/not-an-image", env.namespace);
    ssm.put_parameter()
        .name(&bad)
        .value("hello")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .expect("PutParameter");
    let err = provider
        .lookup_image(&ImageSource::SsmParameter(bad.clone()))
        .await
        .expect_err("not an image id");
    assert!(matches!(err, ProviderError::InvalidParameter(_)), "{err}");
    assert!(err.to_string().contains(&bad), "{err}");

    // A parameter naming an image that does not exist.
    let dangling = format!("/hostforge/{}/dangling", env.namespace);
    ssm.put_parameter()
        .name(&dangling)
        .value("ami-0000000000000000f")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .expect("PutParameter");
    let err = provider
        .lookup_image(&ImageSource::SsmParameter(dangling.clone()))
        .await
        .expect_err("dangling image id");
    assert!(matches!(err, ProviderError::NotFound(_)), "{err}");
    assert!(
        err.to_string().contains(&dangling) && err.to_string().contains("ami-0000000000000000f"),
        "{err}"
    );
}

#[tokio::test]
async fn explicit_image_id_is_verified() {
    let env = TestEnv::new("aws-id").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let known = env.al2023_ami().await;

    let image = provider
        .lookup_image(&ImageSource::Id(known.clone()))
        .await
        .expect("known image");
    assert_eq!(
        (image.id.as_str(), image.source.as_str()),
        (known.as_str(), "id")
    );
    assert!(image.name.is_some());

    let err = provider
        .lookup_image(&ImageSource::Id("ami-0000000000000000f".into()))
        .await
        .expect_err("unknown image");
    assert!(matches!(err, ProviderError::NotFound(_)), "{err}");
    assert_eq!(err.category(), "NotFound");
    assert!(err.to_string().contains("ami-0000000000000000f"), "{err}");
    assert_eq!(recorder.count("DescribeImages", "ok"), 1);
    assert_eq!(recorder.count("DescribeImages", "NotFound"), 1);
}

#[tokio::test]
async fn selector_picks_the_newest_matching_image() {
    let env = TestEnv::new("aws-selector").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let ec2 = env.ec2();
    let prefix = format!("hf-{}", env.namespace);

    let ids = env.register_images_a_second_apart(&prefix, 3).await;
    ec2.create_tags()
        .resources(&ids[0])
        .tags(Tag::builder().key("channel").value("stable").build())
        .send()
        .await
        .expect("CreateTags");

    let selector = |owners: &[&str], tags: &[(&str, &str)]| ImageSource::Selector {
        name: format!("{prefix}-*"),
        owners: owners.iter().map(|o| o.to_string()).collect(),
        architecture: None,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    };

    for owners in [&["self"][..], &[MOTO_ACCOUNT][..]] {
        let image = provider
            .lookup_image(&selector(owners, &[]))
            .await
            .expect("newest image");
        assert_eq!(image.id, ids[2], "owners {owners:?}");
        assert_eq!(image.name.as_deref(), Some(format!("{prefix}-2").as_str()));
        assert_eq!(image.source, "selector");
    }

    // Tags narrow the choice.
    let image = provider
        .lookup_image(&selector(&["self"], &[("channel", "stable")]))
        .await
        .expect("tagged image");
    assert_eq!(image.id, ids[0]);

    // Images of other owners are not candidates.
    let err = provider
        .lookup_image(&selector(&["amazon"], &[]))
        .await
        .expect_err("not amazon's");
    assert_eq!(
        (err.category(), err.code()),
        ("NotFound", "NoMatchingImage")
    );
    assert!(
        err.to_string().contains(&prefix),
        "names the selector: {err}"
    );

    // No owners: refused without a call.
    let before = recorder.total();
    let err = provider
        .lookup_image(&selector(&[], &[]))
        .await
        .expect_err("owners required");
    assert_eq!(err.category(), "InvalidParameter");
    assert_eq!(recorder.total(), before);

    // Architecture and the `amazon` alias, on moto's preloaded images.
    let arm = provider
        .lookup_image(&ImageSource::Selector {
            name: "al2023-ami-2023*".into(),
            owners: vec!["amazon".into()],
            architecture: Some("arm64".into()),
            tags: BTreeMap::new(),
        })
        .await
        .expect("an arm64 AL2023 image");
    assert!(
        arm.name.as_deref().is_some_and(|n| n.contains("arm64")),
        "{arm:?}"
    );
}

#[tokio::test]
async fn missing_subnets_groups_and_instance_types_are_reported() {
    let env = TestEnv::new("aws-validate").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let (subnet, group) = env.default_subnet_and_group().await;

    let missing = provider
        .missing_subnets(&[
            subnet.clone(),
            "subnet-0000000000000000f".into(),
            subnet.clone(),
        ])
        .await
        .expect("DescribeSubnets");
    assert_eq!(missing, ["subnet-0000000000000000f"]);
    assert_eq!(
        provider
            .missing_subnets(std::slice::from_ref(&subnet))
            .await
            .expect("ok"),
        Vec::<String>::new()
    );

    let missing = provider
        .missing_security_groups(&["sg-0000000000000000f".into(), group.clone()])
        .await
        .expect("DescribeSecurityGroups");
    assert_eq!(missing, ["sg-0000000000000000f"]);

    let unknown = provider
        .unknown_instance_types(&[
            "c5.xlarge".into(),
            "x9.nonsense".into(),
            "m5.large".into(),
            "c6i.*".into(),
        ])
        .await
        .expect("DescribeInstanceTypes");
    assert_eq!(unknown, ["x9.nonsense", "c6i.*"]);

    assert_eq!(recorder.count("DescribeSubnets", "ok"), 2);
    assert_eq!(recorder.count("DescribeSecurityGroups", "ok"), 1);
    assert_eq!(recorder.count("DescribeInstanceTypes", "ok"), 1);

    // Nothing to check: no call.
    let before = recorder.total();
    assert!(provider.missing_subnets(&[]).await.expect("ok").is_empty());
    assert!(provider
        .missing_security_groups(&[])
        .await
        .expect("ok")
        .is_empty());
    assert!(provider
        .unknown_instance_types(&[])
        .await
        .expect("ok")
        .is_empty());
    assert_eq!(recorder.total(), before);
}

#[tokio::test]
async fn owned_machines_are_described_and_terminated() {
    let env = TestEnv::new("aws-machines").await;
    let (provider, recorder) = adapter(&env.bed.moto_url).await;
    let ec2 = env.ec2();
    let ami = env.al2023_ami().await;
    let batch = env.namespace.clone();
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let run = ec2
        .run_instances()
        .image_id(&ami)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(3)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(tag("hostforge.io/cluster", "test"))
                .tags(tag("hostforge.io/batch", &batch))
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    let mut ids: Vec<String> = run
        .instances()
        .iter()
        .filter_map(|i| i.instance_id())
        .map(str::to_string)
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 3);

    let owned_tags = [
        ("hostforge.io/cluster".to_string(), "test".to_string()),
        ("hostforge.io/batch".to_string(), batch.clone()),
    ];
    let mut owned = provider.describe_owned(&owned_tags).await.expect("owned");
    owned.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(owned.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
    for m in &owned {
        assert!(
            matches!(m.state, MachineState::Pending | MachineState::Running),
            "{m:?}"
        );
        assert_eq!(m.instance_type.as_deref(), Some("t3.micro"));
        assert_eq!(m.image_id.as_deref(), Some(ami.as_str()));
        assert_eq!(m.capacity_type, CapacityType::OnDemand);
        assert!(m.private_dns_name.is_some(), "{m:?}");
        assert!(m.private_ip.is_some(), "{m:?}");
        assert!(m
            .availability_zone
            .as_deref()
            .is_some_and(|z| z.starts_with("us-east-1")));
        assert!(m.subnet_id.is_some(), "{m:?}");
        let launched = m.launch_time.as_deref().expect("launch time");
        assert!(
            launched.ends_with('Z') && launched.contains('T'),
            "{launched}"
        );
        assert_eq!(m.tags.get("hostforge.io/batch"), Some(&batch));
    }

    // Another batch's tag value finds nothing; no tags is refused.
    let none = provider
        .describe_owned(&[("hostforge.io/batch".to_string(), format!("{batch}-other"))])
        .await
        .expect("describe");
    assert!(none.is_empty());
    let err = provider.describe_owned(&[]).await.expect_err("no tags");
    assert_eq!(err.category(), "InvalidParameter");

    // By id: an id EC2 does not know is absent, not an error.
    let mut wanted = ids.clone();
    wanted.push("i-0000000000000000f".into());
    let described = provider.describe_machines(&wanted).await.expect("by id");
    assert_eq!(described.len(), 3);
    assert!(
        described.iter().all(|m| m.state == MachineState::Running),
        "{described:?}"
    );
    let before = recorder.total();
    assert!(provider
        .describe_machines(&[])
        .await
        .expect("empty")
        .is_empty());
    assert_eq!(recorder.total(), before, "no ids, no call");

    provider.terminate(&ids[..2]).await.expect("terminate");
    let after = provider.describe_machines(&ids).await.expect("by id");
    for m in after {
        let gone = ids[..2].contains(&m.id);
        assert_eq!(m.state.is_terminating(), gone, "{m:?}");
    }
    assert_eq!(recorder.count("TerminateInstances", "ok"), 1);
    assert!(recorder.count("DescribeInstances", "ok") >= 4);
}

#[tokio::test]
async fn aws_errors_are_classified_and_observed() {
    const THROTTLED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>r1</RequestID></Response>";
    const DENIED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors><RequestID>r2</RequestID></Response>";

    // Throttling: the SDK retries (3 attempts in all), then the error is typed.
    let (url, hits) = fixed_answer_server(503, THROTTLED).await;
    let (provider, recorder) = adapter(&url).await;
    let err = provider
        .describe_machines(&["i-0123456789abcdef0".into()])
        .await
        .expect_err("throttled");
    assert!(matches!(err, ProviderError::Throttled(_)), "{err}");
    assert!(err.is_retryable());
    assert_eq!(err.code(), "RequestLimitExceeded");
    assert_eq!(hits.load(Ordering::SeqCst), 3, "standard retry, 3 attempts");
    assert_eq!(recorder.count("DescribeInstances", "Throttled"), 1);

    // Access denied: not retried.
    let (url, hits) = fixed_answer_server(403, DENIED).await;
    let (provider, recorder) = adapter(&url).await;
    let err = provider
        .missing_subnets(&["subnet-0123456789abcdef0".into()])
        .await
        .expect_err("denied");
    assert!(matches!(err, ProviderError::AccessDenied(_)), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("not authorized"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(recorder.count("DescribeSubnets", "AccessDenied"), 1);

    // Nobody listening: a transient failure, bounded by the timeouts.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (provider, recorder) = adapter(&format!("http://127.0.0.1:{closed}")).await;
    let started = Instant::now();
    let err = provider
        .terminate(&["i-0123456789abcdef0".into()])
        .await
        .expect_err("connection refused");
    assert_eq!(err.category(), "Transient", "{err}");
    assert!(started.elapsed() < Duration::from_secs(35));
    assert_eq!(recorder.count("TerminateInstances", "Transient"), 1);
}

/// Environment marker for [`env_chain_child`], set only by
/// [`default_credential_chain_uses_env_credentials_without_waiting`].
const CHILD_MOTO_URL: &str = "HOSTFORGE_TEST_CHILD_MOTO_URL";

#[tokio::test]
async fn default_credential_chain_uses_env_credentials_without_waiting() {
    let env = TestEnv::new("aws-env-chain").await;
    // The default chain reads the process environment, which a test must not
    // change under its siblings: run the check in a child of this test binary.
    let exe = std::env::current_exe().expect("test binary path");
    let home = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let out = tokio::process::Command::new(exe)
        .args(["--exact", "env_chain_child", "--nocapture"])
        .env(CHILD_MOTO_URL, &env.bed.moto_url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("HOME", home.path())
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .output()
        .await
        .expect("running the child test");
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 passed"), "the child test ran: {stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// Runs only inside the child started by
/// [`default_credential_chain_uses_env_credentials_without_waiting`]: builds the
/// registry from an operator config exactly as `hostforge run` does and makes
/// one call, which must not wait on the instance metadata service.
#[tokio::test]
async fn env_chain_child() {
    let Ok(url) = std::env::var(CHILD_MOTO_URL) else {
        return;
    };
    let config = OperatorConfig::from_yaml(&format!(
        "clusterName: child\nproviders:\n- {{name: aws-env, type: aws, region: {}, endpointUrl: '{url}'}}\n",
        hostforge_testbed::REGION
    ))
    .expect("config");
    let recorder = Arc::new(Recorder::default());
    let registry = ProviderRegistry::new(&config, recorder.clone())
        .await
        .expect("registry");
    let provider = registry.get("aws-env").expect("configured provider");
    let started = Instant::now();
    let image = tokio::time::timeout(
        Duration::from_secs(10),
        provider.lookup_image(&ImageSource::SsmParameter(AL2023_PARAM.into())),
    )
    .await
    .expect("no wait on IMDS")
    .expect("resolves with env credentials");
    assert!(image.id.starts_with("ami-"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(recorder.count("GetParameter", "ok"), 1);
}

#[tokio::test]
async fn assume_role_credentials_are_used_for_calls() {
    let env = TestEnv::new("aws-assume-role").await;
    let mut config = provider_config(&env.bed.moto_url);
    config.assume_role_arn = Some(format!("arn:aws:iam::{MOTO_ACCOUNT}:role/hostforge"));
    let recorder = Arc::new(Recorder::default());
    let credentials =
        SharedCredentialsProvider::new(Credentials::new("testing", "testing", None, None, "test"));
    // STS AssumeRole goes to the same endpoint (moto serves every service).
    let provider =
        AwsProvider::connect_with_credentials(&config, credentials, recorder.clone()).await;
    let image = provider
        .lookup_image(&ImageSource::Id(env.al2023_ami().await))
        .await
        .expect("resolves with the role's session");
    assert_eq!(image.source, "id");
    assert_eq!(recorder.count("DescribeImages", "ok"), 1);

    // The SDK config the adapter is built from signs with the role's temporary
    // credentials, not the base ones.
    let sdk = clients::sdk_config(&config, Some(base_credentials())).await;
    let session = sdk
        .credentials_provider()
        .expect("a credentials provider")
        .provide_credentials()
        .await
        .expect("the role's credentials");
    assert_ne!(session.access_key_id(), "testing");
    assert!(session.session_token().is_some());
}

/// The adapter's limiter against the forwarder's model of EC2's buckets,
/// both at a tenth of EC2's defaults (DescribeInstances: 10 burst, 2/s): 16
/// concurrent describes are spread over the refill and none is throttled.
#[tokio::test]
async fn the_limiter_keeps_a_burst_within_ec2s_buckets() {
    let env = TestEnv::new("aws-limits").await;
    let fwd = hostforge_testbed::forwarder::Forwarder::start(&env.bed.moto_url);
    let scale = 0.1;
    fwd.set_rate_limits(Some(
        hostforge_testbed::forwarder::RateLimits::ec2_defaults().scaled(scale),
    ));
    let mut config = provider_config(fwd.endpoint());
    config.rate_limits = config.rate_limits.scaled(scale);
    let recorder = Arc::new(Recorder::default());
    let provider =
        AwsProvider::connect_with_credentials(&config, base_credentials(), recorder.clone()).await;
    let ids: Vec<String> = (0..16).map(|i| format!("i-{i:017x}")).collect();
    let answers = futures::future::join_all(
        ids.iter()
            .map(|id| provider.describe_machines(std::slice::from_ref(id))),
    )
    .await;
    for answer in answers {
        assert!(answer.expect("DescribeInstances").is_empty());
    }
    assert_eq!(fwd.calls("DescribeInstances"), 16, "{:?}", fwd.snapshot());
    assert_eq!(fwd.throttled(), 0, "{:?}", fwd.snapshot());
    assert_eq!(recorder.count("DescribeInstances", "ok"), 16);
}
