//! How big one run is: `HOSTFORGE_BENCH_SCALE` and the other knobs read
//! from the environment.

/// The sizes of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Sizes {
    pub(crate) scale: f64,
    pub(crate) burst_requests: usize,
    pub(crate) burst_machines: i32,
    pub(crate) limits_scale: f64,
    pub(crate) steady_requests: usize,
    pub(crate) steady_machines_per_request: i32,
    pub(crate) steady_hold_s: u64,
    pub(crate) churn_requests: usize,
    pub(crate) churn_phase_s: u64,
    pub(crate) crash_every_s: u64,
    pub(crate) hf_requests: usize,
    pub(crate) hf_machines: i32,
    pub(crate) hostile_requests: usize,
}

impl Sizes {
    pub(crate) fn from_env() -> Sizes {
        let scale: f64 = std::env::var("HOSTFORGE_BENCH_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|f: &f64| f.is_finite() && *f > 0.0)
            .unwrap_or(5.0);
        let n = |base: f64| ((base * scale).round() as usize).max(1);
        Sizes {
            scale,
            burst_requests: n(20.0),
            burst_machines: 10,
            // EC2's buckets scaled so that the launched-instances bucket binds:
            // with coalesced launches the call bucket no longer does. At scale
            // 5 (× 0.6) the 670 RunInstances machines meet a bucket of 600
            // refilling at 1.2/s, about 58 s; scaled with the burst, so scale
            // 1 (× 0.12: 134 machines, 120, 0.24/s) is about as long.
            limits_scale: std::env::var("HOSTFORGE_BENCH_LIMITS_SCALE")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or((0.12 * scale).min(1.0)),
            steady_requests: n(200.0),
            steady_machines_per_request: 10,
            // Long enough to include the controller's 5-minute resync of
            // every request, which a shorter hold would never see.
            steady_hold_s: std::env::var("HOSTFORGE_BENCH_HOLD_S")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(330),
            churn_requests: n(20.0).min(200),
            churn_phase_s: (90.0 * scale.sqrt()).round() as u64,
            crash_every_s: 20,
            // The HostFactory caller: 100 requestMachines × 10 at scale 5.
            hf_requests: n(20.0),
            hf_machines: 10,
            // The 1,000 hostile requests at scale 5.
            hostile_requests: n(200.0),
        }
    }
}
