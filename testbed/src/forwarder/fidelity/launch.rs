//! RunInstances and CreateFleet through the model: the token registry,
//! partial and zero-instance launches, and recording what was launched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hyper::header::HeaderMap;

use super::faults::{FaultKind, FleetError};
use super::tokens::{zone_of, Entry, Key, Verdict};
use super::upstream::{call, id_params, own_call, region, Answer};
use super::xml::{Document, Element};
use super::{deaths, templates, Reply};
use crate::forwarder::rules::InjectedError;
use crate::forwarder::Shared;

/// RunInstances: registry (keyed by token and zone), then a forward that
/// may launch fewer than MaxCount.
pub(super) async fn run_instances(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
    before: Option<FaultKind>,
) -> Result<Reply, String> {
    let on = shared.lock().model.on;
    let token = params.get("ClientToken").filter(|t| !t.is_empty()).cloned();
    let Some(token) = token.filter(|_| on) else {
        return forward_run(shared, headers, params, before, None, None).await;
    };
    let region = region(headers);
    let (zone, drawn) = zone_of(shared, headers, &region, params).await?;
    let key = Key {
        action: "RunInstances".to_string(),
        region,
        token,
        zone: zone.clone(),
    };
    let gate = shared.lock().model.registry.lock_for(&key);
    let _one_at_a_time = gate.lock().await;
    let verdict = shared.lock().model.registry.check(&key, params);
    match verdict {
        Verdict::Mismatch => Ok(mismatch(shared)),
        Verdict::Replay(entry) => replay_run(shared, headers, entry).await,
        Verdict::New => {
            let placement = drawn.then_some(zone);
            forward_run(shared, headers, params, before, Some(key), placement).await
        }
    }
}

fn mismatch(shared: &Shared) -> Reply {
    shared.lock().model.counters.mismatches += 1;
    Reply::Error(InjectedError::new(
        400,
        "IdempotentParameterMismatch",
        "The client token you have provided is associated with a resource that is already \
         deleted or has different parameters.",
    ))
}

/// The first answer again, each instance's state as moto has it now; or
/// `IdempotentInstanceTerminated` when none of them is left.
async fn replay_run(shared: &Shared, headers: &HeaderMap, entry: Entry) -> Result<Reply, String> {
    let answer = own_call(
        shared,
        headers,
        "DescribeInstances",
        &id_params(&entry.instance_ids),
    )
    .await?;
    let mut states: HashMap<String, Element> = HashMap::new();
    if let Some(doc) = answer.document() {
        for reservation in doc
            .root
            .child("reservationSet")
            .iter()
            .flat_map(|s| s.elements())
        {
            for item in reservation
                .child("instancesSet")
                .iter()
                .flat_map(|s| s.elements())
            {
                if let (Some(id), Some(state)) =
                    (item.text_at(&["instanceId"]), item.child("instanceState"))
                {
                    states.insert(id, state.clone());
                }
            }
        }
    }
    let all_terminated = !entry.instance_ids.is_empty()
        && entry.instance_ids.iter().all(|id| {
            states
                .get(id)
                .and_then(|s| s.text_at(&["name"]))
                .is_some_and(|name| name == "terminated")
        });
    if all_terminated {
        shared.lock().model.counters.terminated_answers += 1;
        return Ok(Reply::Error(InjectedError::new(
            400,
            "IdempotentInstanceTerminated",
            "The client token you have provided is associated with a request for which the \
             instance has been terminated.",
        )));
    }
    let text = String::from_utf8_lossy(&entry.body).into_owned();
    let Some(mut doc) = Document::parse(&text) else {
        return Ok(Reply::Xml(text));
    };
    if let Some(set) = doc.root.child_mut("instancesSet") {
        for item in set.elements_mut() {
            let fresh = item.text_at(&["instanceId"]).and_then(|id| states.get(&id));
            if let Some(state) = fresh {
                item.set_child(state.clone());
            }
        }
    }
    shared.lock().model.counters.replays += 1;
    Ok(Reply::Xml(doc.render()))
}

async fn forward_run(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
    before: Option<FaultKind>,
    key: Option<Key>,
    placement: Option<String>,
) -> Result<Reply, String> {
    let mut sent = params.clone();
    if let Some(FaultKind::PartialRun(k)) = before {
        let k = k.max(1);
        for field in ["MaxCount", "MinCount"] {
            let asked: u32 = sent.get(field).and_then(|v| v.parse().ok()).unwrap_or(1);
            sent.insert(field.to_string(), asked.min(k).to_string());
        }
        shared.lock().model.counters.partial_launches += 1;
    }
    if let Some(zone) = placement {
        sent.insert("Placement.AvailabilityZone".to_string(), zone);
    }
    let answer = forward(shared, headers, "RunInstances", &sent, key.as_ref()).await?;
    if let Some(doc) = answer.document() {
        let ids: Vec<String> = doc
            .root
            .child("instancesSet")
            .iter()
            .flat_map(|s| s.elements())
            .filter_map(|item| item.text_at(&["instanceId"]))
            .collect();
        after_launch(shared, headers, params, key, &answer, ids);
    }
    Ok(Reply::Upstream(answer))
}

/// Sends a launch to moto and counts it under its token.
async fn forward(
    shared: &Shared,
    headers: &HeaderMap,
    action: &str,
    sent: &BTreeMap<String, String>,
    key: Option<&Key>,
) -> Result<Answer, String> {
    {
        let mut state = shared.lock();
        *state.forwarded.entry(action.to_string()).or_default() += 1;
        let token = key.map_or_else(String::new, |k| k.token.clone());
        *state
            .model
            .counters
            .launches_by_token
            .entry(token)
            .or_default() += 1;
    }
    call(shared, headers, sent).await
}

/// Registers a 200 launch answer under its token, records its instances
/// and schedules their deaths.
fn after_launch(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
    key: Option<Key>,
    answer: &Answer,
    ids: Vec<String>,
) {
    let dying = {
        let mut state = shared.lock();
        if let Some(key) = key {
            state.model.registry.register(
                key,
                Entry {
                    params: params.clone(),
                    body: answer.body.clone(),
                    instance_ids: ids.clone(),
                },
            );
        }
        state.model.launched(&ids)
    };
    deaths::schedule(shared, headers, dying);
}

/// CreateFleet: template lag, registry (keyed by token), then zero-instance
/// answers, partial fleets with an `errorSet`, or a plain forward.
pub(super) async fn create_fleet(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
    before: Option<FaultKind>,
) -> Result<Reply, String> {
    let on = shared.lock().model.on;
    let token = params.get("ClientToken").filter(|t| !t.is_empty()).cloned();
    let key = token.filter(|_| on).map(|token| Key {
        action: "CreateFleet".to_string(),
        region: region(headers),
        token,
        zone: String::new(),
    });
    let gate = key
        .as_ref()
        .map(|key| shared.lock().model.registry.lock_for(key));
    let _one_at_a_time = match &gate {
        Some(gate) => Some(gate.lock().await),
        None => None,
    };
    if let Some(key) = &key {
        let verdict = shared.lock().model.registry.check(key, params);
        match verdict {
            Verdict::Mismatch => return Ok(mismatch(shared)),
            Verdict::Replay(entry) => {
                shared.lock().model.counters.replays += 1;
                return Ok(Reply::Xml(
                    String::from_utf8_lossy(&entry.body).into_owned(),
                ));
            }
            Verdict::New => {}
        }
    }
    if let Some(refusal) = templates::fleet_names_fresh_template(shared, params) {
        return Ok(Reply::Error(refusal));
    }
    match before {
        Some(FaultKind::ZeroFleet(error)) => {
            let body = {
                let mut state = shared.lock();
                state.model.counters.zero_fleets += 1;
                let fleet_id = fleet_id(&mut state.model.rng);
                let root = Element::new("CreateFleetResponse")
                    .attr("xmlns", "http://ec2.amazonaws.com/doc/2016-11-15/")
                    .child_element(Element::with_text("requestId", &fleet_id[6..]))
                    .child_element(Element::with_text("fleetId", &fleet_id))
                    .child_element(
                        Element::new("errorSet").child_element(error_item(params, &error)),
                    )
                    .child_element(Element::new("fleetInstanceSet"));
                let body = Document::new(root).render();
                if let Some(key) = key {
                    state.model.registry.register(
                        key,
                        Entry {
                            params: params.clone(),
                            body: body.clone().into(),
                            instance_ids: Vec::new(),
                        },
                    );
                }
                body
            };
            Ok(Reply::Xml(body))
        }
        Some(FaultKind::PartialFleet(k, error)) => {
            let mut sent = params.clone();
            shrink_capacity(&mut sent, k);
            shared.lock().model.counters.partial_launches += 1;
            let mut answer = forward(shared, headers, "CreateFleet", &sent, key.as_ref()).await?;
            if let Some(mut doc) = answer.document() {
                match doc.root.child_mut("errorSet") {
                    Some(set) => set
                        .children
                        .push(super::xml::Node::Element(error_item(params, &error))),
                    None => doc.root.children.push(super::xml::Node::Element(
                        Element::new("errorSet").child_element(error_item(params, &error)),
                    )),
                }
                answer.body = doc.render().into();
            }
            finish_fleet(shared, headers, params, key, answer)
        }
        _ => {
            let answer = forward(shared, headers, "CreateFleet", params, key.as_ref()).await?;
            finish_fleet(shared, headers, params, key, answer)
        }
    }
}

fn finish_fleet(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
    key: Option<Key>,
    answer: Answer,
) -> Result<Reply, String> {
    if let Some(doc) = answer.document() {
        let ids: Vec<String> = doc
            .root
            .child("fleetInstanceSet")
            .iter()
            .flat_map(|s| s.elements())
            .flat_map(|item| {
                item.child("instanceIds")
                    .map(|ids| ids.elements().map(Element::text).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        after_launch(shared, headers, params, key, &answer, ids);
    }
    Ok(Reply::Upstream(answer))
}

/// `fleet-` and a UUID, as EC2 names instant fleets.
fn fleet_id(rng: &mut fastrand::Rng) -> String {
    let mut hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
            .collect()
    };
    format!(
        "fleet-{}-{}-{}-{}-{}",
        hex(8),
        hex(4),
        hex(4),
        hex(4),
        hex(12)
    )
}

/// Lowers the fleet's target capacity to `k` (on-demand first).
fn shrink_capacity(sent: &mut BTreeMap<String, String>, k: u32) {
    let read = |sent: &BTreeMap<String, String>, field: &str| -> Option<u32> {
        sent.get(&format!("TargetCapacitySpecification.{field}"))
            .and_then(|v| v.parse().ok())
    };
    let total = read(sent, "TotalTargetCapacity").unwrap_or(0).min(k);
    let on_demand = read(sent, "OnDemandTargetCapacity").map(|n| n.min(total));
    let spot = read(sent, "SpotTargetCapacity")
        .map(|n| n.min(total.saturating_sub(on_demand.unwrap_or(0))));
    let mut put = |field: &str, value: u32| {
        sent.insert(
            format!("TargetCapacitySpecification.{field}"),
            value.to_string(),
        );
    };
    put("TotalTargetCapacity", total);
    if let Some(n) = on_demand {
        put("OnDemandTargetCapacity", n);
    }
    if let Some(n) = spot {
        put("SpotTargetCapacity", n);
    }
}

/// One `errorSet` item naming the call's first template and override, in
/// the shape of API_CreateFleetError.html.
fn error_item(params: &BTreeMap<String, String>, error: &FleetError) -> Element {
    let get = |k: &str| params.get(k).cloned();
    let spec_prefix = "LaunchTemplateConfigs.1.LaunchTemplateSpecification.";
    let mut spec = Element::new("launchTemplateSpecification");
    for (field, element) in [
        ("LaunchTemplateId", "launchTemplateId"),
        ("LaunchTemplateName", "launchTemplateName"),
        ("Version", "version"),
    ] {
        if let Some(v) = get(&format!("{spec_prefix}{field}")) {
            spec = spec.child_element(Element::with_text(element, &v));
        }
    }
    let mut overrides = Element::new("overrides");
    for (field, element) in [
        ("InstanceType", "instanceType"),
        ("SubnetId", "subnetId"),
        ("AvailabilityZone", "availabilityZone"),
    ] {
        if let Some(v) = get(&format!("LaunchTemplateConfigs.1.Overrides.1.{field}")) {
            overrides = overrides.child_element(Element::with_text(element, &v));
        }
    }
    let mut and_overrides = Element::new("launchTemplateAndOverrides").child_element(spec);
    if !overrides.children.is_empty() {
        and_overrides = and_overrides.child_element(overrides);
    }
    let lifecycle = get("TargetCapacitySpecification.DefaultTargetCapacityType")
        .unwrap_or_else(|| "on-demand".to_string());
    Element::new("item")
        .child_element(and_overrides)
        .child_element(Element::with_text("lifecycle", &lifecycle))
        .child_element(Element::with_text("errorCode", &error.code))
        .child_element(Element::with_text("errorMessage", &error.message))
}
