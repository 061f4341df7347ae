//! The scenarios `make bench` runs, one file each (picked with
//! `HOSTFORGE_BENCH_SCENARIOS`).

mod audit;
pub(crate) mod burst;
pub(crate) mod churn;
pub(crate) mod hostfactory;
pub(crate) mod hostile;
pub(crate) mod interruptions;
pub(crate) mod limits;
pub(crate) mod steady;
