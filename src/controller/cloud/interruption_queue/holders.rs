//! Which request lists a machine, read from the request watch's store: the
//! queue's messages name instances, and only machines some request of this
//! operator lists are ours to act on.

use std::collections::{BTreeSet, HashMap};

use kube::runtime::reflector::ObjectRef;

use crate::api::{Machine, MachineRequest};
use crate::controller::Context;

/// The request listing a machine, and the machine as its status has it.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The request.
    pub request: ObjectRef<MachineRequest>,
    /// The machine's status entry.
    pub machine: Machine,
}

/// The holders of those of `ids` that some request lists (one pass over
/// the store for a whole batch of messages).
pub fn find(ctx: &Context, ids: &BTreeSet<String>) -> HashMap<String, Holder> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return out;
    }
    for mr in ctx.requests.state() {
        let Some(status) = &mr.status else {
            continue;
        };
        for m in &status.machines {
            if ids.contains(&m.id) {
                out.insert(
                    m.id.clone(),
                    Holder {
                        request: ObjectRef::from_obj(mr.as_ref()),
                        machine: m.clone(),
                    },
                );
            }
        }
    }
    out
}

/// Machine `id` as the status of `request` has it now: `None` when the
/// request or the machine is gone from the store.
pub fn current(ctx: &Context, request: &ObjectRef<MachineRequest>, id: &str) -> Option<Machine> {
    let mr = ctx.requests.get(request)?;
    mr.status
        .as_ref()?
        .machines
        .iter()
        .find(|m| m.id == id)
        .cloned()
}
