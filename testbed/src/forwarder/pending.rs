//! Instances held `pending`: moto runs an instance the moment it is
//! launched, while EC2 keeps it `pending` for a while (seconds to minutes:
//! <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-lifecycle.html>).
//! While a test holds new instances, the forwarder reports every running
//! instance it was not told to leave alone as `pending` (code 0) in
//! DescribeInstances answers, so "the replacement is not running yet" is a
//! window the test opens and closes, not a race against moto.

use std::collections::BTreeSet;

const RUNNING: &str = "<instanceState><code>16</code><name>running</name></instanceState>";
const PENDING: &str = "<instanceState><code>0</code><name>pending</name></instanceState>";

/// `body` (a DescribeInstances answer) with every running instance not in
/// `known` shown pending; `None` when nothing changed.
pub(super) fn rewrite(body: &str, known: &BTreeSet<String>) -> Option<String> {
    const ID: &str = "<instanceId>";
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    let mut changed = false;
    while let Some(at) = rest.find(ID) {
        let after_open = at + ID.len();
        let Some(len) = rest[after_open..].find("</instanceId>") else {
            break;
        };
        let id = rest[after_open..after_open + len].to_string();
        let item_end = rest[after_open..]
            .find(ID)
            .map_or(rest.len(), |n| after_open + n);
        out.push_str(&rest[..after_open]);
        let item = &rest[after_open..item_end];
        if !known.contains(&id) && item.contains(RUNNING) {
            out.push_str(&item.replacen(RUNNING, PENDING, 1));
            changed = true;
        } else {
            out.push_str(item);
        }
        rest = &rest[item_end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_running_instances_read_pending() {
        let body = format!(
            "<r><item><instanceId>i-1</instanceId>{RUNNING}</item><item><instanceId>i-2</instanceId>{RUNNING}</item></r>"
        );
        let known: BTreeSet<String> = ["i-1".to_string()].into();
        let out = rewrite(&body, &known).expect("changed");
        assert_eq!(
            out,
            format!("<r><item><instanceId>i-1</instanceId>{RUNNING}</item><item><instanceId>i-2</instanceId>{PENDING}</item></r>")
        );
        let all: BTreeSet<String> = ["i-1".to_string(), "i-2".to_string()].into();
        assert_eq!(rewrite(&body, &all), None);
    }
}
