//! Launch templates: the account quota and the lag after creating one.
//!
//! Models <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/launch-template-restrictions.html>
//! (5,000 launch templates per Region; past it CreateLaunchTemplate answers
//! `MaxTemplateLimitExceeded`, errors-overview.html) and
//! <https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>
//! (a resource just created may be unknown to the next call:
//! `InvalidLaunchTemplateName.NotFoundException`).

use std::collections::BTreeMap;
use std::time::Instant;

use hyper::header::HeaderMap;

use super::upstream::{call, own_call};
use super::Reply;
use crate::forwarder::rules::InjectedError;
use crate::forwarder::Shared;

/// CreateLaunchTemplate: refused when moto already holds the quota's worth
/// of templates; otherwise forwarded and, with a lag set, remembered.
pub(super) async fn create(
    shared: &Shared,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Result<Reply, String> {
    let (quota, gate) = {
        let state = shared.lock();
        (
            state.model.template_quota,
            state.model.template_gate.clone(),
        )
    };
    let _one_at_a_time = gate.lock().await;
    if let Some(quota) = quota {
        let held = count(shared, headers).await?;
        if held >= quota {
            shared.lock().model.counters.template_quota_refusals += 1;
            return Ok(Reply::Error(InjectedError::new(
                400,
                "MaxTemplateLimitExceeded",
                format!(
                    "You've reached the maximum number of launch templates ({quota}) for this \
                     Region."
                ),
            )));
        }
    }
    shared.lock().count_forward("CreateLaunchTemplate");
    let answer = call(shared, headers, params).await?;
    if let Some(doc) = answer.document() {
        let mut state = shared.lock();
        if !state.model.template_lag.is_zero() {
            let now = Instant::now();
            for field in ["launchTemplateId", "launchTemplateName"] {
                if let Some(v) = doc.root.text_at(&["launchTemplate", field]) {
                    state.model.templates_created.insert(v, now);
                }
            }
        }
    }
    Ok(Reply::Upstream(answer))
}

/// DeleteLaunchTemplate: NotFound while the template is inside its lag.
pub(super) async fn delete(
    shared: &Shared,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Result<Reply, String> {
    let named = [
        params.get("LaunchTemplateName"),
        params.get("LaunchTemplateId"),
    ];
    if let Some(refusal) = refuse_fresh(shared, named.into_iter().flatten()) {
        return Ok(Reply::Error(refusal));
    }
    shared.lock().count_forward("DeleteLaunchTemplate");
    Ok(Reply::Upstream(call(shared, headers, params).await?))
}

/// The NotFound a CreateFleet naming a template inside its lag gets.
pub(super) fn fleet_names_fresh_template(
    shared: &Shared,
    params: &BTreeMap<String, String>,
) -> Option<InjectedError> {
    let named = params.iter().filter_map(|(k, v)| {
        (k.starts_with("LaunchTemplateConfigs.")
            && (k.ends_with(".LaunchTemplateSpecification.LaunchTemplateName")
                || k.ends_with(".LaunchTemplateSpecification.LaunchTemplateId")))
        .then_some(v)
    });
    refuse_fresh(shared, named)
}

fn refuse_fresh<'a>(
    shared: &Shared,
    mut named: impl Iterator<Item = &'a String>,
) -> Option<InjectedError> {
    let mut state = shared.lock();
    let model = &mut state.model;
    let lag = model.template_lag;
    let fresh = named
        .find(|n| {
            model
                .templates_created
                .get(*n)
                .is_some_and(|at| at.elapsed() < lag)
        })?
        .clone();
    model.counters.template_lag_refusals += 1;
    Some(if fresh.starts_with("lt-") {
        InjectedError::new(
            400,
            "InvalidLaunchTemplateId.NotFound",
            format!("The specified launch template, with template ID {fresh}, does not exist."),
        )
    } else {
        InjectedError::new(
            400,
            "InvalidLaunchTemplateName.NotFoundException",
            format!("The specified launch template, with template name {fresh}, does not exist."),
        )
    })
}

/// Launch templates moto holds in the call's account and Region.
async fn count(shared: &Shared, headers: &HeaderMap) -> Result<usize, String> {
    let mut total = 0;
    let mut next: Option<String> = None;
    loop {
        let mut params = vec![("MaxResults".to_string(), "200".to_string())];
        if let Some(token) = next.take() {
            params.push(("NextToken".to_string(), token));
        }
        let answer = own_call(shared, headers, "DescribeLaunchTemplates", &params).await?;
        let doc = answer
            .document()
            .ok_or_else(|| format!("DescribeLaunchTemplates answered {}", answer.status))?;
        total += doc
            .root
            .child("launchTemplates")
            .map_or(0, |set| set.elements().count());
        match doc.root.text_at(&["nextToken"]).filter(|t| !t.is_empty()) {
            Some(token) => next = Some(token),
            None => return Ok(total),
        }
    }
}
