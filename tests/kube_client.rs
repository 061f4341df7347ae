//! The operator's apiserver client (`src/kube_client.rs`) against the real
//! kube-apiserver: a burst of requests through it opens no more connections
//! than its cap, while kube's default client opens one per request in flight,
//! and a long-running watch does not take a slot from the requests behind it.
//! Alone in its test binary, so no other test's connections are counted.

use std::collections::HashSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use hostforge_testbed::TestEnv;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};

/// Established TCP connections of this process to `port` (its sockets in
/// /proc/self/fd matched against /proc/net/tcp{,6}).
fn connections_to(port: u16) -> usize {
    let own: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .expect("listing /proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let remote_port = format!(":{port:04X}");
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        // local, remote, state ("01" = ESTABLISHED), ..., inode (column 9)
        .filter(|f| f.len() > 9 && f[3] == "01" && f[2].ends_with(&remote_port))
        .filter(|f| own.contains(&f[9]))
        .count()
}

/// Sends `n` reads at once through `client`; returns how many new connections
/// to the apiserver that left in the pool (hyper keeps them idle for 90 s, so
/// the count is what the burst opened).
async fn burst(client: &Client, namespace: &str, port: u16, n: usize) -> usize {
    let before = connections_to(port);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default();
    let reads = futures::future::join_all((0..n).map(|_| api.list(&params))).await;
    for read in reads {
        read.expect("every read of the burst is answered");
    }
    connections_to(port).saturating_sub(before)
}

#[tokio::test]
async fn a_burst_opens_no_more_connections_than_the_cap_and_watches_keep_no_slot() {
    let env = TestEnv::new("kube-client").await;
    let config = hostforge_testbed::kube_config(env.bed).await;
    let port = config
        .cluster_url
        .port_u16()
        .expect("the bed's URL has a port");

    let uncapped = Client::try_from(config.clone()).expect("kube's default client");
    let opened_uncapped = burst(&uncapped, &env.namespace, port, 40).await;

    let capped = hostforge::kube_client::client(config.clone(), 4).expect("capped client");
    let opened_capped = burst(&capped, &env.namespace, port, 40).await;
    eprintln!("40 reads at once: kube's default client opened {opened_uncapped} connections, a cap of 4 opened {opened_capped}");
    assert!(
        opened_capped <= 4,
        "40 reads at once through a cap of 4 opened {opened_capped} connections"
    );
    assert!(
        opened_uncapped > 4,
        "kube's default client opened only {opened_uncapped} connections for 40 reads at \
         once, so this test would not notice a cap that does nothing"
    );

    // A cap of one: a watch that stays open must not block the writes behind it.
    let one = hostforge::kube_client::client(config, 1).expect("client with a cap of 1");
    let api: Api<ConfigMap> = Api::namespaced(one.clone(), &env.namespace);
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let first = tokio::time::timeout(Duration::from_secs(20), events.try_next())
        .await
        .expect("the watch starts within 20 s");
    assert!(matches!(first, Ok(Some(watcher::Event::Init))));
    for i in 0..5 {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("written-past-a-watch-{i}")),
                ..Default::default()
            },
            ..Default::default()
        };
        tokio::time::timeout(
            Duration::from_secs(20),
            api.create(&PostParams::default(), &cm),
        )
        .await
        .expect("a write behind an open watch is answered within 20 s")
        .expect("the write succeeds");
    }
    // And the watch, sharing that one slot, still delivers them.
    let mut seen = HashSet::new();
    while seen.len() < 5 {
        let event = tokio::time::timeout(Duration::from_secs(20), events.try_next())
            .await
            .expect("the watch delivers within 20 s")
            .expect("the watch stays healthy");
        if let Some(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) = event {
            if let Some(name) = cm.metadata.name {
                seen.insert(name);
            }
        }
    }
}
