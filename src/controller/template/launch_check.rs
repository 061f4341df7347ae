//! The template's launch dry run (`validateLaunches`, on by default): when a
//! template's spec or resolved image changes, the controller asks the cloud
//! whether a launch from it would pass (EC2's `DryRun`), with the tags a
//! request's machines would carry, so a missing IAM permission, a tag policy
//! or a parameter EC2 refuses shows as `LaunchValidated=False` (and the
//! template not Ready) before any request launches.
//!
//! - A refusal is retried every `launchValidationRetry` (5 minutes): what
//!   fixes it (an IAM policy, a tag policy) changes nothing the operator
//!   watches. A spec or image change checks at once.
//! - An answer that says nothing (throttled, a 5xx, no answer) leaves
//!   `LaunchValidated=Unknown` and does not hold the template: the launch
//!   itself will tell.
//! - The dry run carries no user data (it lives in the request's Secret
//!   reading) and stands in the template's name where a machine carries its
//!   request's name and uid.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::conditions::{self, LAUNCH_VALIDATED, TRUE, UNKNOWN};
use crate::api::{
    BatchLaunchTemplate, LaunchBatch, LaunchState, MachineTemplate, MachineTemplateStatus,
    ProviderApi, ResolvedLaunchTemplate,
};
use crate::controller::cloud::ownership::Owner;
use crate::controller::request::batch::{spec_for, Extras};
use crate::provider::{LaunchSpec, MachineProvider, ProviderError};

/// The batch and uid a dry run's tags carry where a machine's name its
/// batch and request.
pub const DRY_RUN_ID: &str = "launch-validation";

/// What the last dry run (or its absence) means for this reconcile.
#[derive(Debug)]
pub enum Check {
    /// No dry run is due: the condition in status stands.
    Standing,
    /// The cloud says the launch would pass.
    Passed,
    /// The cloud refused the launch: the template is not Ready.
    Refused(ProviderError),
    /// The dry run could not be made or said nothing either way.
    Inconclusive(ProviderError),
}

/// Whether a dry run of `image_id` is due: never made for this generation
/// and image, its answer unknown, or refused at least `retry` ago.
pub fn due(
    status: &MachineTemplateStatus,
    generation: Option<i64>,
    image_id: &str,
    retry: Duration,
    now: Timestamp,
) -> bool {
    let (Some(c), Some(last)) = (
        conditions::find_condition(&status.conditions, LAUNCH_VALIDATED),
        status.launch_validation.as_ref(),
    ) else {
        return true;
    };
    if c.observed_generation != generation || last.image_id != image_id {
        return true;
    }
    match c.status.as_str() {
        TRUE => false,
        UNKNOWN => true,
        _ => elapsed(&last.checked_at, now) >= retry,
    }
}

/// How long until a refusal recorded at `checked_at` is due again.
pub fn retry_in(status: &MachineTemplateStatus, retry: Duration, now: Timestamp) -> Duration {
    status
        .launch_validation
        .as_ref()
        .map(|last| retry.saturating_sub(elapsed(&last.checked_at, now)))
        .unwrap_or(retry)
        .max(Duration::from_secs(1))
}

fn elapsed(since: &Time, now: Timestamp) -> Duration {
    let secs = now.as_second().saturating_sub(since.0.as_second());
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// The launch a request of `mt` would send first, for one machine: the
/// first instance type and subnet (a fleet: all of them), the image,
/// everything else from the spec, and the tags a machine would carry.
pub fn spec(
    mt: &MachineTemplate,
    image_id: &str,
    root_device_name: Option<String>,
    cluster: &str,
    cluster_id: &str,
    launch_template: Option<&ResolvedLaunchTemplate>,
) -> LaunchSpec {
    let template = &mt.spec;
    let types: Vec<String> = template
        .instance_types
        .iter()
        .map(|t| t.instance_type.clone())
        .collect();
    let (instance_types, subnet_ids) = match template.provider_api {
        ProviderApi::RunInstances => (
            types.into_iter().take(1).collect(),
            template.subnet_ids.iter().take(1).cloned().collect(),
        ),
        ProviderApi::Ec2Fleet => (types, template.subnet_ids.clone()),
    };
    let batch = LaunchBatch {
        id: DRY_RUN_ID.into(),
        attempt: 0,
        // No recorded token: a dry run launches nothing to be idempotent
        // about (the SDK sends one of its own).
        token: String::new(),
        count: 1,
        params_digest: String::new(),
        state: LaunchState::Pending,
        image_id: Some(image_id.to_string()),
        instance_types,
        subnet_ids,
        availability_zone: None,
        capacity_type: Some(template.capacity_type),
        created_at: None,
        message: None,
        failure: None,
        group: None,
        launch_template: launch_template.map(|lt| BatchLaunchTemplate {
            id: lt.id.clone(),
            version: lt.version,
        }),
        template_digest: None,
    };
    let owner = Owner {
        cluster: cluster.to_string(),
        cluster_id: cluster_id.to_string(),
        namespace: mt.namespace().unwrap_or_default(),
        name: mt.name_any(),
        uid: DRY_RUN_ID.into(),
        template: mt.name_any(),
    };
    spec_for(
        &batch,
        template,
        &Extras {
            owner: &owner,
            request_tags: &BTreeMap::new(),
            root_device_name,
            user_data: None,
        },
    )
}

/// Makes the dry run of `spec` and reads the answer.
pub async fn run(provider: &dyn MachineProvider, spec: &LaunchSpec) -> Check {
    match provider.validate_launch(spec).await {
        Ok(()) => Check::Passed,
        Err(e) if says_nothing(&e) => Check::Inconclusive(e),
        Err(e) => Check::Refused(e),
    }
}

/// Errors that are no verdict on the launch: the cloud was busy or did not
/// answer, or spoke of capacity (which a dry run does not check).
fn says_nothing(e: &ProviderError) -> bool {
    e.is_retryable() || matches!(e, ProviderError::Unknown(_) | ProviderError::Capacity(_))
}

/// The `LaunchValidated` condition for a dry run's outcome (`Standing`:
/// none).
pub fn condition(
    check: &Check,
    spec: &LaunchSpec,
    generation: Option<i64>,
    now: Time,
) -> Option<Condition> {
    let what = || {
        let first = spec.instance_types.first().map(|t| t.name.as_str());
        format!(
            "image {}, {}",
            spec.image_id,
            first.unwrap_or("no instance type")
        )
    };
    Some(match check {
        Check::Standing => return None,
        Check::Passed => conditions::new_condition(
            LAUNCH_VALIDATED,
            true,
            "DryRunPassed",
            format!("a dry run of the launch ({}) passed", what()),
            generation,
            now,
        ),
        Check::Refused(e) => conditions::new_condition(
            LAUNCH_VALIDATED,
            false,
            "LaunchRefused",
            refusal_message(e),
            generation,
            now,
        ),
        Check::Inconclusive(e) => conditions::unknown_condition(
            LAUNCH_VALIDATED,
            "DryRunFailed",
            format!("the dry run of the launch ({}) got no verdict: {e}", what()),
            generation,
            now,
        ),
    })
}

/// What a refusal says on the template (condition and Ready).
pub fn refusal_message(e: &ProviderError) -> String {
    let d = e.detail();
    format!(
        "a dry run of {} was refused: {}: {}",
        d.operation, d.code, d.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LaunchValidation;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("a time")
    }

    fn status(
        cond: Option<&str>,
        generation: i64,
        image: &str,
        at_s: i64,
    ) -> MachineTemplateStatus {
        let mut st = MachineTemplateStatus::default();
        if let Some(state) = cond {
            let mut c = conditions::new_condition(
                LAUNCH_VALIDATED,
                false,
                "r",
                "m",
                Some(generation),
                Time(at(at_s)),
            );
            c.status = state.to_string();
            st.conditions.push(c);
        }
        st.launch_validation = Some(LaunchValidation {
            image_id: image.into(),
            checked_at: Time(at(at_s)),
        });
        st
    }

    #[test]
    fn a_dry_run_is_due_on_change_unknown_or_an_old_refusal() {
        let retry = Duration::from_secs(300);
        let now = at(1_000);
        // (condition, generation, image, checked at, due)
        let rows = [
            (None, 1, "ami-1", 900, true),
            (Some(TRUE), 1, "ami-1", 0, false),
            (Some(TRUE), 2, "ami-1", 900, true),
            (Some(TRUE), 1, "ami-2", 900, true),
            (Some(UNKNOWN), 1, "ami-1", 999, true),
            (Some("False"), 1, "ami-1", 800, false),
            (Some("False"), 1, "ami-1", 700, true),
        ];
        for (cond, generation, image, checked, want) in rows {
            let st = status(cond, generation, image, checked);
            assert_eq!(
                due(&st, Some(1), "ami-1", retry, now),
                want,
                "{cond:?} {generation} {image} {checked}"
            );
        }
        assert_eq!(
            retry_in(&status(Some("False"), 1, "ami-1", 800), retry, now),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn only_a_verdict_refuses() {
        use crate::provider::ErrorDetail;
        let d = || ErrorDetail {
            operation: "RunInstances",
            code: "UnauthorizedOperation".into(),
            message: "You are not authorized".into(),
        };
        assert!(!says_nothing(&ProviderError::AccessDenied(d())));
        assert!(!says_nothing(&ProviderError::Refused(d())));
        assert!(!says_nothing(&ProviderError::InvalidParameter(d())));
        assert!(says_nothing(&ProviderError::Throttled(d())));
        assert!(says_nothing(&ProviderError::Transient(d())));
        assert!(says_nothing(&ProviderError::Unknown(d())));
        assert_eq!(
            refusal_message(&ProviderError::AccessDenied(d())),
            "a dry run of RunInstances was refused: UnauthorizedOperation: You are not authorized"
        );
    }
}
