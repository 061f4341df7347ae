//! Maps AWS SDK errors onto the port's [`ProviderError`] by error code, so
//! callers decide on categories ("retry", "bad spec", "try another type")
//! instead of matching AWS strings themselves.

use std::error::Error as StdError;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use tracing::debug;

use crate::provider::{ErrorDetail, ProviderError};

/// Classifies a failed SDK call of `operation`. Only the service's code and
/// message (or the transport's error chain) are kept: never request data.
pub fn from_sdk<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            classify(
                operation,
                ctx.err().code().unwrap_or_default(),
                ctx.err().message().unwrap_or_default(),
                Some(status),
            )
        }
        SdkError::TimeoutError(_) => {
            ProviderError::Transient(detail(operation, "Timeout", chain(&err)))
        }
        SdkError::DispatchFailure(failure) => {
            let text = chain(&err);
            // Identity resolution fails in the transmit phase, so missing or
            // refused credentials arrive as a dispatch failure: say so plainly.
            if failure.is_other() && text.to_ascii_lowercase().contains("credential") {
                ProviderError::AccessDenied(detail(operation, "CredentialsUnavailable", text))
            } else {
                ProviderError::Transient(detail(operation, "DispatchFailure", text))
            }
        }
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let text = chain(&err);
            if status >= 500 || status == 429 {
                ProviderError::Transient(detail(operation, &format!("HTTP{status}"), text))
            } else {
                ProviderError::Unknown(detail(operation, "ResponseError", text))
            }
        }
        _ => ProviderError::Unknown(detail(operation, "SdkError", chain(&err))),
    }
}

/// Classifies an AWS error code (EC2 and SSM spellings). `status` decides for
/// codes this table does not know: 5xx is transient, anything else unknown.
pub fn classify(
    operation: &'static str,
    code: &str,
    message: &str,
    status: Option<u16>,
) -> ProviderError {
    let d = detail(operation, code, message.to_string());
    match code {
        // Capacity and quota: fall back to another type, zone or capacity type.
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientFreeAddressesInSubnet"
        | "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "MaxSpotInstanceCountExceeded"
        | "SpotMaxPriceTooLow"
        // An EC2 Fleet's per-pool error when no pool it may use has capacity.
        | "UnfulfillableCapacity"
        // A targeted capacity reservation (or Capacity Block) without free
        // capacity (errors-overview.html).
        | "ReservationCapacityExceeded"
        | "Unsupported" => ProviderError::Capacity(d),
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "TooManyUpdates"
        | "SlowDown"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "EC2ThrottledException"
        | "PriorRequestNotComplete"
        | "BandwidthLimitExceeded"
        | "ProvisionedThroughputExceededException" => ProviderError::Throttled(d),
        "UnauthorizedOperation"
        | "AuthFailure"
        | "Blocked"
        | "OptInRequired"
        | "PendingVerification"
        | "SignatureDoesNotMatch"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "RequestExpired"
        | "MissingAuthenticationToken"
        | "IncompleteSignature" => ProviderError::AccessDenied(d),
        c if c.starts_with("AccessDenied") => ProviderError::AccessDenied(d),
        // An image id that cannot exist is, for the user, an image not found.
        "InvalidAMIID.Malformed" | "InvalidAMIID.Unavailable" => ProviderError::NotFound(d),
        "ParameterNotFound" | "ParameterVersionNotFound" | "ResourceNotFoundException" => {
            ProviderError::NotFound(d)
        }
        c if c.ends_with(".NotFound") || c.ends_with("NotFound") => ProviderError::NotFound(d),
        // Launch templates spell it with a suffix, e.g.
        // `InvalidLaunchTemplateName.NotFoundException` (also answered just
        // after CreateLaunchTemplate while it propagates): nothing launched.
        c if c.ends_with(".NotFoundException") => ProviderError::NotFound(d),
        // Every instance of this ClientToken is terminated: EC2 did nothing
        // now and never will for this token (the launch path settles the batch
        // by the code, see ProviderError::is_token_terminated).
        "IdempotentInstanceTerminated" => ProviderError::Refused(d),
        "InternalError"
        | "InternalFailure"
        | "InternalServerError"
        | "InternalServerErrorException"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "Unavailable"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "IDPCommunicationError" => ProviderError::Transient(d),
        "MissingParameter"
        | "UnknownParameter"
        | "ValidationError"
        | "ValidationException"
        | "IdempotentParameterMismatch"
        | "UnsupportedOperation"
        | "InvalidInstanceType"
        | "InvalidRequest"
        | "InvalidKeyPair.Format"
        | "InvalidKeyPair.Duplicate" => ProviderError::InvalidParameter(d),
        c if c.starts_with("InvalidParameter") || c.ends_with(".Malformed") => {
            ProviderError::InvalidParameter(d)
        }
        _ => match status {
            Some(s) if s >= 500 => ProviderError::Transient(d),
            Some(s) if (400..500).contains(&s) => ProviderError::Refused(d),
            _ => ProviderError::Unknown(d),
        },
    }
}

/// A detail built by the adapter itself, for conditions found without an AWS
/// error (an empty answer, a bad parameter value), and for every AWS answer
/// via [`classify`]. The message ends up in conditions and Events tenants
/// read, so AWS's encoded authorization message is cut out (see
/// [`without_encoded_message`]).
pub fn detail(operation: &'static str, code: &str, message: String) -> ErrorDetail {
    ErrorDetail {
        operation,
        code: code.to_string(),
        message: without_encoded_message(operation, code, message),
    }
}

/// What precedes the blob in EC2's AccessDenied-style answers.
const ENCODED_MARKER: &str = "Encoded authorization failure message:";

/// `message` without AWS's "Encoded authorization failure message: <blob>".
/// The blob, decoded with sts:DecodeAuthorizationMessage, tells which policy
/// statement denied what on which resource and with which conditions: detail
/// for the operator's admins, not for every tenant who can read a template.
/// The code and the plain part stay; the blob goes to the operator's log at
/// debug level only, so an admin can still decode it.
fn without_encoded_message(operation: &str, code: &str, message: String) -> String {
    let Some(at) = message.find(ENCODED_MARKER) else {
        return message;
    };
    let after = &message[at + ENCODED_MARKER.len()..];
    let blob_start = after.len() - after.trim_start().len();
    let blob_len = after[blob_start..]
        .find(char::is_whitespace)
        .unwrap_or(after.len() - blob_start);
    let blob = &after[blob_start..blob_start + blob_len];
    debug!(
        operation,
        code,
        encoded_authorization_message = blob,
        "AWS encoded authorization failure message (decode with sts:DecodeAuthorizationMessage)"
    );
    let rest = after[blob_start + blob_len..].trim();
    let plain = message[..at].trim_end();
    let mut out = format!(
        "{plain} (encoded authorization message withheld: see the operator's log at debug level)"
    );
    if !rest.is_empty() {
        out.push(' ');
        out.push_str(rest);
    }
    out.trim_start().to_string()
}

/// The error and its sources on one line; the SDK's `Display` alone says
/// little more than "dispatch failure".
fn chain(err: &(dyn StdError + 'static)) -> String {
    DisplayErrorContext(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn category(code: &str) -> &'static str {
        classify("Op", code, "m", Some(400)).category()
    }

    #[test]
    fn codes_map_to_categories() {
        for (code, want) in [
            ("InvalidAMIID.NotFound", "NotFound"),
            ("InvalidAMIID.Malformed", "NotFound"),
            ("InvalidAMIID.Unavailable", "NotFound"),
            ("ParameterNotFound", "NotFound"),
            ("InvalidSubnetID.NotFound", "NotFound"),
            ("InvalidGroup.NotFound", "NotFound"),
            ("InvalidInstanceID.NotFound", "NotFound"),
            ("UnauthorizedOperation", "AccessDenied"),
            ("AccessDenied", "AccessDenied"),
            ("AccessDeniedException", "AccessDenied"),
            ("AuthFailure", "AccessDenied"),
            ("RequestLimitExceeded", "Throttled"),
            ("Throttling", "Throttled"),
            ("ThrottlingException", "Throttled"),
            ("InvalidParameterValue", "InvalidParameter"),
            ("InvalidParameterCombination", "InvalidParameter"),
            ("InvalidSubnetID.Malformed", "InvalidParameter"),
            ("MissingParameter", "InvalidParameter"),
            ("ValidationException", "InvalidParameter"),
            ("IdempotentParameterMismatch", "InvalidParameter"),
            ("InsufficientInstanceCapacity", "Capacity"),
            ("Unsupported", "Capacity"),
            ("VcpuLimitExceeded", "Capacity"),
            ("UnfulfillableCapacity", "Capacity"),
            ("ReservationCapacityExceeded", "Capacity"),
            ("InternalError", "Transient"),
            ("ServiceUnavailable", "Transient"),
            ("SomethingNew", "Refused"),
            ("VolumeLimitExceeded", "Refused"),
            // Launch answers the findings name (issue 16): all definitive.
            ("InvalidBlockDeviceMapping", "Refused"),
            ("MaxTemplateLimitExceeded", "Refused"),
            ("IdempotentInstanceTerminated", "Refused"),
            ("InvalidLaunchTemplateName.NotFoundException", "NotFound"),
            ("InvalidLaunchTemplateId.NotFound", "NotFound"),
        ] {
            assert_eq!(category(code), want, "{code}");
        }
    }

    #[test]
    fn unknown_codes_follow_the_http_status() {
        assert_eq!(
            classify("Op", "Weird", "", Some(503)).category(),
            "Transient"
        );
        assert_eq!(classify("Op", "Weird", "", Some(403)).category(), "Refused");
        assert_eq!(classify("Op", "", "", None).category(), "Unknown");
        // A code the table names keeps its category whatever the status.
        assert_eq!(
            classify("Op", "IdempotentInstanceTerminated", "", None).category(),
            "Refused"
        );
    }

    #[test]
    fn token_answers_are_recognisable_after_classification() {
        let terminated = classify(
            "RunInstances",
            "IdempotentInstanceTerminated",
            "m",
            Some(400),
        );
        assert!(terminated.is_token_terminated(), "{terminated}");
        let mismatch = classify(
            "RunInstances",
            "IdempotentParameterMismatch",
            "m",
            Some(400),
        );
        assert!(mismatch.is_token_mismatch(), "{mismatch}");
    }

    #[test]
    fn detail_keeps_operation_code_and_message() {
        let e = classify(
            "GetParameter",
            "ParameterNotFound",
            "Parameter /x not found.",
            Some(400),
        );
        assert_eq!(
            e.detail(),
            &ErrorDetail {
                operation: "GetParameter",
                code: "ParameterNotFound".into(),
                message: "Parameter /x not found.".into()
            }
        );
    }

    #[test]
    fn encoded_authorization_messages_are_cut_from_the_message() {
        let blob = "4GIOHlTkIaWHQDxXq-_Zm9vYmFyYmF6cXV4";
        let e = classify(
            "RunInstances",
            "UnauthorizedOperation",
            &format!(
                "You are not authorized to perform this operation. \
                 Encoded authorization failure message: {blob}"
            ),
            Some(403),
        );
        let shown = e.to_string();
        assert_eq!(e.category(), "AccessDenied");
        assert!(!shown.contains(blob), "{shown}");
        assert!(shown.contains("UnauthorizedOperation"), "{shown}");
        assert!(
            shown.contains("You are not authorized to perform this operation."),
            "{shown}"
        );
        assert!(shown.contains("withheld"), "{shown}");
        // Text after the blob stays; a message without one is untouched.
        let d = detail(
            "RunInstances",
            "UnauthorizedOperation",
            format!("Denied. Encoded authorization failure message:\n{blob}\n(request x)"),
        );
        assert!(!d.message.contains(blob), "{}", d.message);
        assert!(d.message.starts_with("Denied. ("), "{}", d.message);
        assert!(d.message.ends_with("(request x)"), "{}", d.message);
        let plain = detail(
            "GetParameter",
            "ParameterNotFound",
            "Parameter /x not found.".into(),
        );
        assert_eq!(plain.message, "Parameter /x not found.");
    }
}
