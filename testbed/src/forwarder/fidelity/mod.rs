//! The EC2 fidelity model: behaviour of real EC2 that moto lacks, put
//! between the client and moto by the [`Forwarder`](crate::forwarder::Forwarder).
//!
//! moto ignores ClientToken, is instantly consistent, launches exactly
//! MaxCount, never fails an instance at launch and never answers a fleet
//! with an `errorSet`; real EC2 does all of these, and a launcher that is
//! only tested against moto never sees them. Nothing here is on until a
//! test asks for it: without it the forwarder relays as before.
//!
//! API (all on `Forwarder`, all `&self`):
//! * [`enable_fidelity`](crate::forwarder::Forwarder::enable_fidelity)`(Fidelity::default())`
//!   — the ClientToken registry for RunInstances and CreateFleet
//!   ([`tokens`]); RunInstances without a subnet or placement lands in a
//!   zone drawn per call from [`Fidelity::seed`]; visibility windows from
//!   [`Fidelity::visibility`]. [`Fidelity::random`]`(seed)` also mixes
//!   faults at random, for a bench.
//! * [`add_fault`](crate::forwarder::Forwarder::add_fault)`(`[`FaultRule`]`)`
//!   — forward then misbehave (`forward_then_error`, `forward_then_drop`,
//!   `forward_then_hold`), `partial_run_instances(k)`,
//!   `partial_fleet(k, FleetError)`, `zero_fleet(FleetError)`; `.param()`,
//!   `.times(n)` as for `Rule`. Works with or without the registry, on EC2
//!   query-protocol calls only.
//! * [`set_visibility`](crate::forwarder::Forwarder::set_visibility),
//!   [`hide_from_tag_listings`](crate::forwarder::Forwarder::hide_from_tag_listings)
//!   — eventual consistency ([`consistency`]).
//! * [`kill_at_launch`](crate::forwarder::Forwarder::kill_at_launch)`(`[`KillAtLaunch`]`)`
//!   — deaths at launch with a `stateReason`.
//! * [`set_launch_template_quota`](crate::forwarder::Forwarder::set_launch_template_quota),
//!   [`set_launch_template_lag`](crate::forwarder::Forwarder::set_launch_template_lag).
//! * [`fidelity_counters`](crate::forwarder::Forwarder::fidelity_counters)
//!   ([`FidelityCounters`]); also in `snapshot()` as `fidelity/…`.
//!
//! Counters: `calls`/`forwarded` keep their meaning (`forwarded` counts
//! only calls that reached moto, so a replay is not forwarded); the
//! model's own calls to moto (DescribeInstances to refresh a replay,
//! DescribeSubnets, DescribeAvailabilityZones, DescribeLaunchTemplates,
//! the TerminateInstances of a death) are counted nowhere.
//!
//! Every setter turns the model on. Order per call: rate limits and
//! answer-instead rules first (as before), then the model: registry,
//! template lag, partial / zero-instance faults, moto, answer rewriting,
//! and last a forward-then-misbehave fault on whatever the answer was (so a
//! retry that the registry replays is lost again while the rule has uses).
//!
//! Not modelled: a replay while the first call is still in EC2 (here it
//! waits for the first answer); tokens expiring; pagination shifting under
//! a listing; the CreateFleet token's behaviour across zones (not
//! documented); stopped instances.

mod config;
mod consistency;
mod deaths;
mod faults;
mod launch;
mod model;
mod templates;
mod tokens;
mod upstream;
pub(super) mod xml;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};

pub use config::{Fidelity, KillAtLaunch, Pick, RandomProfile, Visibility};
pub use faults::{FaultKind, FaultRule, FleetError, Gate, Then};
pub use model::FidelityCounters;
pub(in crate::forwarder) use model::Model;
pub(in crate::forwarder) use xml::escape;

use super::rules::InjectedError;
use super::wire::{error_response, plain, xml_response};
use super::Shared;
use upstream::Answer;

/// The model's answer to one call, before a misbehave fault.
enum Reply {
    /// moto's answer (possibly with a rewritten body).
    Upstream(Answer),
    /// A 200 document the model wrote.
    Xml(String),
    /// An EC2 error.
    Error(InjectedError),
}

/// The connection is to be closed without an answer (forward-then-drop).
#[derive(Debug)]
pub(in crate::forwarder) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("forwarder: answer dropped by a fault rule")
    }
}

impl std::error::Error for Dropped {}

/// Serves one call the model took (see the module docs for the order).
pub(in crate::forwarder) async fn serve(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    action: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (drawn, on) = {
        let mut state = shared.lock();
        (state.model.draw(action, params), state.model.on)
    };
    if let Some(FaultKind::Gate(gate)) = &drawn.before {
        gate.passed().await;
    }
    let reply = match action {
        "RunInstances" => launch::run_instances(shared, headers, params, drawn.before).await,
        "CreateFleet" => launch::create_fleet(shared, headers, params, drawn.before).await,
        "DescribeInstances" if on => consistency::describe(shared, headers, params).await,
        "TerminateInstances" if on => consistency::terminate(shared, headers, params).await,
        "CreateLaunchTemplate" if on => templates::create(shared, headers, params).await,
        "DeleteLaunchTemplate" if on => templates::delete(shared, headers, params).await,
        _ => {
            shared.lock().count_forward(action);
            upstream::call(shared, headers, params)
                .await
                .map(Reply::Upstream)
        }
    };
    let response = match reply {
        Ok(Reply::Upstream(answer)) => {
            let mut response = Response::new(Full::new(answer.body));
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            response
        }
        Ok(Reply::Xml(body)) => xml_response(body),
        Ok(Reply::Error(error)) => error_response(&error, false),
        Err(message) => {
            *shared
                .lock()
                .upstream_errors
                .entry(action.to_string())
                .or_default() += 1;
            plain(
                StatusCode::BAD_GATEWAY,
                format!("forwarder: upstream {}: {message}", shared.upstream),
            )
        }
    };
    let Some(then) = drawn.after else {
        return Ok(response);
    };
    *shared
        .lock()
        .model
        .counters
        .misbehaved
        .entry(action.to_string())
        .or_default() += 1;
    match then {
        Then::Error(error) => Ok(error_response(&error, false)),
        Then::Drop => Err(Dropped),
        Then::Hold(hold) => {
            tokio::time::sleep(hold).await;
            Ok(response)
        }
    }
}
