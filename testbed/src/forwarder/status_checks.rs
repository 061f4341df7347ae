//! Instance status checks, which moto serves but always reports `ok` for a
//! running instance: a test marks instance ids impaired (instance and/or
//! system status check), and the forwarder rewrites moto's
//! `DescribeInstanceStatus` answer for those ids as EC2 documents it. An
//! impaired summary has `<status>impaired</status>` and a `reachability`
//! detail `failed` with its `impairedSince`
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceStatus.html>,
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceStatusSummary.html>,
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceStatusDetails.html>;
//! what the two checks mean:
//! <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-system-instance-status-check.html>).
//! Only instances moto lists are rewritten: EC2 reports status checks of
//! running instances only (IncludeAllInstances false), and moto already
//! leaves the others out.

use std::collections::BTreeMap;

/// Which of an instance's status checks fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Impaired {
    /// The instance status check (the instance's own OS and network).
    pub instance: bool,
    /// The system status check (AWS's hardware, power, network under it).
    pub system: bool,
}

impl Impaired {
    /// Only the instance status check fails.
    pub const INSTANCE: Impaired = Impaired {
        instance: true,
        system: false,
    };
    /// Only the system status check fails.
    pub const SYSTEM: Impaired = Impaired {
        instance: false,
        system: true,
    };
}

/// One impaired instance as the forwarder reports it: which checks fail and
/// since when (ISO 8601, as EC2 writes `impairedSince`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Marked {
    pub(super) checks: Impaired,
    pub(super) since: String,
}

/// `body` (moto's DescribeInstanceStatus answer) with the summaries of the
/// instances in `marked` rewritten as impaired; `None` when nothing changed.
pub(super) fn rewrite(body: &str, marked: &BTreeMap<String, Marked>) -> Option<String> {
    if marked.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(body.len() + 256);
    let mut rest = body;
    let mut changed = false;
    const ID: &str = "<instanceId>";
    while let Some(at) = rest.find(ID) {
        let after_open = at + ID.len();
        let Some(len) = rest[after_open..].find("</instanceId>") else {
            break;
        };
        let id = &rest[after_open..after_open + len];
        // This item ends where the next instance's id starts (or the set ends).
        let item_end = rest[after_open..]
            .find(ID)
            .map_or(rest.len(), |n| after_open + n);
        out.push_str(&rest[..after_open]);
        let mut item = rest[after_open..item_end].to_string();
        if let Some(m) = marked.get(id) {
            if m.checks.instance {
                changed |= replace_summary(&mut item, "instanceStatus", &m.since);
            }
            if m.checks.system {
                changed |= replace_summary(&mut item, "systemStatus", &m.since);
            }
        }
        out.push_str(&item);
        rest = &rest[item_end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Replaces the `<tag>…</tag>` summary in `item` with an impaired one.
fn replace_summary(item: &mut String, tag: &str, since: &str) -> bool {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let Some(start) = item.find(&open) else {
        return false;
    };
    let Some(end) = item[start..].find(&close).map(|n| start + n + close.len()) else {
        return false;
    };
    let impaired = format!(
        "<{tag}><status>impaired</status><details><item><name>reachability</name>\
         <status>failed</status><impairedSince>{since}</impairedSince></item></details></{tag}>"
    );
    item.replace_range(start..end, &impaired);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOTO: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<DescribeInstanceStatusResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15\"><instanceStatusSet><item><availabilityZone>us-east-1a</availabilityZone><instanceId>i-1</instanceId><instanceState><code>16</code><name>running</name></instanceState><instanceStatus><details><item><name>reachability</name><status>passed</status></item></details><status>ok</status></instanceStatus><systemStatus><details><item><name>reachability</name><status>passed</status></item></details><status>ok</status></systemStatus></item><item><availabilityZone>us-east-1a</availabilityZone><instanceId>i-2</instanceId><instanceState><code>16</code><name>running</name></instanceState><instanceStatus><details><item><name>reachability</name><status>passed</status></item></details><status>ok</status></instanceStatus><systemStatus><details><item><name>reachability</name><status>passed</status></item></details><status>ok</status></systemStatus></item></instanceStatusSet><requestId>request-id</requestId></DescribeInstanceStatusResponse>";

    #[test]
    fn only_the_marked_instances_checks_are_rewritten() {
        let marked: BTreeMap<String, Marked> = [(
            "i-2".to_string(),
            Marked {
                checks: Impaired::SYSTEM,
                since: "2026-12-03T10:00:00.000Z".into(),
            },
        )]
        .into();
        let out = rewrite(MOTO, &marked).expect("rewritten");
        let (first, second) = out.split_at(out.find("<instanceId>i-2").expect("i-2"));
        assert!(!first.contains("impaired"), "i-1 untouched: {first}");
        assert!(second.contains("<systemStatus><status>impaired</status>"));
        assert!(second.contains("<impairedSince>2026-12-03T10:00:00.000Z</impairedSince>"));
        assert!(second
            .contains("<instanceStatus><details><item><name>reachability</name><status>passed"));
        assert_eq!(rewrite(MOTO, &BTreeMap::new()), None);
        let absent: BTreeMap<String, Marked> = [(
            "i-9".to_string(),
            Marked {
                checks: Impaired::INSTANCE,
                since: "x".into(),
            },
        )]
        .into();
        assert_eq!(rewrite(MOTO, &absent), None);
    }
}
