//! The direct-SDK baseline: the same launches done the simple way a user
//! would script them with aws-sdk-ec2 — one RunInstances per request, one
//! after the other, then DescribeInstances polling (every poll interval, one
//! call per 200 ids) until every instance is running.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    Filter, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification,
};

/// What the baseline measured.
pub struct Baseline {
    /// From the first RunInstances until every instance was seen running.
    pub seconds: f64,
    /// The RunInstances calls alone.
    pub launch_seconds: f64,
    /// DescribeInstances calls made while polling.
    pub describes: u32,
    /// The instances it launched (to terminate afterwards).
    pub ids: Vec<String>,
}

/// Launches `requests` × `count` instances of `image`, request i with
/// instance type `types[i % len]`, tagged `hostforge-bench/baseline=<run>` and five more
/// (not hostforge's cluster tag, so no operator adopts them).
pub async fn run(
    ec2: &aws_sdk_ec2::Client,
    image: &str,
    types: &[&str],
    requests: usize,
    count: i32,
    poll: Duration,
    run: &str,
) -> Baseline {
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for i in 0..requests {
        // As many tags as hostforge puts on each instance and volume (its six
        // ownership tags): the same launches, so moto does the same work.
        let request = format!("{run}/request-{i:04}");
        let tags: Vec<Tag> = [
            ("hostforge-bench/baseline", run),
            ("hostforge-bench/request", request.as_str()),
            (
                "hostforge-bench/request-uid",
                "00000000-0000-0000-0000-000000000000",
            ),
            ("hostforge-bench/template", types[i % types.len()]),
            ("hostforge-bench/batch", request.as_str()),
            ("Name", request.as_str()),
        ]
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect();
        let spec = |kind| {
            TagSpecification::builder()
                .resource_type(kind)
                .set_tags(Some(tags.clone()))
                .build()
        };
        let out = ec2
            .run_instances()
            .image_id(image)
            .instance_type(InstanceType::from(types[i % types.len()]))
            .min_count(count)
            .max_count(count)
            .tag_specifications(spec(ResourceType::Instance))
            .tag_specifications(spec(ResourceType::Volume))
            .send()
            .await
            .expect("baseline RunInstances");
        ids.extend(
            out.instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string)),
        );
    }
    let launch_seconds = t0.elapsed().as_secs_f64();
    let mut describes = 0;
    loop {
        let mut running = 0;
        for chunk in ids.chunks(200) {
            describes += 1;
            let out = ec2
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("instance-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .send()
                .await
                .expect("baseline DescribeInstances");
            running += out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running))
                .count();
        }
        if running >= ids.len() {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    Baseline {
        seconds: t0.elapsed().as_secs_f64(),
        launch_seconds,
        describes,
        ids,
    }
}

/// Terminates the baseline's instances (not timed).
pub async fn terminate(ec2: &aws_sdk_ec2::Client, ids: &[String]) {
    for chunk in ids.chunks(500) {
        let _ = ec2
            .terminate_instances()
            .set_instance_ids(Some(chunk.to_vec()))
            .send()
            .await;
    }
}
