//! What one launch call answered: the machines it launched and, when the
//! cloud launched fewer than asked and said why, each reason. An instant EC2
//! Fleet answers part of its target with an `errorSet`
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleetError.html>):
//! the controller needs those reasons to say why a batch fell short and to
//! cool down the offerings that had no capacity, or the follow-up batch asks
//! the same empty pool again.

use crate::provider::Machine;

/// A launch call's answer (see the module doc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchAnswer {
    /// Every machine the call launched, in the answer's order.
    pub machines: Vec<Machine>,
    /// Why the call launched fewer than asked, when the cloud said (empty for
    /// RunInstances, which launches between MinCount and MaxCount silently).
    pub shortfall: Vec<Shortfall>,
}

impl LaunchAnswer {
    /// An answer that names no shortfall.
    pub fn of(machines: Vec<Machine>) -> LaunchAnswer {
        LaunchAnswer {
            machines,
            shortfall: Vec::new(),
        }
    }

    /// The shortfall as one line for a batch's message: each reason once.
    pub fn shortfall_line(&self) -> Option<String> {
        let mut lines: Vec<String> = Vec::new();
        for s in &self.shortfall {
            let line = s.describe();
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        (!lines.is_empty()).then(|| lines.join("; "))
    }
}

/// One reason a launch fell short: where the cloud could not launch and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The cloud's error code (e.g. `InsufficientInstanceCapacity`).
    pub code: String,
    /// The cloud's message.
    pub message: String,
    /// The instance type it was about, when the cloud said.
    pub instance_type: Option<String>,
    /// The subnet it was about, when the cloud said.
    pub subnet_id: Option<String>,
    /// Whether it was about spot capacity, when the cloud said.
    pub spot: Option<bool>,
    /// Whether the code means "no capacity there" (the offering is cooled
    /// down), rather than a refusal of the spec.
    pub capacity: bool,
}

impl Shortfall {
    /// `code: message (type in subnet)`, what a user reads on the batch.
    pub fn describe(&self) -> String {
        let place = match (&self.instance_type, &self.subnet_id) {
            (Some(t), Some(s)) => format!(" ({t} in {s})"),
            (Some(t), None) => format!(" ({t})"),
            (None, Some(s)) => format!(" (in {s})"),
            (None, None) => String::new(),
        };
        format!("{}: {}{place}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(code: &str, t: Option<&str>) -> Shortfall {
        Shortfall {
            code: code.into(),
            message: "none left".into(),
            instance_type: t.map(str::to_string),
            subnet_id: None,
            spot: None,
            capacity: true,
        }
    }

    #[test]
    fn the_shortfall_line_names_each_reason_once() {
        let answer = LaunchAnswer {
            machines: Vec::new(),
            shortfall: vec![
                short("InsufficientInstanceCapacity", Some("t3.micro")),
                short("InsufficientInstanceCapacity", Some("t3.micro")),
                short("InsufficientInstanceCapacity", None),
            ],
        };
        assert_eq!(
            answer.shortfall_line().as_deref(),
            Some(
                "InsufficientInstanceCapacity: none left (t3.micro); InsufficientInstanceCapacity: none left"
            )
        );
        assert_eq!(LaunchAnswer::of(Vec::new()).shortfall_line(), None);
    }
}
