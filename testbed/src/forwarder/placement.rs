//! Placement groups, which moto (5.x) does not implement: the forwarder keeps
//! the groups a test declares and answers `DescribePlacementGroups` from them
//! as EC2 does (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribePlacementGroups.html>):
//! a `group-name` filter answers only the groups that exist (an unknown name
//! is simply absent), while an unknown name in `GroupName.N` fails the whole
//! call with HTTP 400 `InvalidPlacementGroup.Unknown`
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>).

use std::collections::BTreeMap;

use super::rules::InjectedError;

/// One placement group as the forwarder reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementGroup {
    /// The group's name.
    pub name: String,
    /// `cluster`, `partition` or `spread`.
    pub strategy: String,
    /// Partitions of a `partition` group.
    pub partition_count: Option<i32>,
}

impl PlacementGroup {
    /// A group of `strategy` named `name`.
    pub fn new(name: impl Into<String>, strategy: impl Into<String>) -> PlacementGroup {
        PlacementGroup {
            name: name.into(),
            strategy: strategy.into(),
            partition_count: None,
        }
    }
}

/// The answer to one `DescribePlacementGroups` with these `params`: a 200
/// body, or EC2's error for a named group that does not exist.
pub(super) fn describe(
    groups: &[PlacementGroup],
    params: &BTreeMap<String, String>,
) -> Result<String, InjectedError> {
    let named = indexed(params, "GroupName.");
    if let Some(unknown) = named.iter().find(|n| !groups.iter().any(|g| &g.name == *n)) {
        return Err(InjectedError::new(
            400,
            "InvalidPlacementGroup.Unknown",
            format!("The Placement Group '{unknown}' is unknown."),
        ));
    }
    let filtered = name_filter(params);
    let items: String = groups
        .iter()
        .filter(|g| named.is_empty() || named.contains(&g.name))
        .filter(|g| filtered.as_ref().is_none_or(|f| f.contains(&g.name)))
        .enumerate()
        .map(|(i, g)| item(i, g))
        .collect();
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <DescribePlacementGroupsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>hostforge-forwarder</requestId>\
         <placementGroupSet>{items}</placementGroupSet>\
         </DescribePlacementGroupsResponse>"
    ))
}

fn item(index: usize, g: &PlacementGroup) -> String {
    let partitions = g
        .partition_count
        .map(|n| format!("<partitionCount>{n}</partitionCount>"))
        .unwrap_or_default();
    format!(
        "<item><groupName>{}</groupName><groupId>pg-{:017x}</groupId><strategy>{}</strategy>\
         <state>available</state>{partitions}</item>",
        escape(&g.name),
        index + 1,
        escape(&g.strategy),
    )
}

/// `text` safe inside an XML element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The values of `<prefix>1`, `<prefix>2`, …
fn indexed(params: &BTreeMap<String, String>, prefix: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(prefix)
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .map(|(_, v)| v.clone())
        .collect()
}

/// The values of the `group-name` filter, if the call has one.
fn name_filter(params: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let filter = params
        .iter()
        .find(|(k, v)| k.starts_with("Filter.") && k.ends_with(".Name") && *v == "group-name")
        .map(|(k, _)| k.trim_end_matches("Name").to_string())?;
    Some(indexed(params, &format!("{filter}Value.")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::params;

    #[test]
    fn a_filter_answers_only_existing_groups_and_a_name_fails_the_call() {
        let groups = [PlacementGroup::new("a", "cluster")];
        let body = describe(
            &groups,
            &params(&[
                ("Filter.1.Name", "group-name"),
                ("Filter.1.Value.1", "a"),
                ("Filter.1.Value.2", "b"),
            ]),
        )
        .expect("200");
        assert!(body.contains("<groupName>a</groupName>"), "{body}");
        assert!(!body.contains("<groupName>b</groupName>"), "{body}");
        let none = describe(
            &groups,
            &params(&[("Filter.1.Name", "group-name"), ("Filter.1.Value.1", "b")]),
        )
        .expect("200");
        assert!(!none.contains("<item>"), "{none}");
        let err = describe(&groups, &params(&[("GroupName.1", "b")])).expect_err("400");
        assert_eq!(
            (err.status, err.code.as_str()),
            (400, "InvalidPlacementGroup.Unknown")
        );
    }
}
