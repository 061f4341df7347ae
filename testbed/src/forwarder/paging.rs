//! Pages of DescribeInstanceStatus, which moto does not make: it ignores
//! `MaxResults` and `NextToken` and answers every running instance at once
//! (10,000 statuses, about 10 MB, in one answer), where EC2 answers at most
//! `MaxResults` (5 to 1,000) and a `NextToken` to ask for the rest with
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceStatus.html>,
//! `MaxResults`, `NextToken`;
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/Query-Requests.html#api-pagination>).
//! A client that asks for pages must then hold one page at a time, as it
//! would against EC2, and the bed must not charge it for a whole listing.
//!
//! The forwarder cuts moto's complete answer: it orders the statuses by
//! instance id and hands out the last id of a page as the token (EC2's
//! tokens are opaque, so no client reads it); the next page starts after that
//! id in a fresh complete answer. Like EC2's, a listing is not a snapshot,
//! but an instance running throughout it is listed exactly once, whatever
//! others launch or end between two pages.

use std::collections::BTreeMap;

use super::fidelity::xml::{Document, Element};

/// The prefix of the tokens the forwarder hands out.
const TOKEN_PREFIX: &str = "hostforge-forwarder-page-";

/// The most statuses EC2 answers in one page.
const MAX_PAGE: usize = 1000;

/// The page `params` ask for, cut from `body` (moto's complete answer);
/// `None` when no `MaxResults` was sent (the answer is left whole) or the
/// answer is not one the forwarder can read.
pub(super) fn page(params: &BTreeMap<String, String>, body: &str) -> Option<String> {
    let size = params
        .get("MaxResults")?
        .parse::<usize>()
        .ok()?
        .clamp(1, MAX_PAGE);
    let after = params
        .get("NextToken")
        .and_then(|t| t.strip_prefix(TOKEN_PREFIX));
    let mut doc = Document::parse(body)?;
    let set = doc.root.child_mut("instanceStatusSet")?;
    let id = |e: &Element| e.text_at(&["instanceId"]).unwrap_or_default();
    set.retain_elements(|e| after.is_none_or(|a| id(e).as_str() > a));
    set.sort_elements_by_key(id);
    let mut kept = 0usize;
    let mut last = String::new();
    let mut more = false;
    set.retain_elements(|e| {
        kept += 1;
        if kept <= size {
            last = id(e);
        }
        more |= kept > size;
        kept <= size
    });
    doc.root.retain_elements(|e| e.name != "nextToken");
    if more {
        doc.root.set_child(Element::with_text(
            "nextToken",
            &format!("{TOKEN_PREFIX}{last}"),
        ));
    }
    Some(doc.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::params;

    fn answer(ids: &[&str]) -> String {
        let items: String = ids
            .iter()
            .map(|id| {
                format!(
                    "<item><instanceId>{id}</instanceId><instanceStatus><details><item>\
                     <name>reachability</name><status>passed</status></item></details>\
                     <status>ok</status></instanceStatus></item>"
                )
            })
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstanceStatusResponse \
             xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId>\
             <instanceStatusSet>{items}</instanceStatusSet></DescribeInstanceStatusResponse>"
        )
    }

    fn ids_and_token(body: &str) -> (Vec<String>, Option<String>) {
        let doc = Document::parse(body).expect("xml");
        let ids = doc
            .root
            .child("instanceStatusSet")
            .expect("set")
            .elements()
            .filter_map(|item| item.text_at(&["instanceId"]))
            .collect();
        (ids, doc.root.text_at(&["nextToken"]))
    }

    #[test]
    fn pages_walk_every_status_once_and_end_without_a_token() {
        let body = answer(&["i-1", "i-2", "i-3", "i-4", "i-5"]);
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut asked = vec![("MaxResults", "2")];
            if let Some(t) = &token {
                asked.push(("NextToken", t));
            }
            let (ids, next) = ids_and_token(&page(&params(&asked), &body).expect("a page"));
            assert!(ids.len() <= 2, "{ids:?}");
            seen.extend(ids);
            pages += 1;
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, ["i-1", "i-2", "i-3", "i-4", "i-5"]);
        assert_eq!(pages, 3);
    }

    #[test]
    fn a_page_keeps_each_status_whole_and_a_last_full_page_has_no_token() {
        let body = answer(&["i-1", "i-2"]);
        let out = page(&params(&[("MaxResults", "1000")]), &body).expect("a page");
        assert_eq!(
            ids_and_token(&out),
            (vec!["i-1".into(), "i-2".into()], None)
        );
        assert!(out.contains("<details><item><name>reachability</name>"));
        let first = page(&params(&[("MaxResults", "1")]), &body).expect("a page");
        assert!(first.contains("<requestId>r</requestId>"));
        assert_eq!(ids_and_token(&first).0, ["i-1"]);
    }

    #[test]
    fn an_instance_that_ends_between_pages_shifts_nothing() {
        let first = page(
            &params(&[("MaxResults", "2")]),
            &answer(&["i-3", "i-1", "i-2", "i-4"]),
        )
        .expect("a page");
        let (ids, token) = ids_and_token(&first);
        assert_eq!(ids, ["i-1", "i-2"], "ordered by id");
        let token = token.expect("more to come");
        // i-1 ended and i-0 launched before the next page was asked for.
        let next = page(
            &params(&[("MaxResults", "2"), ("NextToken", &token)]),
            &answer(&["i-0", "i-2", "i-3", "i-4"]),
        )
        .expect("a page");
        assert_eq!(
            ids_and_token(&next),
            (vec!["i-3".into(), "i-4".into()], None)
        );
    }

    #[test]
    fn without_max_results_the_answer_is_left_whole() {
        assert_eq!(page(&params(&[]), &answer(&["i-1"])), None);
    }
}
