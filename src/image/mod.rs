//! Image resolution for templates: the provider's `lookup_image` behind a TTL
//! cache keyed by (provider instance, source), so N templates naming the same
//! source cost one cloud call per TTL, and concurrent look-ups of one key are
//! coalesced into one call. The cloud look-ups themselves live in the provider
//! adapters (e.g. `provider::aws::images`).

pub mod cache;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::debug;

use crate::provider::{ImageSource, MachineProvider, ProviderError, ResolvedImage};
use cache::{Lookup, TtlCache};

/// Extra attempts after a throttled look-up, on top of the SDK's own retries:
/// a burst of template reconciles right after start is the usual cause.
const THROTTLE_RETRIES: u32 = 3;
/// First backoff after throttling; doubled each time, with jitter.
const THROTTLE_BACKOFF: Duration = Duration::from_millis(500);

/// Told whether each resolve was answered without a new provider call, for
/// the image cache hit/miss metric.
pub trait CacheObserver: Send + Sync {
    /// `hit` is true when no provider look-up was started for this resolve
    /// (a fresh cached value, or a look-up already in flight was joined).
    fn image_cache(&self, hit: bool);
}

/// A cache observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopCacheObserver;

impl CacheObserver for NoopCacheObserver {
    fn image_cache(&self, _hit: bool) {}
}

type Key = (String, ImageSource);

/// Resolves image sources through providers, with a shared TTL cache.
pub struct ImageResolver {
    cache: Arc<TtlCache<Key, (ResolvedImage, SystemTime), ProviderError>>,
    observer: Arc<dyn CacheObserver>,
}

impl ImageResolver {
    /// A resolver whose answers stay valid for `ttl`.
    pub fn new(ttl: Duration, observer: Arc<dyn CacheObserver>) -> ImageResolver {
        ImageResolver {
            cache: TtlCache::new(ttl),
            observer,
        }
    }

    /// The image `source` resolves to in `provider`, and when that answer was
    /// obtained from the provider (so status shows the age of a cached answer).
    /// Errors are not cached; throttled look-ups are retried a few times with
    /// jittered backoff before the error is returned.
    pub async fn resolve(
        &self,
        provider: &Arc<dyn MachineProvider>,
        source: &ImageSource,
    ) -> Result<(ResolvedImage, SystemTime), ProviderError> {
        let key = (provider.name().to_string(), source.clone());
        let provider = provider.clone();
        let owned_source = source.clone();
        let (result, how) = self
            .cache
            .get_or_fetch(&key, move || async move {
                let image = lookup_with_retry(provider.as_ref(), &owned_source).await?;
                Ok((image, SystemTime::now()))
            })
            .await;
        self.observer.image_cache(how != Lookup::Miss);
        debug!(provider = %key.0, source = %source, lookup = ?how, ok = result.is_ok(), "image resolve");
        result
    }

    /// How long the cached answer for (`provider_name`, `source`) stays fresh,
    /// so a controller can come back when it expires; `None` if nothing is cached.
    pub fn expires_in(&self, provider_name: &str, source: &ImageSource) -> Option<Duration> {
        self.cache
            .expires_in(&(provider_name.to_string(), source.clone()))
    }
}

async fn lookup_with_retry(
    provider: &dyn MachineProvider,
    source: &ImageSource,
) -> Result<ResolvedImage, ProviderError> {
    let mut attempt = 0;
    loop {
        match provider.lookup_image(source).await {
            Err(err @ ProviderError::Throttled(_)) if attempt < THROTTLE_RETRIES => {
                let delay = backoff(attempt);
                debug!(provider = provider.name(), %source, attempt, ?delay, error = %err, "image look-up throttled; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Exponential backoff with "equal jitter": between half and all of
/// `THROTTLE_BACKOFF * 2^attempt`, so retries of many callers spread out.
fn backoff(attempt: u32) -> Duration {
    let full = THROTTLE_BACKOFF.saturating_mul(1 << attempt.min(10));
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::provider::fake::FakeProvider;
    use crate::provider::ErrorDetail;

    const TTL: Duration = Duration::from_secs(300);

    /// A provider named `name` whose image look-ups take 50 ms (virtual), so
    /// concurrent resolves overlap.
    fn slow_fake(name: &str) -> Arc<FakeProvider> {
        let f = FakeProvider::new(name);
        f.set_delay(Duration::from_millis(50));
        f
    }

    #[derive(Default)]
    struct Counts {
        hits: AtomicUsize,
        misses: AtomicUsize,
    }

    impl CacheObserver for Counts {
        fn image_cache(&self, hit: bool) {
            if hit {
                self.hits.fetch_add(1, Ordering::SeqCst);
            } else {
                self.misses.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn param(p: &str) -> ImageSource {
        ImageSource::SsmParameter(p.into())
    }

    fn err(kind: fn(ErrorDetail) -> ProviderError, code: &str) -> ProviderError {
        kind(ErrorDetail {
            operation: "GetParameter",
            code: code.into(),
            message: "scripted".into(),
        })
    }

    fn setup() -> (
        Arc<FakeProvider>,
        Arc<dyn MachineProvider>,
        Arc<Counts>,
        ImageResolver,
    ) {
        let fake = slow_fake("aws-a");
        let provider: Arc<dyn MachineProvider> = fake.clone();
        let counts = Arc::new(Counts::default());
        let resolver = ImageResolver::new(TTL, counts.clone());
        (fake, provider, counts, resolver)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_resolves_of_one_key_make_one_call() {
        let (fake, provider, counts, resolver) = setup();
        let source = param("/al2023");
        let results =
            futures::future::join_all((0..50).map(|_| resolver.resolve(&provider, &source))).await;
        assert_eq!(fake.calls("lookup_image"), 1);
        for r in &results {
            assert_eq!(r.as_ref().expect("resolves").0.id, "ami-0");
        }
        assert_eq!(counts.misses.load(Ordering::SeqCst), 1);
        assert_eq!(counts.hits.load(Ordering::SeqCst), 49);

        // Still fresh: answered from the cache with the original timestamp.
        let (again, at) = resolver.resolve(&provider, &source).await.expect("hit");
        assert_eq!(
            (again.id.as_str(), fake.calls("lookup_image")),
            ("ami-0", 1)
        );
        assert_eq!(at, results[0].as_ref().expect("ok").1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_looked_up_again_once() {
        let (fake, provider, _counts, resolver) = setup();
        let source = param("/al2023");
        resolver.resolve(&provider, &source).await.expect("first");
        let left = resolver.expires_in("aws-a", &source).expect("cached");
        assert!(
            left <= TTL && left > TTL - Duration::from_secs(1),
            "{left:?}"
        );

        tokio::time::advance(TTL - Duration::from_secs(10)).await;
        resolver
            .resolve(&provider, &source)
            .await
            .expect("still cached");
        assert_eq!(fake.calls("lookup_image"), 1);
        let left = resolver.expires_in("aws-a", &source).expect("cached");
        assert!(left <= Duration::from_secs(10), "{left:?}");

        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(resolver.expires_in("aws-a", &source), None);
        let results =
            futures::future::join_all((0..10).map(|_| resolver.resolve(&provider, &source))).await;
        assert_eq!(fake.calls("lookup_image"), 2);
        assert!(results
            .iter()
            .all(|r| r.as_ref().expect("ok").0.id == "ami-1"));
    }

    #[tokio::test(start_paused = true)]
    async fn different_keys_are_looked_up_separately() {
        let (fake, provider, counts, resolver) = setup();
        let other_fake = slow_fake("aws-b");
        let other: Arc<dyn MachineProvider> = other_fake.clone();
        let a = param("/a");
        let b = ImageSource::Id("ami-12345678".into());
        let (r1, r2, r3) = tokio::join!(
            resolver.resolve(&provider, &a),
            resolver.resolve(&provider, &b),
            resolver.resolve(&other, &a),
        );
        assert!(r1.is_ok() && r2.is_ok() && r3.is_ok());
        assert_eq!(fake.calls("lookup_image"), 2);
        assert_eq!(other_fake.calls("lookup_image"), 1);
        assert_eq!(counts.misses.load(Ordering::SeqCst), 3);
        assert_eq!(resolver.expires_in("aws-b", &b), None);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_shared_by_waiters_but_not_cached() {
        let (fake, provider, _counts, resolver) = setup();
        let source = param("/missing");
        fake.script_image(Err(err(ProviderError::NotFound, "ParameterNotFound")));
        let results =
            futures::future::join_all((0..5).map(|_| resolver.resolve(&provider, &source))).await;
        assert_eq!(
            fake.calls("lookup_image"),
            1,
            "waiters join the failing look-up"
        );
        assert!(results
            .iter()
            .all(|r| r.as_ref().err().map(ProviderError::category) == Some("NotFound")));
        assert_eq!(resolver.expires_in("aws-a", &source), None);

        // The next resolve asks again (and now the parameter exists).
        let (image, _) = resolver.resolve(&provider, &source).await.expect("fixed");
        assert_eq!(image.id, "ami-1");
        assert_eq!(fake.calls("lookup_image"), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_look_ups_are_retried_then_given_up() {
        let (fake, provider, counts, resolver) = setup();
        fake.script_image(Err(err(ProviderError::Throttled, "ThrottlingException")));
        fake.script_image(Err(err(ProviderError::Throttled, "ThrottlingException")));
        let (image, _) = resolver
            .resolve(&provider, &param("/busy"))
            .await
            .expect("succeeds after retries");
        assert_eq!(image.id, "ami-2");
        assert_eq!(fake.calls("lookup_image"), 3);
        assert_eq!(counts.misses.load(Ordering::SeqCst), 1);

        for _ in 0..=THROTTLE_RETRIES {
            fake.script_image(Err(err(ProviderError::Throttled, "ThrottlingException")));
        }
        let e = resolver
            .resolve(&provider, &param("/busier"))
            .await
            .expect_err("gives up");
        assert_eq!(e.category(), "Throttled");
        assert_eq!(
            fake.calls("lookup_image"),
            3 + 1 + THROTTLE_RETRIES as usize
        );

        // Other errors are not retried.
        fake.script_image(Err(err(
            ProviderError::AccessDenied,
            "AccessDeniedException",
        )));
        let before = fake.calls("lookup_image");
        let e = resolver
            .resolve(&provider, &param("/denied"))
            .await
            .expect_err("denied");
        assert_eq!(
            (e.category(), fake.calls("lookup_image")),
            ("AccessDenied", before + 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_caller_does_not_lose_the_look_up() {
        let (fake, provider, _counts, resolver) = setup();
        let source = param("/al2023");
        // Start a resolve and drop it half-way through the provider call.
        let dropped = tokio::time::timeout(
            Duration::from_millis(10),
            resolver.resolve(&provider, &source),
        )
        .await;
        assert!(dropped.is_err(), "timed out mid-call");
        // The next caller joins the same look-up instead of starting another.
        resolver
            .resolve(&provider, &source)
            .await
            .expect("resolves");
        assert_eq!(fake.calls("lookup_image"), 1);
    }

    #[test]
    fn backoff_grows_and_stays_jittered_within_bounds() {
        for attempt in 0..4 {
            let full = THROTTLE_BACKOFF * (1 << attempt);
            for _ in 0..50 {
                let d = backoff(attempt);
                assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
            }
        }
    }
}
