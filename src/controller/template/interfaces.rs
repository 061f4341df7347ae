//! The check of a template's network interfaces against its instance types:
//! EC2 refuses a launch with an Elastic Fabric Adapter on a type without EFA
//! support, or an interface on a network card the type does not have, so the
//! template says so (Ready=False with the reason naming the type, and an
//! Event) before any request tries. The facts come from DescribeInstanceTypes
//! (`NetworkInfo.EfaSupported`, `NetworkInfo.MaximumNetworkCards`,
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_NetworkInfo.html>),
//! cached per provider; a type the provider says nothing about is let through
//! (the dry run and the launch still answer for it).

use crate::api::MachineTemplateSpec;
use crate::controller::reason::Reason;
use crate::provider::{InstanceTypeInfo, MachineProvider};

use super::evaluate::NotReady;

/// Checks every instance type of `spec` against its network interfaces; no
/// call when the template names none.
pub(super) async fn check(
    provider: &dyn MachineProvider,
    spec: &MachineTemplateSpec,
) -> Result<(), NotReady> {
    if spec.network_interfaces.is_empty() {
        return Ok(());
    }
    let mut facts = Vec::with_capacity(spec.instance_types.len());
    for t in &spec.instance_types {
        let info = provider
            .instance_type_info(&t.instance_type)
            .await
            .map_err(|e| {
                NotReady::from_provider(
                    "describing spec.instanceTypes for spec.networkInterfaces",
                    Reason::InstanceTypeUnknown,
                    &e,
                )
            })?;
        if let Some(info) = info {
            facts.push(info);
        }
    }
    verdict(spec, &facts)
}

/// The verdict on `spec`'s interfaces given the facts of its types: the
/// first type without EFA support (when an interface is an EFA), else the
/// first interface on a card beyond a type's cards. Instance type facts do
/// not change, so neither is retried before the template changes.
fn verdict(spec: &MachineTemplateSpec, facts: &[InstanceTypeInfo]) -> Result<(), NotReady> {
    let efa = spec
        .network_interfaces
        .iter()
        .find(|n| n.interface_type.is_efa());
    for info in facts {
        if let (Some(n), Some(false)) = (efa, info.efa_supported) {
            return Err(NotReady::new(
                Reason::EfaNotSupported,
                format!(
                    "spec.networkInterfaces: instance type {} does not support EFA \
                     (interfaceType {}); choose EFA-capable types or interfaceType interface",
                    info.instance_type,
                    n.interface_type.ec2()
                ),
                None,
            ));
        }
        let Some(cards) = info.max_network_cards else {
            continue;
        };
        for (i, n) in spec.network_interfaces.iter().enumerate() {
            let card = n.card(i);
            if card >= cards {
                return Err(NotReady::new(
                    Reason::NetworkCardOutOfRange,
                    format!(
                        "spec.networkInterfaces[{i}]: network card {card} is beyond instance type {} \
                         (it has {cards} network card{}, 0 to {})",
                        info.instance_type,
                        if cards == 1 { "" } else { "s" },
                        cards - 1
                    ),
                    None,
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(types: &[&str], interfaces: serde_json::Value) -> MachineTemplateSpec {
        let types: Vec<_> = types
            .iter()
            .map(|t| serde_json::json!({"type": t}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "image": {"id": "ami-0123456789abcdef0"},
            "instanceTypes": types,
            "networkInterfaces": interfaces,
        }))
        .expect("spec")
    }

    fn facts(t: &str, efa: bool, cards: i32) -> InstanceTypeInfo {
        InstanceTypeInfo {
            instance_type: t.into(),
            vcpus: 2,
            cores: 1,
            memory_mib: 1024,
            architecture: None,
            efa_supported: Some(efa),
            max_network_cards: Some(cards),
        }
    }

    #[test]
    fn a_type_without_efa_is_refused_by_name() {
        let s = spec(
            &["c5n.18xlarge", "t3.micro"],
            serde_json::json!([{"interfaceType": "efa"}]),
        );
        let err = verdict(
            &s,
            &[facts("c5n.18xlarge", true, 1), facts("t3.micro", false, 1)],
        )
        .expect_err("t3 has no EFA");
        assert_eq!(err.reason, Reason::EfaNotSupported);
        assert!(err.message.contains("t3.micro"), "{}", err.message);
        assert_eq!(err.retry, None);
        // Regular interfaces need no EFA.
        let plain = spec(&["t3.micro"], serde_json::json!([{}]));
        assert!(verdict(&plain, &[facts("t3.micro", false, 1)]).is_ok());
    }

    #[test]
    fn cards_beyond_the_type_are_refused() {
        let four = spec(
            &["p4d.24xlarge"],
            serde_json::json!([
                {"interfaceType": "efa"}, {"interfaceType": "efa-only"},
                {"interfaceType": "efa-only"}, {"interfaceType": "efa-only"},
            ]),
        );
        assert!(verdict(&four, &[facts("p4d.24xlarge", true, 4)]).is_ok());
        let err = verdict(&four, &[facts("c5n.18xlarge", true, 1)]).expect_err("one card");
        assert_eq!(err.reason, Reason::NetworkCardOutOfRange);
        assert!(
            err.message
                .starts_with("spec.networkInterfaces[1]: network card 1"),
            "{}",
            err.message
        );
        assert!(err.message.contains("c5n.18xlarge"), "{}", err.message);
    }

    #[test]
    fn unknown_facts_pass() {
        let s = spec(&["x9.large"], serde_json::json!([{"interfaceType": "efa"}]));
        let mut f = facts("x9.large", true, 1);
        f.efa_supported = None;
        f.max_network_cards = None;
        assert!(verdict(&s, &[f]).is_ok());
    }
}
