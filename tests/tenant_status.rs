//! What a tenant can read about a template it cannot fix is what is wrong, never
//! a secret: the value of an SSM parameter that is not an image id, AWS's
//! encoded authorization message, or the names of the operator's other
//! providers. The operator runs against moto through the test forwarder (for
//! the AccessDenied answer); the test reads every condition and Event a tenant
//! of the namespace can read.

use std::time::{Duration, Instant};

use hostforge::api::MachineTemplate;
use hostforge_testbed::forwarder::{Forwarder, InjectedError, Rule};
use hostforge_testbed::machines::wait_template;
use hostforge_testbed::operator::default_config;
use hostforge_testbed::{OperatorProcess, TestEnv};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// A parameter value that is plainly not an image id, and looks like a secret.
const SECRET: &str = "db-password=hunter2-Sup3rS3cret";
/// A value that starts like an image id but is not one.
const AMI_ISH: &str = "ami-hunter2s3cretpassw0rd";
/// AWS's encoded authorization message (decodable with
/// sts:DecodeAuthorizationMessage by whoever may call it, not by a tenant).
const BLOB: &str = "4GIOHlTkIaWHQDxXqBLOBs3cr3tZmFrZS1lbmNvZGVkLWF1dGhvcml6YXRpb24tbWVzc2FnZQ-_x9";
/// The image id whose DescribeImages is refused with the blob.
const DENIED_IMAGE: &str = "ami-0123456789abcdef0";

fn template(name: &str, spec: serde_json::Value) -> MachineTemplate {
    serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineTemplate",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("valid MachineTemplate")
}

/// The template's Ready condition (status, reason, message) for its current
/// generation, once written.
fn ready(mt: &MachineTemplate) -> Option<(String, String, String)> {
    let status = mt.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    (status.observed_generation == mt.metadata.generation)
        .then(|| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits for a Warning Event about `object` with `reason` and returns its note.
async fn warning_note(env: &TestEnv, object: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let deadline = Instant::now() + WAIT;
    loop {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        let found = list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
        });
        if let Some(e) = found {
            return e.note.unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "no {reason} Event for {object}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn tenant_visible_status_says_what_is_wrong_without_the_secret() {
    let env = TestEnv::new("tenant-status").await;
    env.install_crds().await;
    let ssm = env.ssm();
    let secret_param = format!("/hostforge-test/{}/secret", env.namespace);
    let amiish_param = format!("/hostforge-test/{}/amiish", env.namespace);
    for (name, value) in [(&secret_param, SECRET), (&amiish_param, AMI_ISH)] {
        ssm.put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .expect("PutParameter");
    }
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.add_rule(
        Rule::new(
            "DescribeImages",
            InjectedError::new(
                403,
                "UnauthorizedOperation",
                format!(
                    "You are not authorized to perform this operation. \
                     Encoded authorization failure message: {BLOB}"
                ),
            ),
        )
        .param("ImageId.1", DENIED_IMAGE),
    );
    let config = default_config(&env, "5m").replace(&env.bed.moto_url, fwd.endpoint());
    let _op = OperatorProcess::start(&env, &config).await;

    let types = json!([{"type": "t3.micro"}]);
    // (name, spec, reason, words the message must say)
    let cases = [
        (
            "ssm-secret",
            json!({"image": {"ssmParameter": secret_param}, "instanceTypes": types}),
            "InvalidSpec",
            vec![secret_param.as_str(), "does not hold an AMI id"],
        ),
        (
            "ssm-amiish",
            json!({"image": {"ssmParameter": amiish_param}, "instanceTypes": types}),
            "InvalidSpec",
            vec![amiish_param.as_str(), "does not hold an AMI id"],
        ),
        (
            "denied",
            json!({"image": {"id": DENIED_IMAGE}, "instanceTypes": types}),
            "AccessDenied",
            vec![
                "UnauthorizedOperation",
                "not authorized to perform this operation",
            ],
        ),
        (
            "unknown-provider",
            json!({"provider": "nowhere", "image": {"id": DENIED_IMAGE}, "instanceTypes": types}),
            "ProviderUnknown",
            vec!["\"nowhere\"", "is not configured"],
        ),
    ];
    let api = Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace);
    for (name, spec, _, _) in &cases {
        api.create(&PostParams::default(), &template(name, spec.clone()))
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }

    let mut seen = vec![];
    for (name, _, reason, words) in &cases {
        let mt = wait_template(&env, name, reason, WAIT, |mt| {
            ready(mt).is_some_and(|(s, r, _)| s == "False" && r == *reason)
        })
        .await;
        let (_, _, message) = ready(&mt).expect("Ready condition");
        for word in words {
            assert!(message.contains(word), "{name}: {word:?} in {message:?}");
        }
        let note = warning_note(&env, name, reason).await;
        assert!(!note.is_empty(), "{name}: the Event explains itself");
        seen.push((name.to_string(), message));
        seen.push((format!("{name} Event"), note));
    }

    // Every condition and Event a tenant can read in the namespace, not only
    // the ones waited for.
    for mt in api.list(&ListParams::default()).await.expect("list").items {
        for c in mt.status.map(|s| s.conditions).unwrap_or_default() {
            seen.push((format!("{:?} {}", mt.metadata.name, c.type_), c.message));
        }
    }
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    for e in events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
    {
        seen.push((format!("Event {:?}", e.reason), e.note.unwrap_or_default()));
    }
    for (what, text) in &seen {
        for secret in [SECRET, "hunter2", AMI_ISH, BLOB, "aws-default"] {
            assert!(
                !text.contains(secret),
                "{what}: {secret:?} must not be shown to tenants: {text:?}"
            );
        }
    }
}
