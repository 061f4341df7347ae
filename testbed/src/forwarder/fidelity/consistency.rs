//! Eventual consistency of instance reads: fresh instances hidden from
//! reads by id and (longer) from tag listings, stale state after a
//! terminate, death reasons shown, and TerminateInstances refusing an id
//! EC2 does not know yet.
//!
//! Models <https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>:
//! after RunInstances, DescribeInstances and TerminateInstances may answer
//! `InvalidInstanceID.NotFound`, and "does not mean the instance was or will
//! be terminated"; state changes show up late.

use std::collections::BTreeMap;
use std::time::Instant;

use hyper::header::HeaderMap;

use super::upstream::call;
use super::xml::Element;
use super::Reply;
use crate::forwarder::rules::InjectedError;
use crate::forwarder::Shared;

/// DescribeInstances: moto's answer with the items the reader cannot see
/// yet dropped (and reservations left empty dropped), pre-terminate states
/// kept for a while, and death reasons in `stateReason`.
pub(super) async fn describe(
    shared: &Shared,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Result<Reply, String> {
    let rewrites = {
        let mut state = shared.lock();
        state.count_forward("DescribeInstances");
        state.model.rewrites_reads()
    };
    let answer = call(shared, headers, params).await?;
    if !rewrites {
        return Ok(Reply::Upstream(answer));
    }
    let Some(mut doc) = answer.document() else {
        return Ok(Reply::Upstream(answer));
    };
    let by_id = params.keys().any(|k| k.starts_with("InstanceId."))
        || params
            .iter()
            .any(|(k, v)| k.starts_with("Filter.") && k.ends_with(".Name") && v == "instance-id");
    let now = Instant::now();
    let mut state = shared.lock();
    let model = &mut state.model;
    let vis = model.visibility;
    let Some(reservations) = doc.root.child_mut("reservationSet") else {
        return Ok(Reply::Upstream(answer));
    };
    for reservation in reservations.elements_mut() {
        let Some(items) = reservation.child_mut("instancesSet") else {
            continue;
        };
        items.retain_elements(|item| {
            let Some(id) = item.text_at(&["instanceId"]) else {
                return true;
            };
            let seen = model.instances.get(&id);
            let age = seen.map(|s| now.duration_since(s.launched));
            if by_id {
                let hidden = age.is_some_and(|a| a < vis.by_id);
                model.counters.hidden_by_id += u64::from(hidden);
                !hidden
            } else {
                let hidden =
                    age.is_some_and(|a| a < vis.by_tag) || model.hidden_from_tags.contains(&id);
                model.counters.hidden_by_tag += u64::from(hidden);
                !hidden
            }
        });
        for item in items.elements_mut() {
            let Some(seen) = item
                .text_at(&["instanceId"])
                .and_then(|id| model.instances.get(&id))
            else {
                continue;
            };
            if let Some((at, prior)) = &seen.terminated {
                if now.duration_since(*at) < vis.stale_after_terminate {
                    item.set_child(prior.clone());
                    model.counters.stale_states += 1;
                }
            }
            let gone = item
                .text_at(&["instanceState", "name"])
                .is_some_and(|n| n == "shutting-down" || n == "terminated");
            if let (true, Some((code, message))) = (gone, &seen.death) {
                item.set_child(
                    Element::new("stateReason")
                        .child_element(Element::with_text("code", code))
                        .child_element(Element::with_text("message", message)),
                );
                item.set_child(Element::with_text("reason", &format!("{code}: {message}")));
            }
        }
    }
    reservations.retain_elements(|r| {
        r.child("instancesSet")
            .is_some_and(|set| set.elements().next().is_some())
    });
    Ok(Reply::Xml(doc.render()))
}

/// TerminateInstances: `InvalidInstanceID.NotFound` for the whole call when
/// an id is still inside its by-id window (not forwarded); otherwise
/// forwarded, and each instance's previous state kept for stale reads.
pub(super) async fn terminate(
    shared: &Shared,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Result<Reply, String> {
    {
        let mut state = shared.lock();
        let model = &mut state.model;
        let window = model.visibility.by_id;
        let fresh = params
            .iter()
            .filter(|(k, _)| k.starts_with("InstanceId."))
            .map(|(_, id)| id)
            .find(|id| {
                model
                    .instances
                    .get(*id)
                    .is_some_and(|s| s.launched.elapsed() < window)
            })
            .cloned();
        if let Some(id) = fresh {
            model.counters.terminate_not_found += 1;
            return Ok(Reply::Error(InjectedError::new(
                400,
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{id}' does not exist"),
            )));
        }
        state.count_forward("TerminateInstances");
    }
    let answer = call(shared, headers, params).await?;
    if let Some(doc) = answer.document() {
        let now = Instant::now();
        let mut state = shared.lock();
        let model = &mut state.model;
        if !model.visibility.stale_after_terminate.is_zero() {
            for item in doc
                .root
                .child("instancesSet")
                .iter()
                .flat_map(|s| s.elements())
            {
                let (Some(id), Some(previous)) =
                    (item.text_at(&["instanceId"]), item.child("previousState"))
                else {
                    continue;
                };
                if let Some(seen) = model.instances.get_mut(&id) {
                    if seen.terminated.is_none() {
                        let mut prior = previous.clone();
                        prior.name = "instanceState".to_string();
                        seen.terminated = Some((now, prior));
                    }
                }
            }
        }
    }
    Ok(Reply::Upstream(answer))
}
