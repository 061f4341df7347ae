//! The controllers' view of the cloud between reconciles: the background loops
//! (the poller, the sweep, interruption notices, status checks, the
//! launch-template collector) and the shared state they and the request controller use (batch lookups, capacity, ownership tags, the
//! translation of provider machines into status machines).

pub mod batch_lookups;
pub mod capacity;
pub mod interruption_queue;
pub mod interruptions;
pub mod launch_groups;
pub mod ownership;
pub mod poller;
pub mod status_checks;
pub mod sweep;
pub mod template_collector;
pub mod terminations;
pub mod ticker;
pub mod translate;
