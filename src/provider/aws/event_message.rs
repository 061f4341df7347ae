//! The EventBridge events an interruption queue receives, parsed into
//! [`CloudEvent`]s. An EventBridge rule with an SQS target delivers the event
//! itself as the message body (no envelope). The shapes are AWS's documented
//! ones:
//!
//! - EC2 Spot Instance Interruption Warning: `source: aws.ec2`, `detail:
//!   {instance-id, instance-action}` —
//!   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html>
//! - EC2 Instance Rebalance Recommendation: `detail: {instance-id}` —
//!   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html>
//! - EC2 Instance State-change Notification: `detail: {instance-id, state}`,
//!   state one of pending, running, stopping, stopped, shutting-down,
//!   terminated —
//!   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instance-state-changes.html>
//! - AWS Health Event: `source: aws.health`, `detail: {service: EC2,
//!   eventTypeCode, eventTypeCategory: scheduledChange, startTime,
//!   affectedEntities: [{entityValue: <instance id>}]}` —
//!   <https://docs.aws.amazon.com/health/latest/ug/aws-health-events-eventbridge-schema.html>
//!
//! Every event carries `time` (`yyyy-mm-ddThh:mm:ssZ`). A body that is not
//! one of these is an [`EventMessageError`], never a panic: the consumer
//! counts it and deletes it, so a stray message is not received forever.

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use crate::provider::{CloudEvent, MachineState, ScheduledKind};

/// The `detail-type` of each EC2 event hostforge reads.
pub const SPOT_INTERRUPTION: &str = "EC2 Spot Instance Interruption Warning";
/// See [`SPOT_INTERRUPTION`].
pub const REBALANCE_RECOMMENDATION: &str = "EC2 Instance Rebalance Recommendation";
/// See [`SPOT_INTERRUPTION`].
pub const STATE_CHANGE: &str = "EC2 Instance State-change Notification";
/// The `detail-type` of AWS Health events.
pub const HEALTH_EVENT: &str = "AWS Health Event";

/// Why a message body is not an event hostforge acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventMessageError {
    /// The body is not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A field the event's kind requires is missing or not a string.
    #[error("{kind}: field {field} is missing or not a string")]
    Missing {
        /// The event's `detail-type` (or `event` when unknown yet).
        kind: String,
        /// The field's path.
        field: &'static str,
    },
    /// A field holds a value the event's kind does not admit.
    #[error("{kind}: field {field} has the unexpected value {value:?}")]
    BadValue {
        /// The event's `detail-type`.
        kind: String,
        /// The field's path.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// A well-formed event of a kind hostforge does not act on (another
    /// source, another detail-type, a Health event for another service or
    /// of another category).
    #[error("unsupported event: source {source_name:?}, detail-type {detail_type:?}")]
    Unsupported {
        /// The event's `source`.
        source_name: String,
        /// The event's `detail-type`.
        detail_type: String,
    },
}

impl EventMessageError {
    /// A bounded name for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            EventMessageError::NotJson(_) => "not_json",
            EventMessageError::Missing { .. } => "missing_field",
            EventMessageError::BadValue { .. } => "bad_value",
            EventMessageError::Unsupported { .. } => "unsupported",
        }
    }
}

/// Parses one message body.
pub fn parse(body: &str) -> Result<CloudEvent, EventMessageError> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| EventMessageError::NotJson(e.to_string()))?;
    if !v.is_object() {
        return Err(EventMessageError::NotJson(
            "the body is not an object".into(),
        ));
    }
    let top = |field: &'static str| -> Result<&str, EventMessageError> {
        v.get(field)
            .and_then(Value::as_str)
            .ok_or(EventMessageError::Missing {
                kind: "event".into(),
                field,
            })
    };
    let source = top("source")?.to_string();
    let detail_type = top("detail-type")?.to_string();
    let kind = detail_type.clone();
    let time = rfc3339(&kind, "time", top("time")?)?;
    let detail = v
        .get("detail")
        .filter(|d| d.is_object())
        .ok_or(EventMessageError::Missing {
            kind: kind.clone(),
            field: "detail",
        })?;
    let field = |name: &'static str, path: &'static str| -> Result<String, EventMessageError> {
        detail
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or(EventMessageError::Missing {
                kind: kind.clone(),
                field: path,
            })
    };
    let instance_id = || -> Result<String, EventMessageError> {
        let id = field("instance-id", "detail.instance-id")?;
        check_instance_id(&kind, "detail.instance-id", id)
    };
    let unsupported = || EventMessageError::Unsupported {
        source_name: source.clone(),
        detail_type: detail_type.clone(),
    };
    match (source.as_str(), detail_type.as_str()) {
        ("aws.ec2", SPOT_INTERRUPTION) => Ok(CloudEvent::SpotInterruption {
            instance_id: instance_id()?,
            action: field("instance-action", "detail.instance-action")?,
            time,
        }),
        ("aws.ec2", REBALANCE_RECOMMENDATION) => Ok(CloudEvent::RebalanceRecommendation {
            instance_id: instance_id()?,
            time,
        }),
        ("aws.ec2", STATE_CHANGE) => {
            let instance_id = instance_id()?;
            let state = field("state", "detail.state")?;
            let state = ec2_state(&state).ok_or(EventMessageError::BadValue {
                kind: kind.clone(),
                field: "detail.state",
                value: state,
            })?;
            Ok(CloudEvent::StateChange {
                instance_id,
                state,
                time,
            })
        }
        ("aws.health", HEALTH_EVENT) => {
            let service = field("service", "detail.service")?;
            let category = field("eventTypeCategory", "detail.eventTypeCategory")?;
            if service != "EC2" || category != "scheduledChange" {
                return Err(unsupported());
            }
            let code = field("eventTypeCode", "detail.eventTypeCode")?;
            let kind_of = scheduled_kind(&code).ok_or_else(unsupported)?;
            let start = match detail.get("startTime").and_then(Value::as_str) {
                None => None,
                Some(s) => Some(health_time(&kind, s)?),
            };
            let entities = detail
                .get("affectedEntities")
                .and_then(Value::as_array)
                .ok_or(EventMessageError::Missing {
                    kind: kind.clone(),
                    field: "detail.affectedEntities",
                })?;
            let mut instance_ids = Vec::new();
            for e in entities {
                // Entities of other kinds (volumes, hosts) are not machines.
                if let Some(id) = e.get("entityValue").and_then(Value::as_str) {
                    if id.starts_with("i-") {
                        instance_ids.push(check_instance_id(
                            &kind,
                            "detail.affectedEntities[].entityValue",
                            id.to_string(),
                        )?);
                    }
                }
            }
            if instance_ids.is_empty() {
                return Err(EventMessageError::Missing {
                    kind,
                    field: "detail.affectedEntities[].entityValue",
                });
            }
            Ok(CloudEvent::Scheduled {
                instance_ids,
                kind: kind_of,
                code,
                start,
                time,
            })
        }
        _ => Err(unsupported()),
    }
}

/// The state an EC2 state name stands for; `None` for a name EC2 does not use.
fn ec2_state(s: &str) -> Option<MachineState> {
    Some(match s {
        "pending" => MachineState::Pending,
        "running" => MachineState::Running,
        "stopping" => MachineState::Stopping,
        "stopped" => MachineState::Stopped,
        "shutting-down" => MachineState::ShuttingDown,
        "terminated" => MachineState::Terminated,
        _ => return None,
    })
}

/// What an EC2 scheduled-change code does to the machine; `None` for codes
/// about other resources.
fn scheduled_kind(code: &str) -> Option<ScheduledKind> {
    if !code.starts_with("AWS_EC2_") {
        return None;
    }
    if code.contains("RETIREMENT") || code.contains("STOP_SCHEDULED") {
        Some(ScheduledKind::Retirement)
    } else if code.contains("MAINTENANCE") || code.contains("REBOOT") {
        Some(ScheduledKind::Maintenance)
    } else {
        None
    }
}

/// Instance ids are `i-` and hex digits; anything else is not an id that
/// could be in a status (and must not reach a log line unchecked).
fn check_instance_id(
    kind: &str,
    field: &'static str,
    id: String,
) -> Result<String, EventMessageError> {
    let ok = id.len() <= 32
        && id
            .strip_prefix("i-")
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(id)
    } else {
        Err(EventMessageError::BadValue {
            kind: kind.into(),
            field,
            value: id.chars().take(64).collect(),
        })
    }
}

/// An event's RFC 3339 time, normalised.
fn rfc3339(kind: &str, field: &'static str, s: &str) -> Result<String, EventMessageError> {
    s.parse::<Timestamp>()
        .map(|t| t.to_string())
        .map_err(|_| EventMessageError::BadValue {
            kind: kind.into(),
            field,
            value: s.chars().take(64).collect(),
        })
}

/// A Health event's `startTime`: AWS's samples write it as an HTTP date
/// (`Wed, 06 Nov 2024 08:00:00 GMT`); RFC 3339 is accepted as well.
fn health_time(kind: &str, s: &str) -> Result<String, EventMessageError> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t.to_string());
    }
    k8s_openapi::jiff::fmt::rfc2822::parse(s)
        .map(|z| z.timestamp().to_string())
        .map_err(|_| EventMessageError::BadValue {
            kind: kind.into(),
            field: "detail.startTime",
            value: s.chars().take(64).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "i-1234567890abcdef0";

    fn ec2(detail_type: &str, detail: &str) -> String {
        format!(
            r#"{{"version":"0","id":"7bf73129-1428-4cd3-a780-95db273d1602","detail-type":"{detail_type}","source":"aws.ec2","account":"123456789012","time":"2021-11-11T21:29:54Z","region":"us-east-1","resources":["arn:aws:ec2:us-east-1:123456789012:instance/{ID}"],"detail":{detail}}}"#
        )
    }

    fn health(code: &str, category: &str, service: &str, entities: &str) -> String {
        format!(
            r#"{{"version":"0","id":"121345678-1234-1234-1234-123456789012","detail-type":"AWS Health Event","source":"aws.health","account":"123456789012","time":"2016-06-05T06:27:57Z","region":"us-west-2","resources":["{ID}"],"detail":{{"eventArn":"arn:aws:health:us-west-2::event/EC2/{code}/{code}_ABC123","service":"{service}","eventTypeCode":"{code}","eventTypeCategory":"{category}","startTime":"Sat, 11 Jun 2016 05:00:00 GMT","endTime":"Sat, 11 Jun 2016 05:15:00 GMT","eventDescription":[{{"language":"en_US","latestDescription":"retiring"}}],"affectedEntities":{entities}}}}}"#
        )
    }

    #[test]
    fn the_documented_ec2_events_parse() {
        let e = parse(&ec2(
            SPOT_INTERRUPTION,
            &format!(r#"{{"instance-id":"{ID}","instance-action":"terminate"}}"#),
        ))
        .expect("spot warning");
        assert_eq!(
            e,
            CloudEvent::SpotInterruption {
                instance_id: ID.into(),
                action: "terminate".into(),
                time: "2021-11-11T21:29:54Z".into()
            }
        );
        let e = parse(&ec2(
            REBALANCE_RECOMMENDATION,
            &format!(r#"{{"instance-id":"{ID}"}}"#),
        ))
        .expect("rebalance");
        assert_eq!(e.kind(), "rebalance_recommendation");
        assert_eq!(e.instance_ids(), [ID]);
        for (name, state) in [
            ("pending", MachineState::Pending),
            ("running", MachineState::Running),
            ("stopping", MachineState::Stopping),
            ("stopped", MachineState::Stopped),
            ("shutting-down", MachineState::ShuttingDown),
            ("terminated", MachineState::Terminated),
        ] {
            let e = parse(&ec2(
                STATE_CHANGE,
                &format!(r#"{{"instance-id":"{ID}","state":"{name}"}}"#),
            ))
            .expect("state change");
            assert_eq!(
                e,
                CloudEvent::StateChange {
                    instance_id: ID.into(),
                    state,
                    time: "2021-11-11T21:29:54Z".into()
                },
                "{name}"
            );
        }
    }

    #[test]
    fn health_scheduled_changes_for_ec2_parse() {
        let entities = format!(
            r#"[{{"entityValue":"{ID}"}},{{"entityValue":"vol-0123"}},{{"entityValue":"i-0abc"}}]"#
        );
        let e = parse(&health(
            "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
            "scheduledChange",
            "EC2",
            &entities,
        ))
        .expect("retirement");
        assert_eq!(
            e,
            CloudEvent::Scheduled {
                instance_ids: vec![ID.into(), "i-0abc".into()],
                kind: ScheduledKind::Retirement,
                code: "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED".into(),
                start: Some("2016-06-11T05:00:00Z".into()),
                time: "2016-06-05T06:27:57Z".into(),
            }
        );
        let e = parse(&health(
            "AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED",
            "scheduledChange",
            "EC2",
            &entities,
        ))
        .expect("maintenance");
        assert!(matches!(
            e,
            CloudEvent::Scheduled {
                kind: ScheduledKind::Maintenance,
                ..
            }
        ));
        // Other services and categories are not ours to act on.
        for (code, category, service) in [
            ("AWS_RDS_MAINTENANCE_SCHEDULED", "scheduledChange", "RDS"),
            ("AWS_EC2_OPERATIONAL_ISSUE", "issue", "EC2"),
        ] {
            let err = parse(&health(code, category, service, &entities)).expect_err(code);
            assert_eq!(err.category(), "unsupported", "{code}: {err}");
        }
        let err = parse(&health(
            "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
            "scheduledChange",
            "EC2",
            r#"[{"entityValue":"vol-1"}]"#,
        ))
        .expect_err("no instance");
        assert_eq!(err.category(), "missing_field");
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "not_json"),
            ("not json at all", "not_json"),
            ("[1,2]", "not_json"),
            ("{}", "missing_field"),
            (
                r#"{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","time":"2021-11-11T21:29:54Z"}"#,
                "missing_field",
            ),
            (
                r#"{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","time":"yesterday","detail":{}}"#,
                "bad_value",
            ),
            (
                r#"{"source":"aws.s3","detail-type":"Object Created","time":"2021-11-11T21:29:54Z","detail":{}}"#,
                "unsupported",
            ),
        ];
        for (body, category) in cases {
            let err = parse(body).expect_err(body);
            assert_eq!(err.category(), *category, "{body}: {err}");
        }
        let bad_state = parse(&ec2(
            STATE_CHANGE,
            &format!(r#"{{"instance-id":"{ID}","state":"exploded"}}"#),
        ))
        .expect_err("state");
        assert_eq!(
            bad_state.to_string(),
            "EC2 Instance State-change Notification: field detail.state has the unexpected value \"exploded\""
        );
        let bad_id = parse(&ec2(
            SPOT_INTERRUPTION,
            r#"{"instance-id":"../../etc","instance-action":"stop"}"#,
        ))
        .expect_err("id");
        assert_eq!(bad_id.category(), "bad_value");
        let no_action = parse(&ec2(
            SPOT_INTERRUPTION,
            &format!(r#"{{"instance-id":"{ID}"}}"#),
        ))
        .expect_err("action");
        assert_eq!(
            no_action.to_string(),
            "EC2 Spot Instance Interruption Warning: field detail.instance-action is missing or not a string"
        );
    }
}
