//! Image look-ups: an explicit id (verified with DescribeImages), an SSM
//! parameter holding an id (GetParameter, then DescribeImages for its name),
//! or a selector (DescribeImages with owners and filters; the newest wins).

use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ec2::types::{Filter, Image, ImageState};

use super::calls::Calls;
use super::clients::AwsClients;
use super::errors::detail;
use super::pages::all_pages;
use crate::provider::{ImageSource, ProviderError, ResolvedImage};

/// Resolves `source` to one available image.
pub(super) async fn lookup(
    clients: &AwsClients,
    calls: &Calls,
    source: &ImageSource,
) -> Result<ResolvedImage, ProviderError> {
    let image = match source {
        ImageSource::Id(id) => by_id(clients, calls, id).await?,
        ImageSource::SsmParameter(name) => {
            let id = parameter_value(clients, calls, name).await?;
            by_id(clients, calls, &id).await.map_err(|e| match e {
                ProviderError::NotFound(mut d) => {
                    d.message = format!("SSM parameter {name} names image {id}: {}", d.message);
                    ProviderError::NotFound(d)
                }
                other => other,
            })?
        }
        ImageSource::Selector {
            name,
            owners,
            architecture,
            tags,
        } => {
            let filters = selector_filters(name, architecture.as_deref(), tags);
            newest(clients, calls, source, owners, filters).await?
        }
    };
    Ok(ResolvedImage {
        id: image.image_id().unwrap_or_default().to_string(),
        name: image.name().map(str::to_string),
        creation_date: image.creation_date().map(str::to_string),
        source: source.kind().to_string(),
        root_device_name: image.root_device_name().map(str::to_string),
        owner_id: image.owner_id().map(str::to_string),
        owner_alias: image.image_owner_alias().map(str::to_string),
    })
}

/// The image with this id, which must exist and be available.
async fn by_id(clients: &AwsClients, calls: &Calls, id: &str) -> Result<Image, ProviderError> {
    let out = calls
        .run("DescribeImages", || {
            clients
                .ec2
                .describe_images()
                .image_ids(id)
                // A deprecated image can still be launched; it must still resolve.
                .include_deprecated(true)
                .send()
        })
        .await?;
    let image = out
        .images()
        .iter()
        .find(|i| i.image_id() == Some(id))
        .ok_or_else(|| {
            ProviderError::NotFound(detail(
                "DescribeImages",
                "InvalidAMIID.NotFound",
                format!("image {id} does not exist or is not visible to this account"),
            ))
        })?;
    match image.state() {
        Some(ImageState::Available) | None => Ok(image.clone()),
        Some(state) => Err(ProviderError::NotFound(detail(
            "DescribeImages",
            "InvalidAMIID.Unavailable",
            format!("image {id} is {}, not available", state.as_str()),
        ))),
    }
}

/// The image id an SSM parameter holds. The value is never echoed when it is
/// not an image id: the template's condition and Events are read by tenants,
/// and the parameter may hold anything the operator's role can read.
async fn parameter_value(
    clients: &AwsClients,
    calls: &Calls,
    name: &str,
) -> Result<String, ProviderError> {
    let out = calls
        .run("GetParameter", || {
            clients.ssm.get_parameter().name(name).send()
        })
        .await?;
    let value = out
        .parameter()
        .and_then(|p| p.value())
        .map(str::trim)
        .unwrap_or_default();
    if is_ami_id(value) {
        Ok(value.to_string())
    } else {
        Err(ProviderError::InvalidParameter(detail(
            "GetParameter",
            "InvalidParameterValue",
            format!("SSM parameter {name} does not hold an AMI id (ami-…)"),
        )))
    }
}

/// Whether `s` is an image id as EC2 issues them: `ami-` and 8 or 17
/// lower-case hex digits (the API's `AMI_ID_PATTERN`). Checked exactly, so
/// a value that merely starts with `ami-` is neither sent nor shown.
fn is_ami_id(s: &str) -> bool {
    s.strip_prefix("ami-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The filters of a selector; `state=available` always, `name` unless it
/// matches anything.
fn selector_filters(
    name: &str,
    architecture: Option<&str>,
    tags: &std::collections::BTreeMap<String, String>,
) -> Vec<Filter> {
    let mut filters = vec![filter("state", "available")];
    if !name.is_empty() && name != "*" {
        filters.push(filter("name", name));
    }
    if let Some(arch) = architecture {
        filters.push(filter("architecture", arch));
    }
    for (k, v) in tags {
        filters.push(filter(&format!("tag:{k}"), v));
    }
    filters
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// The newest image matching a selector, over all pages.
async fn newest(
    clients: &AwsClients,
    calls: &Calls,
    source: &ImageSource,
    owners: &[String],
    filters: Vec<Filter>,
) -> Result<Image, ProviderError> {
    if owners.is_empty() {
        // Without owners every public image in the region is a candidate,
        // including look-alikes published by strangers.
        return Err(ProviderError::InvalidParameter(detail(
            "DescribeImages",
            "MissingParameter",
            format!("{source}: owners must not be empty"),
        )));
    }
    let images = all_pages(|token| {
        let request = clients
            .ec2
            .describe_images()
            .set_owners(Some(owners.to_vec()))
            .set_filters(Some(filters.clone()))
            .max_results(1000)
            .set_next_token(token);
        async move {
            let out = calls.run("DescribeImages", || request.send()).await?;
            Ok((out.images.unwrap_or_default(), out.next_token))
        }
    })
    .await?;
    let best = images
        .into_iter()
        .filter(|image| image.image_id().is_some())
        .reduce(|best, image| {
            if rank(&image) > rank(&best) {
                image
            } else {
                best
            }
        });
    best.ok_or_else(|| {
        ProviderError::NotFound(detail(
            "DescribeImages",
            "NoMatchingImage",
            format!("no available image matches {source}"),
        ))
    })
}

/// Newer images rank higher; equal creation dates fall back to the image id,
/// so the choice never depends on the order of the answer.
fn rank(image: &Image) -> (Option<DateTime>, &str) {
    let created = image
        .creation_date()
        .and_then(|d| DateTime::from_str(d, DateTimeFormat::DateTime).ok());
    (created, image.image_id().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, created: Option<&str>) -> Image {
        Image::builder()
            .image_id(id)
            .set_creation_date(created.map(str::to_string))
            .build()
    }

    #[test]
    fn newer_images_rank_higher_and_ties_break_by_id() {
        let old = image("ami-0000000000000000b", Some("2024-01-01T00:00:00.000Z"));
        let new = image("ami-0000000000000000a", Some("2024-06-01T00:00:00.000Z"));
        let tie = image("ami-0000000000000000c", Some("2024-06-01T00:00:00.000Z"));
        let undated = image("ami-0000000000000000f", None);
        assert!(rank(&new) > rank(&old));
        assert!(rank(&tie) > rank(&new));
        assert!(rank(&old) > rank(&undated));
    }

    #[test]
    fn selector_filters_always_ask_for_available_images() {
        let tags = [("team".to_string(), "hpc".to_string())].into();
        let f = selector_filters("al2023-*", Some("arm64"), &tags);
        let pairs: Vec<(String, Vec<String>)> = f
            .iter()
            .map(|f| {
                (
                    f.name().unwrap_or_default().to_string(),
                    f.values().to_vec(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("state".to_string(), vec!["available".to_string()]),
                ("name".to_string(), vec!["al2023-*".to_string()]),
                ("architecture".to_string(), vec!["arm64".to_string()]),
                ("tag:team".to_string(), vec!["hpc".to_string()]),
            ]
        );
        assert_eq!(selector_filters("*", None, &Default::default()).len(), 1);
    }

    #[test]
    fn only_exact_image_ids_pass_as_parameter_values() {
        for ok in ["ami-0123456789abcdef0", "ami-12345678"] {
            assert!(is_ami_id(ok), "{ok}");
        }
        for bad in [
            "ami-hunter2",
            "ami-0123456789ABCDEF0",
            "ami-123456789",
            "ami-0123456789abcdef01",
            "ami-",
            "password=ami-12345678",
            "ami-12345678 ",
            "",
        ] {
            assert!(!is_ami_id(bad), "{bad}");
        }
    }
}
