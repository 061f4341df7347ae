//! What the fidelity model is told to do: the registry's seed, visibility
//! windows, deaths at launch and the random profile.

use std::time::Duration;

/// Turns the EC2 fidelity model on ([`crate::forwarder::Forwarder::enable_fidelity`]).
///
/// With it on, RunInstances and CreateFleet go through the ClientToken
/// registry, DescribeInstances and TerminateInstances through the
/// visibility model, and launch-template calls through the quota and lag
/// model; everything is deterministic for a given `seed` and call sequence.
#[derive(Clone, Debug, Default)]
pub struct Fidelity {
    /// Seeds every random draw of the model (zones, the random profile).
    pub seed: u64,
    /// Eventual-consistency windows (all zero: instantly consistent).
    pub visibility: Visibility,
    /// Mixes faults at random per call (see [`Fidelity::random`]).
    pub random: Option<RandomProfile>,
    /// How long a new launch template is unknown to DeleteLaunchTemplate
    /// and CreateFleet (as `Forwarder::set_launch_template_lag`).
    pub launch_template_lag: Duration,
}

impl Fidelity {
    /// The registry on, nothing else, zones drawn from `seed`.
    pub fn seeded(seed: u64) -> Fidelity {
        Fidelity {
            seed,
            ..Fidelity::default()
        }
    }

    /// A profile for a crash bench: small visibility windows, a 2 s
    /// launch-template lag, and at a small rate per launch call
    /// forward-then-500, forward-then-drop, partial launches and deaths at
    /// launch; the same seed and call sequence give the same faults.
    pub fn random(seed: u64) -> Fidelity {
        Fidelity {
            seed,
            visibility: Visibility {
                by_id: Duration::from_secs(2),
                by_tag: Duration::from_secs(5),
                stale_after_terminate: Duration::from_secs(3),
            },
            random: Some(RandomProfile::default()),
            launch_template_lag: Duration::from_secs(2),
        }
    }
}

impl Fidelity {
    /// [`Fidelity::random`] with its lost answers (500 after the launch,
    /// a dropped connection) and partial launches at several times the
    /// bench's rates, so that a test of a dozen launch calls meets them, and
    /// no deaths at launch (a death cools its offering down, which would
    /// leave a request Degraded for a reason the test is not about).
    pub fn lossy(seed: u64) -> Fidelity {
        Fidelity {
            random: Some(RandomProfile {
                forward_then_500: 0.2,
                forward_then_drop: 0.15,
                partial: 0.25,
                death: 0.0,
            }),
            ..Fidelity::random(seed)
        }
    }
}

/// EC2's read-after-write lag, per instance, from the forwarder's first
/// sight of it in a launch answer (or of its terminate).
///
/// Models <https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>:
/// "DescribeInstances … might return InvalidInstanceID.NotFound" just after
/// RunInstances, and a terminated instance's state may lag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Visibility {
    /// Hidden from DescribeInstances naming it (`InstanceId.N` or an
    /// `instance-id` filter) for this long after launch; TerminateInstances
    /// naming it answers `InvalidInstanceID.NotFound` meanwhile.
    pub by_id: Duration,
    /// Hidden from every other DescribeInstances (tag filters, full
    /// listings) for this long after launch; EC2's tag index lags more.
    pub by_tag: Duration,
    /// After TerminateInstances, DescribeInstances keeps showing the state
    /// the instance had before, for this long.
    pub stale_after_terminate: Duration,
}

/// Launched instances that die at launch: terminated in moto `after` the
/// launch answer, later described with `code`/`message` as `stateReason`.
///
/// Models <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html>
/// ("instance terminates immediately": pending → terminated with a state
/// reason such as `Client.InvalidKMSKey.InvalidState` or
/// `Server.InsufficientInstanceCapacity`).
#[derive(Clone, Debug, PartialEq)]
pub struct KillAtLaunch {
    /// Which instances of a launch die.
    pub pick: Pick,
    /// How long after the launch answer.
    pub after: Duration,
    /// The `stateReason` code, e.g. `Server.InsufficientInstanceCapacity`.
    pub code: String,
    /// The `stateReason` message.
    pub message: String,
    /// Launch answers (RunInstances, CreateFleet) still to kill from;
    /// `None`: every one.
    pub launches: Option<u32>,
}

/// Which instances of one launch [`KillAtLaunch`] kills.
#[derive(Clone, Debug, PartialEq)]
pub enum Pick {
    /// The first `n` instances of the answer.
    First(usize),
    /// Each instance with this probability (seeded).
    Share(f64),
}

impl KillAtLaunch {
    /// Every instance of every launch dies 2 s after it, with `code`.
    pub fn all(code: impl Into<String>, message: impl Into<String>) -> KillAtLaunch {
        KillAtLaunch {
            pick: Pick::Share(1.0),
            after: Duration::from_secs(2),
            code: code.into(),
            message: message.into(),
            launches: None,
        }
    }

    /// Only the first `n` instances of each launch die.
    pub fn first(mut self, n: usize) -> KillAtLaunch {
        self.pick = Pick::First(n);
        self
    }

    /// Each instance dies with probability `p` (drawn from the seed).
    pub fn share(mut self, p: f64) -> KillAtLaunch {
        self.pick = Pick::Share(p);
        self
    }

    /// Dies this long after the launch answer.
    pub fn after(mut self, after: Duration) -> KillAtLaunch {
        self.after = after;
        self
    }

    /// Only the next `n` launch answers.
    pub fn launches(mut self, n: u32) -> KillAtLaunch {
        self.launches = Some(n);
        self
    }
}

/// Per-call rates of [`Fidelity::random`]: each launch call (RunInstances,
/// CreateFleet) draws once.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomProfile {
    /// Forward, then answer 500 `InternalError`.
    pub forward_then_500: f64,
    /// Forward, then drop the connection.
    pub forward_then_drop: f64,
    /// Launch about half of what was asked (a partial launch).
    pub partial: f64,
    /// Each launched instance dies at launch with this probability.
    pub death: f64,
}

impl Default for RandomProfile {
    fn default() -> RandomProfile {
        RandomProfile {
            forward_then_500: 0.05,
            forward_then_drop: 0.03,
            partial: 0.05,
            death: 0.02,
        }
    }
}
