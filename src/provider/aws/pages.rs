//! EC2's listing calls answer in pages; every listing in the adapter walks
//! them the same way, here.

use std::future::Future;

use crate::provider::ProviderError;

/// Every item of a paged listing. `page` sends one request with the given
/// token and returns that page's items and the token EC2 answered with; the
/// listing ends at a missing or empty token.
pub(super) async fn all_pages<T, F, Fut>(page: F) -> Result<Vec<T>, ProviderError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), ProviderError>>,
{
    let mut items = Vec::new();
    for_each_page(page, |batch| items.extend(batch)).await?;
    Ok(items)
}

/// Walks a paged listing as [`all_pages`] does, handing each page's items to
/// `each` before the next page is asked for, so only one page is held.
pub(super) async fn for_each_page<T, F, Fut>(
    mut page: F,
    mut each: impl FnMut(Vec<T>),
) -> Result<(), ProviderError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), ProviderError>>,
{
    let mut token = None;
    loop {
        let (batch, next) = page(token.take()).await?;
        each(batch);
        match next.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn walks_until_the_token_is_missing_or_empty() {
        let mut sent = Vec::new();
        let items = all_pages(|token: Option<String>| {
            sent.push(token.clone());
            let answer = match token.as_deref() {
                None => (vec![1, 2], Some("a".to_string())),
                Some("a") => (vec![3], Some(String::new())),
                Some(_) => (vec![99], None),
            };
            async move { Ok(answer) }
        })
        .await
        .expect("pages");
        assert_eq!(items, [1, 2, 3]);
        assert_eq!(sent, [None, Some("a".to_string())]);
    }

    #[tokio::test]
    async fn each_page_is_handed_over_before_the_next_is_asked_for() {
        let log = std::sync::Mutex::new(Vec::new());
        let result = for_each_page(
            |token: Option<String>| {
                log.lock().unwrap().push(format!("ask {token:?}"));
                let answer = match token.as_deref() {
                    None => Ok((vec![1, 2], Some("a".to_string()))),
                    Some("a") => Ok((vec![3], Some("b".to_string()))),
                    Some(_) => Err(ProviderError::Transient(
                        crate::provider::aws::errors::detail(
                            "DescribeInstances",
                            "InternalError",
                            "page b failed".into(),
                        ),
                    )),
                };
                async move { answer }
            },
            |page: Vec<i32>| log.lock().unwrap().push(format!("got {page:?}")),
        )
        .await;
        assert!(matches!(result, Err(ProviderError::Transient(_))));
        assert_eq!(
            log.into_inner().unwrap(),
            [
                "ask None",
                "got [1, 2]",
                "ask Some(\"a\")",
                "got [3]",
                "ask Some(\"b\")"
            ]
        );
    }
}
