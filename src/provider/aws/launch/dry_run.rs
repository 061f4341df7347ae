//! Dry runs of a template's launch, made by the template controller before
//! any request launches from it, so a missing permission, a tag policy or a
//! parameter EC2 refuses shows on the template rather than on every request.
//!
//! EC2 answers a call with `DryRun=true` by checking it without doing it: the
//! error `DryRunOperation` means it would have succeeded,
//! `UnauthorizedOperation` that the caller may not make it, and any other
//! error is what the real call would have answered
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/CommonParameters.html>,
//! `DryRun`).
//!
//! - RunInstances templates: RunInstances of the launch, one machine.
//! - EC2 Fleet templates: CreateLaunchTemplate of the template the fleet
//!   would launch from (with its tags), then RunInstances of the first
//!   type and subnet, all on-demand unless the template is all spot: an
//!   instant fleet launches with the caller's `ec2:RunInstances` and
//!   `ec2:CreateTags` permissions. CreateFleet itself is not dry-run: it
//!   names a launch template by id, which a dry run does not create.
//! - A user's own launch template (`launchTemplate`): no hostforge template
//!   is made, so no CreateLaunchTemplate; RunInstances names the user's
//!   template at the pinned version, with hostforge's parameters on top.
//! - Instance requirements: EC2 picks the types only when the fleet
//!   launches, so there is no type a RunInstances dry run could name; the
//!   dry run is the CreateLaunchTemplate one alone (with a user's template,
//!   none: its version was resolved by the template controller already).

use super::fleet::template_request;
use super::run_instances::run_instances_request;
use super::template_cache::Key;
use crate::provider::aws::calls::Calls;
use crate::provider::aws::clients::AwsClients;
use crate::provider::aws::launch_templates::new_name;
use crate::provider::{LaunchApi, LaunchCapacity, LaunchSpec, ProviderError};

/// Dry-runs `spec` (see the module doc): `Ok` when EC2 says every call
/// would have succeeded, else the first refusal.
pub(super) async fn validate(
    clients: &AwsClients,
    calls: &Calls,
    spec: &LaunchSpec,
) -> Result<(), ProviderError> {
    match spec.api {
        LaunchApi::RunInstances => run_instances(clients, calls, spec).await,
        LaunchApi::Fleet => {
            if spec.options.base_template.is_none() {
                let key = Key::of(spec);
                let request =
                    template_request(&clients.ec2, &key, &new_name(&spec.tags)).dry_run(true);
                calls
                    .dry_run("CreateLaunchTemplate", || request.send())
                    .await?;
            }
            if spec.options.instance_requirements.is_some() {
                return Ok(());
            }
            run_instances(clients, calls, &as_run_instances(spec)).await
        }
    }
}

async fn run_instances(
    clients: &AwsClients,
    calls: &Calls,
    spec: &LaunchSpec,
) -> Result<(), ProviderError> {
    let request = run_instances_request(&clients.ec2, spec)?.dry_run(true);
    calls.dry_run("RunInstances", || request.send()).await
}

/// The RunInstances an instant fleet of `spec` comes down to for one
/// machine: its first type and subnet (RunInstances takes the first of
/// each), on-demand unless the fleet is all spot.
fn as_run_instances(spec: &LaunchSpec) -> LaunchSpec {
    let mut single = spec.clone();
    single.api = LaunchApi::RunInstances;
    single.count = 1;
    if single.capacity.on_demand_percent != 0 {
        single.capacity = LaunchCapacity::on_demand();
    }
    single.options.max_total_price = None;
    single
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{offline_client, spec};
    use super::*;

    #[test]
    fn a_fleet_comes_down_to_one_on_demand_machine_of_its_first_choice() {
        let mut fleet = spec();
        fleet.api = LaunchApi::Fleet;
        fleet.count = 40;
        fleet.capacity.on_demand_percent = 30;
        let single = as_run_instances(&fleet);
        assert_eq!(single.api, LaunchApi::RunInstances);
        assert_eq!(single.count, 1);
        assert_eq!(single.capacity.on_demand_percent, 100);
        let request = run_instances_request(&offline_client(), &single)
            .expect("a launchable spec")
            .dry_run(true);
        let input = request.as_input();
        assert_eq!(input.get_dry_run(), &Some(true));
        assert_eq!(input.get_max_count(), &Some(1));
        assert_eq!(
            input.get_instance_type().as_ref().map(|t| t.as_str()),
            fleet.instance_types.first().map(|t| t.name.as_str())
        );
        assert!(input.get_instance_market_options().is_none());

        fleet.capacity.on_demand_percent = 0;
        assert_eq!(as_run_instances(&fleet).capacity.on_demand_percent, 0);
    }

    #[test]
    fn a_fleet_on_a_users_template_dry_runs_run_instances_on_that_template() {
        let mut fleet = spec();
        fleet.api = LaunchApi::Fleet;
        fleet.options.base_template = Some(crate::provider::BaseTemplate {
            id: "lt-0aaaaaaaaaaaaaaaa".into(),
            version: 5,
        });
        let request = run_instances_request(&offline_client(), &as_run_instances(&fleet))
            .expect("a launchable spec")
            .dry_run(true);
        let lt = request
            .as_input()
            .get_launch_template()
            .clone()
            .expect("the user's template");
        assert_eq!(lt.launch_template_id(), Some("lt-0aaaaaaaaaaaaaaaa"));
        assert_eq!(lt.version(), Some("5"));
    }
}
