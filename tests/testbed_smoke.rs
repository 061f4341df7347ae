//! Proves the test bed is made of real peers: every assertion below holds only
//! for objects and instances that a real kube-apiserver and moto returned.

use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};
use hostforge_testbed::TestEnv;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

#[tokio::test]
async fn apiserver_stores_and_returns_objects() {
    let env = TestEnv::new("smoke-kube").await;

    let version = env
        .client
        .apiserver_version()
        .await
        .expect("server version");
    assert_eq!(
        version.git_version, "v1.34.4",
        "the pinned kube-apiserver answers"
    );

    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("probe".into()),
            ..Default::default()
        },
        data: Some([("answer".to_string(), "42".to_string())].into()),
        ..Default::default()
    };
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let uid = created
        .metadata
        .uid
        .clone()
        .expect("the apiserver assigns a uid");
    assert!(created.metadata.resource_version.is_some());

    let read = cms.get("probe").await.expect("read back");
    assert_eq!(read.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(
        read.data
            .unwrap_or_default()
            .get("answer")
            .map(String::as_str),
        Some("42")
    );

    // A second create of the same name is a real conflict, not an overwrite.
    let err = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("duplicate create");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "got {err:?}"
    );

    // kubectl sees the same object through the same apiserver.
    let out = env.kubectl_ok(&[
        "get",
        "configmap",
        "probe",
        "-n",
        &env.namespace,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    assert_eq!(out, uid);
}

#[tokio::test]
async fn throwaway_crd_applies_and_validates_with_cel() {
    let env = TestEnv::new("smoke-crd").await;
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: probes.smoke.hostforge.io
spec:
  group: smoke.hostforge.io
  scope: Namespaced
  names: {plural: probes, singular: probe, kind: Probe}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
            x-kubernetes-validations:
            - rule: "self.size <= 10"
              message: "size must be at most 10"
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let crd_file = dir.path().join("crd.yaml");
    std::fs::write(&crd_file, crd).expect("write crd");
    let crd_path = crd_file.to_str().expect("utf-8");
    env.kubectl_ok(&["apply", "--server-side", "-f", crd_path]);
    env.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/probes.smoke.hostforge.io",
    ]);

    let write = |name: &str, size: u32| {
        let f = dir.path().join(format!("{name}.yaml"));
        let body = format!(
            "apiVersion: smoke.hostforge.io/v1\nkind: Probe\nmetadata: {{name: {name}}}\nspec: {{size: {size}}}\n"
        );
        std::fs::write(&f, body).expect("write object");
        f
    };
    let good = write("good", 3);
    env.kubectl_ok(&[
        "apply",
        "-n",
        &env.namespace,
        "-f",
        good.to_str().expect("utf-8"),
    ]);
    let size = env.kubectl_ok(&[
        "get",
        "probe",
        "good",
        "-n",
        &env.namespace,
        "-o",
        "jsonpath={.spec.size}",
    ]);
    assert_eq!(size, "3");

    let bad = write("bad", 11);
    let out = env.kubectl(&[
        "apply",
        "-n",
        &env.namespace,
        "-f",
        bad.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success(), "the CEL rule must reject size 11");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("size must be at most 10"),
        "apiserver message: {stderr}"
    );
}

#[tokio::test]
async fn ec2_run_instances_then_find_them_by_tag() {
    let env = TestEnv::new("smoke-ec2").await;
    let ec2 = env.ec2();
    let marker = env.namespace.clone();

    let tag = Tag::builder()
        .key("hostforge.io/batch")
        .value(&marker)
        .build();
    let run = ec2
        .run_instances()
        .image_id(env.al2023_ami().await)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(3)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(tag)
                .build(),
        )
        .send()
        .await
        .expect("RunInstances");
    let mut launched: Vec<String> = run
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    launched.sort();
    // Our launcher makes moto launch up to MaxCount, as EC2 does with capacity.
    assert_eq!(launched.len(), 3, "launched {launched:?}");
    assert!(launched.iter().all(|id| id.starts_with("i-")));

    // Noise that the filter must leave out.
    ec2.run_instances()
        .image_id(env.al2023_ami().await)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .expect("untagged RunInstances");

    let found = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:hostforge.io/batch")
                .values(&marker)
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    let mut found_ids: Vec<String> = found
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    found_ids.sort();
    assert_eq!(found_ids, launched);
}

/// The launcher's other corrections, seen through the server: a page of
/// DescribeInstances ends at MaxResults instances (moto alone counts
/// reservations), every instance's tags are its own, and volumes are
/// attached and tagged at launch (the indexed lookups RunInstances uses).
#[tokio::test]
async fn launcher_pages_by_instances_and_keeps_tags_and_volumes_per_instance() {
    let env = TestEnv::new("smoke-pages").await;
    let ec2 = env.ec2();
    let marker = env.namespace.clone();
    let ami = env.al2023_ami().await;
    let mut launched = vec![];
    for i in 0..4 {
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(
                Tag::builder()
                    .key("hostforge.io/batch")
                    .value(&marker)
                    .build(),
            )
            .tags(Tag::builder().key("seq").value(i.to_string()).build())
            .build();
        let volume_tags = TagSpecification::builder()
            .resource_type(ResourceType::Volume)
            .tags(Tag::builder().key("seq").value(i.to_string()).build())
            .build();
        let run = ec2
            .run_instances()
            .image_id(&ami)
            .min_count(1)
            .max_count(3)
            .tag_specifications(tags)
            .tag_specifications(volume_tags)
            .send()
            .await
            .expect("RunInstances");
        launched.extend(
            run.instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string)),
        );
    }
    assert_eq!(launched.len(), 12);

    // 4 reservations of 3, pages of at most 5 instances: 3+3, then 3+3.
    let mut pages = vec![];
    let mut seen: Vec<(String, String)> = vec![];
    let mut token = None;
    loop {
        let page = ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:hostforge.io/batch")
                    .values(&marker)
                    .build(),
            )
            .max_results(5)
            .set_next_token(token.take())
            .send()
            .await
            .expect("DescribeInstances page");
        let instances: Vec<_> = page
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .collect();
        pages.push(instances.len());
        for i in instances {
            let seq = i
                .tags()
                .iter()
                .find(|t| t.key() == Some("seq"))
                .and_then(|t| t.value())
                .unwrap_or_default()
                .to_string();
            seen.push((i.instance_id().unwrap_or_default().to_string(), seq));
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    assert_eq!(
        pages,
        [6, 6],
        "pages end at the reservation reaching 5 instances"
    );
    let mut ids: Vec<String> = seen.iter().map(|(id, _)| id.clone()).collect();
    ids.sort();
    let mut want = launched.clone();
    want.sort();
    assert_eq!(ids, want, "every instance once");
    for (n, id) in launched.iter().enumerate() {
        let seq = seen.iter().find(|(i, _)| i == id).map(|(_, s)| s.as_str());
        assert_eq!(
            seq,
            Some((n / 3).to_string().as_str()),
            "{id} has its own tags"
        );
    }

    // Each instance has its root volume attached and tagged by its launch.
    let volumes = ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .set_values(Some(launched.clone()))
                .build(),
        )
        .send()
        .await
        .expect("DescribeVolumes");
    assert_eq!(volumes.volumes().len(), 12);
    for v in volumes.volumes() {
        let instance = v
            .attachments()
            .first()
            .and_then(|a| a.instance_id())
            .unwrap_or_default();
        let n = launched
            .iter()
            .position(|id| id == instance)
            .expect("attached to ours");
        let seq = v
            .tags()
            .iter()
            .find(|t| t.key() == Some("seq"))
            .and_then(|t| t.value());
        assert_eq!(seq, Some((n / 3).to_string().as_str()), "{v:?}");
    }
}

#[tokio::test]
async fn ssm_public_parameter_names_an_image_ec2_knows() {
    let env = TestEnv::new("smoke-ssm").await;
    let ami = env.al2023_ami().await;
    assert!(ami.starts_with("ami-"), "parameter value {ami}");

    let images = env
        .ec2()
        .describe_images()
        .image_ids(&ami)
        .send()
        .await
        .expect("DescribeImages");
    let image = images
        .images()
        .first()
        .expect("the AMI exists in the simulator");
    assert_eq!(image.image_id(), Some(ami.as_str()));
    assert!(image.name().unwrap_or_default().starts_with("al2023-ami"));

    let missing = env
        .ssm()
        .get_parameter()
        .name("/hostforge/does-not-exist")
        .send()
        .await;
    assert!(missing.is_err(), "an unknown parameter is an error");
}
