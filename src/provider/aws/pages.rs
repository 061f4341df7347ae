//! EC2's listing calls answer in pages; every listing in the adapter walks
//! them the same way, here.

use std::future::Future;

use crate::provider::ProviderError;

/// Every item of a paged listing. `page` sends one request with the given
/// token and returns that page's items and the token EC2 answered with; the
/// listing ends at a missing or empty token.
pub(super) async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, ProviderError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), ProviderError>>,
{
    let mut items = Vec::new();
    let mut token = None;
    loop {
        let (batch, next) = page(token.take()).await?;
        items.extend(batch);
        match next.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(items),
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
}
