//! A template as its launches see it: subnets and security groups that the
//! spec chooses by tags are taken from what the template controller resolved
//! into status, so everything downstream (batches, launch specs, the tenant
//! policy, dry runs) reads plain ids whichever way the user named them.

use super::MachineTemplate;

impl MachineTemplate {
    /// Whether the spec chooses subnets or security groups by tags.
    pub fn selects_network(&self) -> bool {
        self.spec.subnet_selector.is_some() || self.spec.security_group_selector.is_some()
    }

    /// This template with `spec.subnetIds` / `spec.securityGroupIds` filled
    /// from `status.selectedSubnets` / `status.selectedSecurityGroups` where
    /// the spec has a selector; `None` when it has none (use the template as
    /// it is). An empty selection stays empty: the template controller does
    /// not call such a template Ready, so nothing launches from it.
    pub fn with_selections(&self) -> Option<MachineTemplate> {
        if !self.selects_network() {
            return None;
        }
        let mut view = self.clone();
        let status = self.status.as_ref();
        if self.spec.subnet_selector.is_some() {
            view.spec.subnet_ids = status
                .map(|s| s.selected_subnets.iter().map(|s| s.id.clone()).collect())
                .unwrap_or_default();
        }
        if self.spec.security_group_selector.is_some() {
            view.spec.security_group_ids = status
                .map(|s| {
                    s.selected_security_groups
                        .iter()
                        .map(|g| g.id.clone())
                        .collect()
                })
                .unwrap_or_default();
        }
        Some(view)
    }
}

#[cfg(test)]
mod tests {
    use crate::api::template::TagSelector;
    use crate::api::{
        MachineTemplate, MachineTemplateStatus, SelectedSecurityGroup, SelectedSubnet,
    };

    fn selector() -> TagSelector {
        TagSelector {
            tags: [("tier".to_string(), "hpc".to_string())].into(),
        }
    }

    #[test]
    fn ids_come_from_status_only_where_the_spec_selects() {
        let mut mt = MachineTemplate::new("t", Default::default());
        mt.spec.security_group_ids = vec!["sg-11111111".into()];
        assert!(mt.with_selections().is_none(), "nothing selected");

        mt.spec.subnet_selector = Some(selector());
        let view = mt.with_selections().expect("a view");
        assert!(view.spec.subnet_ids.is_empty(), "nothing resolved yet");
        assert_eq!(view.spec.security_group_ids, ["sg-11111111"]);

        mt.status = Some(MachineTemplateStatus {
            selected_subnets: vec![
                SelectedSubnet {
                    id: "subnet-aaaaaaaa".into(),
                    zone: Some("us-east-1a".into()),
                    vpc_id: None,
                },
                SelectedSubnet {
                    id: "subnet-bbbbbbbb".into(),
                    zone: Some("us-east-1b".into()),
                    vpc_id: None,
                },
            ],
            selected_security_groups: vec![SelectedSecurityGroup {
                id: "sg-22222222".into(),
                name: None,
                vpc_id: None,
            }],
            ..Default::default()
        });
        let view = mt.with_selections().expect("a view");
        assert_eq!(view.spec.subnet_ids, ["subnet-aaaaaaaa", "subnet-bbbbbbbb"]);
        // No group selector: the spec's own ids stand.
        assert_eq!(view.spec.security_group_ids, ["sg-11111111"]);

        mt.spec.security_group_ids.clear();
        mt.spec.security_group_selector = Some(selector());
        let view = mt.with_selections().expect("a view");
        assert_eq!(view.spec.security_group_ids, ["sg-22222222"]);
    }
}
