//! The controllers. Each reconcile is a pipeline of named steps: the request
//! controller's is load → observe → gate → settle → plan (pure) → record
//! intent → act → status ([`request`]); the template controller's is
//! evaluate (validate in the provider, resolve the image) → status
//! ([`template`]). Background loops that watch the cloud between reconciles
//! live in [`cloud`]. Controllers translate between the CRD types and the
//! provider's plain types, so adapters never see Kubernetes.

pub mod backoff;
pub mod call_queue;
pub mod cloud;
pub mod context;
pub mod error;
pub mod events;
pub mod identity;
pub mod reason;
pub mod request;
pub mod template;
pub mod watch;

pub use context::{Context, Watches};
pub use error::Error;
