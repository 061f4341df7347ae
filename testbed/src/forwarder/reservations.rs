//! Capacity reservations, which moto (5.x) accepts at launch but never
//! reports: EC2's DescribeInstances names the reservation an instance runs
//! in (`Instance.CapacityReservationId`,
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Instance.html>).
//! The forwarder learns which instances were launched into a targeted
//! reservation (a RunInstances naming
//! `CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId`,
//! or a CreateFleet from a launch template that names one) and adds
//! `<capacityReservationId>` to those instances in DescribeInstances
//! answers. It does not model capacity: moto launches whatever it is asked,
//! so a reservation's size or state is never checked here.

use std::collections::BTreeMap;

/// The RunInstances parameter naming a targeted reservation.
const RUN_TARGET: &str =
    "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId";
/// The same inside CreateLaunchTemplate's data.
const TEMPLATE_TARGET: &str =
    "LaunchTemplateData.CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId";

/// What the forwarder learned: instance → reservation, and launch template
/// id → reservation (for the fleets launched from it).
#[derive(Default, Debug)]
pub(super) struct Reserved {
    by_instance: BTreeMap<String, String>,
    by_template: BTreeMap<String, String>,
}

impl Reserved {
    /// Learns from one successful answer `body` to `action` sent with `params`.
    pub(super) fn learn(&mut self, action: &str, params: &BTreeMap<String, String>, body: &str) {
        match action {
            "RunInstances" => {
                if let Some(cr) = params.get(RUN_TARGET) {
                    for id in values(body, "instanceId") {
                        self.by_instance.insert(id, cr.clone());
                    }
                }
            }
            "CreateLaunchTemplate" => {
                if let (Some(cr), Some(id)) = (
                    params.get(TEMPLATE_TARGET),
                    values(body, "launchTemplateId").into_iter().next(),
                ) {
                    self.by_template.insert(id, cr.clone());
                }
            }
            "CreateFleet" => {
                let cr = params
                    .iter()
                    .filter(|(k, _)| {
                        k.starts_with("LaunchTemplateConfigs.")
                            && k.ends_with(".LaunchTemplateSpecification.LaunchTemplateId")
                    })
                    .find_map(|(_, v)| self.by_template.get(v).cloned());
                if let Some(cr) = cr {
                    // An instant fleet's answer lists its instances as
                    // `<instanceIds><item>i-…</item></instanceIds>`.
                    for set in values(body, "instanceIds") {
                        for id in values(&set, "item") {
                            self.by_instance.insert(id, cr.clone());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// `body` (a DescribeInstances answer) with each learned instance's
    /// reservation added after its id; `None` when nothing changed.
    pub(super) fn report(&self, body: &str) -> Option<String> {
        if self.by_instance.is_empty() {
            return None;
        }
        let mut out = body.to_string();
        let mut changed = false;
        for (id, cr) in &self.by_instance {
            let tag = format!("<instanceId>{id}</instanceId>");
            if let Some(at) = out.find(&tag) {
                let end = at + tag.len();
                if !out[end..].starts_with("<capacityReservationId>") {
                    out.insert_str(
                        end,
                        &format!("<capacityReservationId>{cr}</capacityReservationId>"),
                    );
                    changed = true;
                }
            }
        }
        changed.then_some(out)
    }
}

/// The request body moto is sent for a launch into a Capacity Block. moto
/// (5.x) knows no `capacity-block`: it marks any instance with a market type
/// as spot, and a fleet whose default target capacity type is neither
/// on-demand nor spot launches nothing. EC2 launches the block's instances
/// as on-demand capacity held for the account
/// (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-capacity-blocks.html>),
/// so moto is asked for on-demand instances; the recorded parameters (what a
/// test asserts) stay as sent. `None`: send the body unchanged.
pub(super) fn for_moto(body: &str) -> Option<String> {
    const MARKETS: [&str; 2] = [
        "InstanceMarketOptions.MarketType=capacity-block",
        "LaunchTemplateData.InstanceMarketOptions.MarketType=capacity-block",
    ];
    const FLEET: &str = "TargetCapacitySpecification.DefaultTargetCapacityType=capacity-block";
    if !body.contains("capacity-block") {
        return None;
    }
    let kept: Vec<&str> = body.split('&').filter(|p| !MARKETS.contains(p)).collect();
    let out = kept.join("&").replace(
        FLEET,
        "TargetCapacitySpecification.DefaultTargetCapacityType=on-demand",
    );
    (out != body).then_some(out)
}

/// The texts of every `<name>…</name>` element in `body`, in order.
fn values(body: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find(&open) {
        let start = at + open.len();
        let Some(len) = rest[start..].find(&close) else {
            break;
        };
        out.push(rest[start..start + len].to_string());
        rest = &rest[start + len + close.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::params;

    #[test]
    fn a_targeted_launch_is_reported_in_its_reservation() {
        let mut r = Reserved::default();
        r.learn(
            "RunInstances",
            &params(&[(RUN_TARGET, "cr-1")]),
            "<instancesSet><item><instanceId>i-a</instanceId></item><item><instanceId>i-b</instanceId></item></instancesSet>",
        );
        r.learn(
            "RunInstances",
            &params(&[]),
            "<item><instanceId>i-c</instanceId></item>",
        );
        let body = "<item><instanceId>i-a</instanceId><x/></item><item><instanceId>i-c</instanceId></item>";
        let out = r.report(body).expect("changed");
        assert!(
            out.contains(
                "<instanceId>i-a</instanceId><capacityReservationId>cr-1</capacityReservationId>"
            ),
            "{out}"
        );
        assert!(!out.contains("i-c</instanceId><capacity"), "{out}");
        assert_eq!(r.report(&out), None, "added once");
    }

    #[test]
    fn moto_is_asked_for_on_demand_in_place_of_a_capacity_block() {
        let run = "Action=RunInstances&InstanceMarketOptions.MarketType=capacity-block&MaxCount=1";
        assert_eq!(
            for_moto(run).as_deref(),
            Some("Action=RunInstances&MaxCount=1")
        );
        let fleet = "Action=CreateFleet&TargetCapacitySpecification.DefaultTargetCapacityType=capacity-block";
        assert_eq!(
            for_moto(fleet).as_deref(),
            Some("Action=CreateFleet&TargetCapacitySpecification.DefaultTargetCapacityType=on-demand")
        );
        assert_eq!(for_moto("Action=RunInstances&MaxCount=1"), None);
    }

    #[test]
    fn a_fleet_from_a_targeting_template_is_reported_too() {
        let mut r = Reserved::default();
        r.learn(
            "CreateLaunchTemplate",
            &params(&[(TEMPLATE_TARGET, "cr-9")]),
            "<launchTemplate><launchTemplateId>lt-1</launchTemplateId></launchTemplate>",
        );
        r.learn(
            "CreateFleet",
            &params(&[("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId", "lt-1")]),
            "<fleetInstanceSet><item><instanceIds><item>i-f</item></instanceIds></item></fleetInstanceSet>",
        );
        let out = r.report("<instanceId>i-f</instanceId>").expect("changed");
        assert!(
            out.contains("<capacityReservationId>cr-9</capacityReservationId>"),
            "{out}"
        );
    }
}
