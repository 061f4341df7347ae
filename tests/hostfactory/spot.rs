//! A spot interruption notice, answered by the forwarder for moto, reaches
//! HostFactory with the rest of the warning.

use super::*;
use answers::eventually_async;

/// EC2's answer to DescribeSpotInstanceRequests with one request carrying an
/// interruption notice for `instance`, given at `noticed_at` (moto keeps
/// every spot request `fulfilled`, so the forwarder answers for it).
fn noticed_spot_request(instance: &str, noticed_at: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <DescribeSpotInstanceRequestsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>\
         <spotInstanceRequestSet><item>\
         <spotInstanceRequestId>sir-1a2b3c4d</spotInstanceRequestId>\
         <state>active</state>\
         <status><code>marked-for-termination</code><updateTime>{noticed_at}</updateTime>\
         <message>Your Spot Instance is marked to be terminated.</message></status>\
         <instanceId>{instance}</instanceId>\
         </item></spotInstanceRequestSet>\
         </DescribeSpotInstanceRequestsResponse>"
    )
}

#[tokio::test]
async fn a_spot_interruption_notice_is_announced_with_the_rest_of_the_warning() {
    let env = TestEnv::new("hf-spot").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let config = format!(
        "clusterName: {ns}\nproviders:\n  - name: aws-default\n    type: aws\n    region: {region}\n    \
         endpointUrl: {url}\npollInterval: 500ms\nsweepInterval: 2s\nspotNoticeInterval: 500ms\n",
        ns = env.namespace,
        region = hostforge_testbed::REGION,
        url = fwd.endpoint(),
    );
    let _op = OperatorProcess::start(&env, &config).await;
    create_template(
        &env,
        "spot",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "capacityType": "spot",
        }),
    )
    .await;
    wait_template(&env, "spot", "Ready", WAIT, template_is_ready).await;
    let shim = Shim::new(&env, "");
    let created = shim.ok(
        "requestMachines",
        &json!({"template": {"templateId": "spot", "machineCount": 2}}),
    );
    let req_id = created["requestId"]
        .as_str()
        .expect("requestId")
        .to_string();
    let poll = json!({"requests": [{"requestId": req_id}]});
    let mut machines = vec![];
    for _ in 0..360 {
        let r = status_of(&shim.ok("getRequestStatus", &poll), &req_id);
        if r["status"] == "complete" {
            machines = r["machines"].as_array().cloned().unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(machines.len(), 2, "two spot machines running");
    let held: Vec<Value> = machines.iter().map(host).collect();
    let (noticed, fine) = (&machines[0], &machines[1]);
    let noticed_id = noticed["machineId"].as_str().expect("id").to_string();

    // Nothing is announced before EC2 says anything; the check is one
    // DescribeSpotInstanceRequests filtered on the notice codes.
    let none = shim.ok("getReturnRequests", &json!({"machines": held}));
    assert_eq!(none["requests"], json!([]), "{none}");
    eventually("a spot notice check", || {
        (fwd.calls("DescribeSpotInstanceRequests") > 0).then_some(())
    })
    .await;
    let sent = fwd.requests("DescribeSpotInstanceRequests");
    assert_eq!(
        sent[0].get("Filter.1.Name").map(String::as_str),
        Some("status-code")
    );

    // EC2 gives the two-minute warning for one of them, 30 s ago.
    let noticed_at =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(30);
    let noticed_at = noticed_at.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string();
    fwd.reply_with(
        "DescribeSpotInstanceRequests",
        noticed_spot_request(&noticed_id, &noticed_at),
    );
    let api = requests(&env);
    let mut mr: Option<MachineRequest> = None;
    let deadline = Instant::now() + WAIT;
    while mr.is_none() {
        let got = api.get(&req_id).await.expect("get request");
        let has_notice = got.status.as_ref().is_some_and(|s| {
            s.machines
                .iter()
                .any(|m| m.id == noticed_id && m.interruption_notice_time.is_some())
        });
        if has_notice {
            mr = Some(got);
        } else {
            assert!(Instant::now() < deadline, "the notice never reached status");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let mr = mr.expect("request with the notice");
    let st = mr.status.as_ref().expect("status");
    let recorded = st
        .machines
        .iter()
        .find(|m| m.id == noticed_id)
        .and_then(|m| m.interruption_notice_time.as_ref())
        .expect("notice time");
    assert_eq!(
        recorded.0.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string(),
        noticed_at,
        "status keeps EC2's notice time"
    );
    assert!(
        st.machines
            .iter()
            .filter(|m| m.id != noticed_id)
            .all(|m| m.interruption_notice_time.is_none()),
        "only the noticed machine carries a notice"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let announced = eventually_async(|| async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("SpotInterruption")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(req_id.as_str())
        })
    })
    .await;
    assert!(
        announced
            .note
            .as_deref()
            .unwrap_or_default()
            .contains(&noticed_id),
        "{announced:?}"
    );

    // getReturnRequests lists the noticed host with what is left of the
    // 120 s warning (about 90 s), and not the other one.
    let answer = shim.ok("getReturnRequests", &json!({"machines": held}));
    let listed = answer["requests"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{answer}");
    assert_eq!(listed[0]["machine"], noticed["name"]);
    let grace = listed[0]["gracePeriod"]
        .as_i64()
        .expect("integer gracePeriod");
    assert!((60..=90).contains(&grace), "grace {grace} in {answer}");
    assert!(
        listed.iter().all(|h| h["machine"] != fine["name"]),
        "a host without a notice is not listed"
    );
    // Moto still runs both: a notice is a warning, not a termination.
    assert_eq!(moto_live(&env, &uid(&mr)).await.len(), 2);
}
