//! The fault-injecting forwarder (src/forwarder/), driven through
//! the real aws-sdk-ec2 / aws-sdk-ssm clients against the bed's moto: what it
//! passes through must reach moto, what it injects must reach the SDK as an
//! AWS error, and its counters must match what was sent.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest, FleetType,
    InstanceType, ResourceType, Tag, TagSpecification, TargetCapacitySpecificationRequest,
};
use bytes::Bytes;
use hostforge_testbed::forwarder::{Bucket, Forwarder, InjectedError, RateLimits, Rule};
use hostforge_testbed::TestEnv;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

mod clients;
mod fidelity;

use clients::{code_and_status, ec2_fast_retry, ec2_no_retry, in_moto, launch};

#[tokio::test]
async fn passes_ec2_and_ssm_calls_through_to_moto() {
    let env = TestEnv::new("fwd-pass").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;

    ec2.describe_instances()
        .send()
        .await
        .expect("DescribeInstances through the forwarder");
    let launched = launch(&ec2, &ami, "t3.micro", &env.namespace, 2)
        .await
        .expect("RunInstances through the forwarder");
    assert_eq!(launched.len(), 2, "moto launches MaxCount: {launched:?}");
    let direct: Vec<String> = in_moto(&env, &env.namespace)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut expected = launched.clone();
    expected.sort();
    assert_eq!(
        direct, expected,
        "what was launched through the forwarder is in moto"
    );

    let ssm = hostforge_testbed::ssm_client(fwd.endpoint());
    let via_fwd = ssm
        .get_parameter()
        .name(hostforge_testbed::AL2023_PARAM)
        .send()
        .await
        .expect("GetParameter through the forwarder");
    assert_eq!(
        via_fwd.parameter().and_then(|p| p.value()),
        Some(ami.as_str())
    );

    assert_eq!(fwd.calls("DescribeInstances"), 1);
    assert_eq!(fwd.forwarded("DescribeInstances"), 1);
    assert_eq!(fwd.calls("RunInstances"), 1);
    assert_eq!(fwd.forwarded("RunInstances"), 1);
    assert_eq!(fwd.calls("GetParameter"), 1);
    assert_eq!(fwd.injected("RunInstances"), 0);
    assert_eq!(fwd.throttled(), 0);
    let ssm_sent = fwd.requests("GetParameter");
    assert_eq!(
        ssm_sent[0].get("Name").map(String::as_str),
        Some(hostforge_testbed::AL2023_PARAM),
        "JSON bodies are decoded too: {ssm_sent:?}"
    );
}

#[tokio::test]
async fn keeps_connections_alive_and_serves_concurrent_sdk_calls() {
    let env = TestEnv::new("fwd-keepalive").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let addr = fwd
        .endpoint()
        .strip_prefix("http://")
        .expect("http endpoint")
        .to_string();

    // Several calls on one TCP connection, forwarded and injected.
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect to the forwarder");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    let conn = tokio::spawn(conn);
    for i in 0..5 {
        if i == 3 {
            fwd.add_rule(Rule::new(
                "DescribeRegions",
                InjectedError::request_limit_exceeded(),
            ));
        }
        if i == 4 {
            fwd.clear_rules();
        }
        let request = hyper::Request::post("/")
            .header("host", &addr)
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/ec2/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .body(Full::new(Bytes::from_static(
                b"Action=DescribeRegions&Version=2016-11-15",
            )))
            .expect("request");
        let response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("call {i} on the kept-alive connection: {e}"));
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("answer body")
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        if i == 3 {
            assert_eq!(status, 503, "injected: {body}");
            assert!(content_type.starts_with("text/xml"), "{content_type}");
            let prefix = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                          <Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>\
                          </Error></Errors><RequestID>";
            assert!(body.starts_with(prefix), "EC2's error document: {body}");
            assert!(body.ends_with("</RequestID></Response>"), "{body}");
        } else {
            assert_eq!(status, 200, "call {i}: {body}");
            assert!(body.contains("us-east-1"), "call {i}: {body}");
        }
    }
    drop(sender);
    let _ = conn.await;
    assert_eq!(fwd.calls("DescribeRegions"), 5);
    assert_eq!(fwd.forwarded("DescribeRegions"), 4);

    // The SDK's own pool, sequential and concurrent, with no retry to hide
    // a dropped connection.
    let ec2 = ec2_no_retry(fwd.endpoint());
    for i in 0..20 {
        ec2.describe_regions()
            .send()
            .await
            .unwrap_or_else(|e| panic!("sequential call {i}: {e:?}"));
    }
    let calls = (0..24).map(|_| ec2.describe_availability_zones().send());
    for (i, result) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        result.unwrap_or_else(|e| panic!("concurrent call {i}: {e:?}"));
    }
    assert_eq!(fwd.calls("DescribeRegions"), 25);
    assert_eq!(fwd.forwarded("DescribeAvailabilityZones"), 24);
}

#[tokio::test]
async fn capacity_rule_fails_one_type_and_lets_others_launch() {
    let env = TestEnv::new("fwd-ice").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let rule = fwd.add_rule(
        Rule::new("RunInstances", InjectedError::insufficient_capacity())
            .param("InstanceType", "c6i.xlarge"),
    );

    let err = launch(&ec2, &ami, "c6i.xlarge", &env.namespace, 1)
        .await
        .expect_err("c6i.xlarge has no capacity");
    assert_eq!(
        code_and_status(&err),
        ("InsufficientInstanceCapacity".to_string(), Some(500))
    );
    assert!(
        in_moto(&env, &env.namespace).await.is_empty(),
        "nothing reached moto"
    );

    let other = launch(&ec2, &ami, "t3.micro", &env.namespace, 1)
        .await
        .expect("another type launches");
    assert_eq!(other.len(), 1);
    assert_eq!(fwd.calls("RunInstances"), 2);
    assert_eq!(fwd.injected("RunInstances"), 1);
    assert_eq!(
        fwd.injected_code("RunInstances", "InsufficientInstanceCapacity"),
        1
    );
    assert_eq!(fwd.forwarded("RunInstances"), 1);

    // The SDK's standard retry treats HTTP 500 as transient: one SDK call,
    // three attempts, all refused.
    let retrying = ec2_fast_retry(fwd.endpoint());
    let err = launch(&retrying, &ami, "c6i.xlarge", &env.namespace, 1)
        .await
        .expect_err("still no capacity");
    assert_eq!(err.code(), Some("InsufficientInstanceCapacity"));
    assert_eq!(fwd.injected("RunInstances"), 4, "{:?}", fwd.snapshot());

    // Turned off at runtime, the type launches.
    assert!(fwd.remove_rule(rule));
    assert!(!fwd.remove_rule(rule));
    let now = launch(&ec2, &ami, "c6i.xlarge", &env.namespace, 1)
        .await
        .expect("capacity is back");
    let types: Vec<String> = in_moto(&env, &env.namespace)
        .await
        .into_iter()
        .filter(|(id, _)| now.contains(id))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(types, ["c6i.xlarge"]);
}

#[tokio::test]
async fn times_injects_once_and_the_retry_resends_the_same_client_token() {
    let env = TestEnv::new("fwd-times").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let ami = env.al2023_ami().await;
    fwd.add_rule(
        Rule::new("RunInstances", InjectedError::insufficient_capacity())
            .param("InstanceType", "m5.large")
            .times(1),
    );

    let ec2 = ec2_fast_retry(fwd.endpoint());
    let launched = launch(&ec2, &ami, "m5.large", &env.namespace, 1)
        .await
        .expect("the SDK's retry passes once the rule is used up");
    assert_eq!(launched.len(), 1);
    assert_eq!(fwd.calls("RunInstances"), 2, "{:?}", fwd.snapshot());
    assert_eq!(fwd.injected("RunInstances"), 1);
    assert_eq!(fwd.forwarded("RunInstances"), 1);

    let sent = fwd.requests("RunInstances");
    assert_eq!(sent.len(), 2);
    let token = sent[0]
        .get("ClientToken")
        .expect("the SDK fills in a ClientToken");
    assert_eq!(
        sent[1].get("ClientToken"),
        Some(token),
        "a retry is the same request"
    );

    // Used up: a later call passes at once.
    let ec2 = ec2_no_retry(fwd.endpoint());
    launch(&ec2, &ami, "m5.large", &env.namespace, 1)
        .await
        .expect("rule is used up");
    assert_eq!(fwd.injected("RunInstances"), 1);
}

#[tokio::test]
async fn after_lets_the_first_calls_pass_then_answers() {
    let env = TestEnv::new("fwd-after").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let ami = env.al2023_ami().await;
    fwd.add_rule(
        Rule::new("RunInstances", InjectedError::insufficient_capacity())
            .after(1)
            .times(1),
    );
    let ec2 = ec2_no_retry(fwd.endpoint());
    launch(&ec2, &ami, "m5.large", &env.namespace, 1)
        .await
        .expect("the first call passes");
    launch(&ec2, &ami, "m5.large", &env.namespace, 1)
        .await
        .expect_err("the second is answered");
    launch(&ec2, &ami, "m5.large", &env.namespace, 1)
        .await
        .expect("used up: the third passes");
    assert_eq!(fwd.injected("RunInstances"), 1, "{:?}", fwd.snapshot());
    assert_eq!(fwd.forwarded("RunInstances"), 2, "{:?}", fwd.snapshot());
}

#[tokio::test]
async fn records_the_parameters_sent() {
    let env = TestEnv::new("fwd-record").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let token = format!("tok-{}", env.namespace);
    ec2.run_instances()
        .image_id(&ami)
        .instance_type(InstanceType::T3Nano)
        .min_count(1)
        .max_count(1)
        .client_token(&token)
        .send()
        .await
        .expect("RunInstances");

    let sent = fwd.requests("RunInstances");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let get = |k: &str| sent[0].get(k).map(String::as_str);
    assert_eq!(get("ClientToken"), Some(token.as_str()));
    assert_eq!(get("InstanceType"), Some("t3.nano"));
    assert_eq!(get("ImageId"), Some(ami.as_str()));
    assert_eq!(get("MaxCount"), Some("1"));
    assert!(fwd.requests("TerminateInstances").is_empty());

    fwd.reset_counters();
    assert_eq!(fwd.calls("RunInstances"), 0);
    assert!(fwd.requests("RunInstances").is_empty());
}

/// moto answers DescribeInstanceStatus whole; the forwarder pages it as EC2
/// does, so the SDK's paginator walks pages of at most MaxResults and sees
/// every running instance once.
#[tokio::test]
async fn instance_statuses_come_in_pages_of_max_results() {
    let env = TestEnv::new("fwd-pages").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let mine = launch(&ec2, &ami, "t3.nano", &env.namespace, 7)
        .await
        .expect("RunInstances");
    assert_eq!(mine.len(), 7);
    fwd.reset_counters();

    let mut pages = ec2
        .describe_instance_status()
        .include_all_instances(false)
        .max_results(5)
        .into_paginator()
        .send();
    let mut listed: Vec<String> = Vec::new();
    let mut sizes = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.expect("a DescribeInstanceStatus page");
        sizes.push(page.instance_statuses().len());
        listed.extend(
            page.instance_statuses()
                .iter()
                .filter_map(|s| s.instance_id().map(str::to_string)),
        );
    }
    assert!(
        sizes.len() >= 2,
        "7 running instances at 5 a page: {sizes:?}"
    );
    assert!(sizes.iter().all(|n| *n <= 5), "{sizes:?}");
    assert_eq!(fwd.calls("DescribeInstanceStatus"), sizes.len() as u64);
    for id in &mine {
        let times = listed.iter().filter(|l| *l == id).count();
        assert_eq!(times, 1, "{id} listed {times} times across {sizes:?}");
    }
    let sent = fwd.requests("DescribeInstanceStatus");
    assert!(!sent[0].contains_key("NextToken"), "{sent:?}");
    assert!(
        sent[1..].iter().all(|p| p.contains_key("NextToken")),
        "{sent:?}"
    );

    ec2.terminate_instances()
        .set_instance_ids(Some(mine))
        .send()
        .await
        .expect("TerminateInstances");
}

#[tokio::test]
async fn fleet_overrides_match_by_key_suffix() {
    let env = TestEnv::new("fwd-fleet").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let ec2 = ec2_no_retry(fwd.endpoint());
    fwd.add_rule(
        Rule::new("CreateFleet", InjectedError::insufficient_capacity())
            .param(".InstanceType", "c6i.xlarge")
            .param(".SubnetId", "subnet-0fwd"),
    );
    let fleet = |instance_type: InstanceType| {
        ec2.create_fleet()
            .r#type(FleetType::Instant)
            .launch_template_configs(
                FleetLaunchTemplateConfigRequest::builder()
                    .launch_template_specification(
                        FleetLaunchTemplateSpecificationRequest::builder()
                            .launch_template_name("not-there")
                            .version("$Latest")
                            .build(),
                    )
                    .overrides(
                        FleetLaunchTemplateOverridesRequest::builder()
                            .instance_type(instance_type)
                            .subnet_id("subnet-0fwd")
                            .build(),
                    )
                    .build(),
            )
            .target_capacity_specification(
                TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(1)
                    .default_target_capacity_type(DefaultTargetCapacityType::OnDemand)
                    .build(),
            )
            .send()
    };

    let err = fleet(InstanceType::C6iXlarge)
        .await
        .expect_err("the override's type has no capacity");
    assert_eq!(err.code(), Some("InsufficientInstanceCapacity"));
    let sent = fwd.requests("CreateFleet");
    assert_eq!(
        sent[0]
            .get("LaunchTemplateConfigs.1.Overrides.1.InstanceType")
            .map(String::as_str),
        Some("c6i.xlarge"),
        "the SDK nests the override: {sent:?}"
    );

    // Another type passes the rule and reaches moto (whatever it answers
    // about the missing template).
    let _ = fleet(InstanceType::M5Large).await;
    assert_eq!(fwd.injected("CreateFleet"), 1);
    assert_eq!(fwd.forwarded("CreateFleet"), 1);
}

#[tokio::test]
async fn request_limit_rule_reaches_the_sdk_as_throttling() {
    let env = TestEnv::new("fwd-throttle-rule").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let rule = fwd.add_rule(Rule::new(
        "DescribeInstances",
        InjectedError::request_limit_exceeded(),
    ));

    let err = ec2_no_retry(fwd.endpoint())
        .describe_instances()
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("RequestLimitExceeded"));
    assert_eq!(err.message(), Some("Request limit exceeded."));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));
    assert_eq!(fwd.calls("DescribeInstances"), 1);

    // The SDK retries throttling on its own: 3 attempts for one call.
    let retrying = ec2_fast_retry(fwd.endpoint());
    let err = retrying
        .describe_instances()
        .send()
        .await
        .expect_err("throttled every time");
    assert_eq!(err.code(), Some("RequestLimitExceeded"));
    assert_eq!(fwd.calls("DescribeInstances"), 4);
    assert_eq!(
        fwd.injected_code("DescribeInstances", "RequestLimitExceeded"),
        4
    );

    // Two throttles, then the SDK's third attempt passes.
    fwd.remove_rule(rule);
    fwd.reset_counters();
    fwd.add_rule(Rule::new("DescribeInstances", InjectedError::request_limit_exceeded()).times(2));
    retrying
        .describe_instances()
        .send()
        .await
        .expect("third attempt passes");
    let snapshot = fwd.snapshot();
    let expected: BTreeMap<String, u64> = [
        ("calls/DescribeInstances", 3),
        ("forwarded/DescribeInstances", 1),
        ("injected/DescribeInstances/RequestLimitExceeded", 2),
        ("throttled", 0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(snapshot, expected);

    // An internal error and clear_rules.
    fwd.add_rule(Rule::new("*", InjectedError::internal_error()));
    let err = ec2_no_retry(fwd.endpoint())
        .describe_regions()
        .send()
        .await
        .expect_err("internal error");
    assert_eq!(err.code(), Some("InternalError"));
    fwd.clear_rules();
    ec2_no_retry(fwd.endpoint())
        .describe_regions()
        .send()
        .await
        .expect("rules cleared");
}

#[tokio::test]
async fn rate_limits_throttle_empty_buckets_and_refill() {
    let env = TestEnv::new("fwd-rate").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let mut limits = RateLimits::ec2_defaults();
    // Refill of one token per two seconds: five quick calls cannot earn a
    // token back even on a loaded machine.
    limits.describe = Bucket::new(3.0, 0.5);
    limits.describe_unfiltered = Bucket::new(3.0, 0.5);
    limits.launched_instances = Bucket::new(3.0, 0.001);
    fwd.set_rate_limits(Some(limits));

    // The unfiltered bucket is seen on a call moto answers at once (its few
    // security groups): an unfiltered DescribeInstances lists every instance
    // this binary's tests launched, which on a loaded machine can take longer
    // than a token's refill.
    let groups = || ec2.describe_security_groups().send();
    let mut passed = 0;
    let mut throttled = 0;
    for _ in 0..5 {
        match groups().await {
            Ok(_) => passed += 1,
            Err(e) => {
                assert_eq!(e.code(), Some("RequestLimitExceeded"), "{e:?}");
                throttled += 1;
            }
        }
    }
    assert_eq!((passed, throttled), (3, 2), "{:?}", fwd.snapshot());
    assert_eq!(fwd.throttled(), 2);
    assert_eq!(fwd.throttled_for("DescribeSecurityGroups"), 2);
    assert_eq!(fwd.forwarded("DescribeSecurityGroups"), 3);
    assert_eq!(fwd.calls("DescribeSecurityGroups"), 5);

    // Right away (nothing slow in between), one refilled token.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    groups().await.expect("a token came back after two seconds");
    assert!(groups().await.is_err());

    // A filtered DescribeInstances draws from the larger bucket, as on EC2.
    ec2.describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        )
        .send()
        .await
        .expect("filtered call has its own bucket");

    // SSM is not EC2: not limited.
    let ssm = hostforge_testbed::ssm_client(fwd.endpoint());
    for _ in 0..5 {
        ssm.get_parameter()
            .name(hostforge_testbed::AL2023_PARAM)
            .send()
            .await
            .expect("GetParameter is not throttled");
    }

    // The launched-instances bucket counts MaxCount.
    launch(&ec2, &ami, "t3.micro", &env.namespace, 2)
        .await
        .expect("2 of 3 instance tokens");
    let err = launch(&ec2, &ami, "t3.micro", &env.namespace, 2)
        .await
        .expect_err("only 1 instance token left");
    assert_eq!(err.code(), Some("RequestLimitExceeded"));
    launch(&ec2, &ami, "t3.micro", &env.namespace, 1)
        .await
        .expect("the last instance token");
    assert_eq!(in_moto(&env, &env.namespace).await.len(), 3);
    assert_eq!(fwd.throttled_for("RunInstances"), 1);

    fwd.set_rate_limits(None);
    for _ in 0..5 {
        ec2.describe_instances().send().await.expect("limits off");
    }
}

#[test]
fn ec2_defaults_follow_the_documented_buckets() {
    let limits = RateLimits::ec2_defaults();
    let none = BTreeMap::new();
    let bucket = |action: &str| limits.request_bucket(action, &none);
    assert_eq!(
        bucket("RunInstances"),
        ("RunInstances".into(), Bucket::new(5.0, 2.0))
    );
    assert_eq!(
        bucket("TerminateInstances"),
        ("TerminateInstances".into(), Bucket::new(100.0, 5.0))
    );
    assert_eq!(
        bucket("CreateFleet"),
        ("CreateFleet".into(), Bucket::new(50.0, 5.0))
    );
    assert_eq!(bucket("CreateTags").1, Bucket::new(100.0, 10.0));
    assert_eq!(
        bucket("DescribeImages"),
        ("DescribeImages".into(), Bucket::new(100.0, 20.0))
    );
    assert_eq!(
        bucket("DescribeInstances"),
        (
            "DescribeInstances#unfiltered".into(),
            Bucket::new(50.0, 10.0)
        )
    );
    let filtered: BTreeMap<String, String> =
        [("Filter.1.Name".to_string(), "x".to_string())].into();
    assert_eq!(
        limits.request_bucket("DescribeInstances", &filtered).1,
        Bucket::new(100.0, 20.0)
    );
    let run: BTreeMap<String, String> = [("MaxCount".to_string(), "7".to_string())].into();
    assert_eq!(
        limits.resource_bucket("RunInstances", &run),
        Some((
            "RunInstances#instances".into(),
            Bucket::new(1000.0, 2.0),
            7.0
        ))
    );

    let small = limits.clone().scaled(0.1);
    assert_eq!(small.run_instances, Bucket::new(1.0, 0.2));
    assert_eq!(small.describe, Bucket::new(10.0, 2.0));
    assert_eq!(small.actions["CreateTags"], Bucket::new(10.0, 1.0));

    // Suffix keys match nested and top-level parameters alike.
    let rule = Rule::new("CreateFleet", InjectedError::internal_error())
        .param(".InstanceType", "c6i.xlarge");
    let nested: BTreeMap<String, String> = [(
        "LaunchTemplateConfigs.1.Overrides.2.InstanceType".to_string(),
        "c6i.xlarge".to_string(),
    )]
    .into();
    let other: BTreeMap<String, String> = [(
        "LaunchTemplateConfigs.1.Overrides.2.InstanceType".to_string(),
        "m5.large".to_string(),
    )]
    .into();
    let near_miss: BTreeMap<String, String> =
        [("SubInstanceType".to_string(), "c6i.xlarge".to_string())].into();
    assert!(rule.matches("CreateFleet", &nested));
    assert!(!rule.matches("CreateFleet", &other));
    assert!(!rule.matches("CreateFleet", &near_miss));
    assert!(!rule.matches("RunInstances", &nested));
    let top: BTreeMap<String, String> =
        [("InstanceType".to_string(), "c6i.xlarge".to_string())].into();
    assert!(Rule::new("*", InjectedError::internal_error())
        .param(".InstanceType", "c6i.xlarge")
        .matches("RunInstances", &top));
}
