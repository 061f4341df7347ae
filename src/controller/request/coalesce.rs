//! Coalesced launches, the part that runs: recorded batches of different
//! requests that can share a call ([`Key`]) queue here, and one launch call
//! at a time per key carries everyone who queued while the previous one was
//! out (waiting for EC2's call bucket or for its answer). A burst of a
//! hundred requests is then a handful of calls, bound by EC2's instance
//! bucket instead of its call bucket (2 RunInstances per second).
//!
//! A call for one batch is that batch's own launch, as without coalescing.
//! A call for several first creates their LaunchGroup (members, counts,
//! token: [`super::group`]); if that create fails nothing is sent. Each
//! member's reconcile waits for its [`Delivery`] and records it like its
//! own launch's answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::batch::MAX_BATCH;
use super::group::{self, MAX_MEMBERS};
use crate::api::{LaunchGroup, LaunchGroupMember, LaunchGroupSpec};
use crate::controller::call_queue::{self, CallQueue};
use crate::failpoint;
use crate::provider::{LaunchAnswer, LaunchSpec, MachineProvider, ProviderError};

/// What batches must share to go out in one call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The provider instance.
    pub provider: String,
    /// The requests' (and template's) namespace.
    pub namespace: String,
    /// The template.
    pub template: String,
    /// The digest of every launch parameter but the members' own tags.
    pub shared_digest: String,
}

/// One recorded batch waiting to be sent.
#[derive(Debug, Clone)]
pub struct Member {
    /// The request's name.
    pub request: String,
    /// The request's uid.
    pub uid: String,
    /// The batch id.
    pub batch: String,
    /// The batch's own spec (its token and tags), sent as it is when it goes
    /// alone.
    pub spec: LaunchSpec,
    /// The template's own tags (the group's `Name`).
    pub template_tags: BTreeMap<String, String>,
}

/// How a member's batch went out.
#[derive(Debug)]
pub enum Delivery {
    /// Alone, with its own token: the call's answer.
    Alone(Result<LaunchAnswer, ProviderError>),
    /// In LaunchGroup `name`, with the group's token: this member's share of
    /// the answer, or the call's error.
    Grouped {
        /// The LaunchGroup's name.
        name: String,
        /// The member's share, or what the call failed with.
        result: Result<LaunchAnswer, ProviderError>,
    },
    /// Not known: the group's record failed, or the sender went away. The
    /// batch stays Pending, and settling it looks for its group first.
    Unknown(String),
}

type Answer = Result<LaunchAnswer, ProviderError>;
type Waiting = call_queue::Waiting<Member, Delivery>;

/// The launch queues of every key, and the answers of groups being re-sent.
pub struct Coalescer {
    client: Client,
    queue: Arc<CallQueue<Key, Member, Delivery>>,
    resends: Mutex<HashMap<String, Arc<OnceCell<Answer>>>>,
}

/// Re-sent groups whose answers are kept for members settling together.
const KEPT_RESENDS: usize = 256;

impl Coalescer {
    /// An idle coalescer writing LaunchGroups through `client`.
    pub fn new(client: Client) -> Coalescer {
        Coalescer {
            client,
            queue: Arc::default(),
            resends: Mutex::new(HashMap::new()),
        }
    }

    /// Queues `member` under `key` and waits until its batch went out.
    pub async fn launch(
        self: &Arc<Self>,
        key: Key,
        provider: Arc<dyn MachineProvider>,
        member: Member,
    ) -> Delivery {
        let me = Arc::clone(self);
        let call_key = key.clone();
        let send = move |next: Vec<Waiting>| {
            let (me, key, provider) = (Arc::clone(&me), call_key.clone(), Arc::clone(&provider));
            async move { me.send(&key, &provider, next).await }
        };
        self.queue
            .submit(key, member, take_call, send)
            .await
            .unwrap_or_else(|| Delivery::Unknown("the launch queue stopped".into()))
    }

    /// One call: a batch alone with its own token, or a group.
    async fn send(&self, key: &Key, provider: &Arc<dyn MachineProvider>, next: Vec<Waiting>) {
        if next.len() == 1 {
            for w in next {
                let answer = provider.launch(&w.item.spec).await;
                w.answer(Delivery::Alone(answer));
            }
        } else {
            self.send_group(key, provider, next).await;
        }
    }

    /// Records and sends one group.
    async fn send_group(
        &self,
        key: &Key,
        provider: &Arc<dyn MachineProvider>,
        waiting: Vec<Waiting>,
    ) {
        let members: Vec<LaunchGroupMember> = waiting
            .iter()
            .map(|w| LaunchGroupMember {
                request: w.item.request.clone(),
                uid: w.item.uid.clone(),
                batch: w.item.batch.clone(),
                count: w.item.spec.count,
                on_demand: group::mixed_on_demand(&w.item.spec),
            })
            .collect();
        let (name, token) = group::name_and_token(&members);
        let spec = LaunchGroupSpec {
            template: key.template.clone(),
            provider: key.provider.clone(),
            token,
            count: members.iter().map(|m| m.count).sum(),
            params_digest: key.shared_digest.clone(),
            members,
        };
        let Some(first) = waiting.first() else {
            return;
        };
        let call = group::group_spec(
            &first.item.spec,
            &spec,
            &key.namespace,
            &name,
            &first.item.template_tags,
        );
        let record = LaunchGroup {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(key.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: spec.clone(),
        };
        let api: Api<LaunchGroup> = Api::namespaced(self.client.clone(), &key.namespace);
        if let Err(err) = api.create(&PostParams::default(), &record).await {
            warn!(group = %name, error = %err, "recording a launch group failed; its batches wait to be settled");
            let why = format!("recording launch group {name} failed: {err}");
            for w in waiting {
                w.answer(Delivery::Unknown(why.clone()));
            }
            return;
        }
        failpoint!("group-after-record");
        info!(group = %name, members = spec.members.len(), machines = spec.count, "launching a group");
        let answer = provider.launch(&call).await;
        failpoint!("group-after-launch");
        for w in waiting {
            let result = match &answer {
                Ok(a) => group::share_of(a, &spec.members, &w.item.uid, &w.item.batch)
                    .ok_or_else(|| group::not_a_member(&name)),
                Err(e) => Err(e.clone()),
            };
            w.answer(Delivery::Grouped {
                name: name.clone(),
                result,
            });
        }
    }

    /// Sends group `name`'s call again with its token (`spec`); members of
    /// one group settling at the same time share one call.
    pub async fn resend(
        &self,
        provider: &Arc<dyn MachineProvider>,
        name: &str,
        spec: &LaunchSpec,
    ) -> Answer {
        let cell = {
            let mut resends = self.resends.lock().unwrap_or_else(|e| e.into_inner());
            if resends.len() > KEPT_RESENDS {
                resends.clear();
            }
            Arc::clone(resends.entry(name.to_string()).or_default())
        };
        let answer = cell
            .get_or_init(|| async { provider.launch(spec).await })
            .await
            .clone();
        if answer.is_err() {
            // An error is not the group's answer: the next settle asks again.
            let mut resends = self.resends.lock().unwrap_or_else(|e| e.into_inner());
            if resends.get(name).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                resends.remove(name);
            }
        }
        answer
    }
}

/// The batches of the next call: the first waiting one, and those after it
/// while the call stays within [`MAX_MEMBERS`] and [`MAX_BATCH`] machines.
fn take_call(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut machines = 0;
    let mut n = 0;
    for w in waiting.iter() {
        let count = w.item.spec.count;
        if n > 0 && (n == MAX_MEMBERS || machines + count > MAX_BATCH) {
            break;
        }
        machines += count;
        n += 1;
    }
    waiting.drain(..n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(count: i32) -> Waiting {
        let mut spec = crate::controller::request::group::test_spec("b");
        spec.count = count;
        Waiting::detached(Member {
            request: "r".into(),
            uid: "u".into(),
            batch: "b".into(),
            spec,
            template_tags: BTreeMap::new(),
        })
    }

    #[test]
    fn a_call_takes_what_waits_within_its_limits() {
        let mut q: Vec<Waiting> = (0..3).map(|_| waiting(10)).collect();
        assert_eq!(take_call(&mut q).len(), 3);
        assert!(q.is_empty());
        let mut q: Vec<Waiting> = (0..60).map(|_| waiting(1)).collect();
        assert_eq!(take_call(&mut q).len(), MAX_MEMBERS);
        assert_eq!(q.len(), 60 - MAX_MEMBERS);
        let mut q: Vec<Waiting> = vec![waiting(300), waiting(300), waiting(100)];
        assert_eq!(
            take_call(&mut q).len(),
            1,
            "a second 300 would pass MAX_BATCH"
        );
        assert_eq!(take_call(&mut q).len(), 2);
        // One batch larger than a call still goes, alone.
        let mut q: Vec<Waiting> = vec![waiting(MAX_BATCH + 1), waiting(1)];
        assert_eq!(take_call(&mut q).len(), 1);
    }
}
