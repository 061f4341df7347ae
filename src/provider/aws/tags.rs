//! A launch's tags in the shapes EC2 wants them: one tag list, repeated once per
//! resource type, for RunInstances and for launch templates. Tags go into the
//! launch call itself so a machine is never visible without its ownership tags.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    LaunchTemplateTagSpecificationRequest, ResourceType, Tag, TagSpecification,
};

/// What a launch tags: the machines and their volumes (the root volume carries
/// the ownership tags too, so a leaked volume can be traced to its request).
pub(super) const LAUNCHED: [ResourceType; 2] = [ResourceType::Instance, ResourceType::Volume];

/// The tags as EC2 tags, in key order (a `BTreeMap`), so identical specs send
/// identical requests.
pub(super) fn tag_list(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// One tag specification per resource type with all `tags`; none at all for
/// no tags, since EC2 rejects a specification with an empty tag list.
pub(super) fn tag_specifications(
    tags: &BTreeMap<String, String>,
    types: &[ResourceType],
) -> Vec<TagSpecification> {
    if tags.is_empty() {
        return Vec::new();
    }
    types
        .iter()
        .map(|t| {
            TagSpecification::builder()
                .resource_type(t.clone())
                .set_tags(Some(tag_list(tags)))
                .build()
        })
        .collect()
}

/// The same for launch template data, whose tag specification is its own type.
pub(super) fn template_tag_specifications(
    tags: &BTreeMap<String, String>,
    types: &[ResourceType],
) -> Vec<LaunchTemplateTagSpecificationRequest> {
    if tags.is_empty() {
        return Vec::new();
    }
    types
        .iter()
        .map(|t| {
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(t.clone())
                .set_tags(Some(tag_list(tags)))
                .build()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> BTreeMap<String, String> {
        [
            ("hostforge.io/batch".to_string(), "b-1".to_string()),
            ("Name".to_string(), "worker".to_string()),
        ]
        .into()
    }

    fn pairs(tags: &[Tag]) -> Vec<(&str, &str)> {
        tags.iter()
            .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")))
            .collect()
    }

    #[test]
    fn every_resource_type_gets_every_tag_in_key_order() {
        let specs = tag_specifications(&tags(), &LAUNCHED);
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].resource_type(), Some(&ResourceType::Instance));
        assert_eq!(specs[1].resource_type(), Some(&ResourceType::Volume));
        for s in &specs {
            assert_eq!(
                pairs(s.tags()),
                [("Name", "worker"), ("hostforge.io/batch", "b-1")]
            );
        }
        let lt = template_tag_specifications(&tags(), &LAUNCHED);
        assert_eq!(lt.len(), 2);
        assert_eq!(lt[1].resource_type(), Some(&ResourceType::Volume));
        assert_eq!(pairs(lt[1].tags()).len(), 2);
    }

    #[test]
    fn no_tags_means_no_specifications() {
        assert!(tag_specifications(&BTreeMap::new(), &LAUNCHED).is_empty());
        assert!(template_tag_specifications(&BTreeMap::new(), &LAUNCHED).is_empty());
    }
}
