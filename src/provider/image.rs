//! Where a template's image comes from and what it resolved to: the key and
//! the value of the image cache, in plain types.

use std::collections::BTreeMap;
use std::fmt;

/// Where a template's image comes from; also the image cache key, hence `Hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// A fixed image id, verified to exist.
    Id(String),
    /// A parameter whose value is an image id (e.g. AWS's public "latest AL2023"
    /// parameters), so launches follow the publisher's updates.
    SsmParameter(String),
    /// The newest available image matching all of the criteria.
    Selector {
        /// Name pattern; `*` matches any characters, `?` one. Empty or `*`: any name.
        name: String,
        /// Accounts whose images may match: `self`, `amazon`, `aws-marketplace`
        /// or account ids. Required, so a look-alike public image is never picked.
        owners: Vec<String>,
        /// CPU architecture as the cloud names it (`x86_64`, `arm64`, …).
        architecture: Option<String>,
        /// Tags the image must carry with exactly these values.
        tags: BTreeMap<String, String>,
    },
}

impl ImageSource {
    /// The bounded name of the source kind, as written into template status.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageSource::Id(_) => "id",
            ImageSource::SsmParameter(_) => "ssmParameter",
            ImageSource::Selector { .. } => "selector",
        }
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Id(id) => write!(f, "image id {id}"),
            ImageSource::SsmParameter(p) => write!(f, "SSM parameter {p}"),
            ImageSource::Selector {
                name,
                owners,
                architecture,
                tags,
            } => {
                write!(
                    f,
                    "image selector name={name:?} owners=[{}]",
                    owners.join(",")
                )?;
                if let Some(arch) = architecture {
                    write!(f, " architecture={arch}")?;
                }
                for (k, v) in tags {
                    write!(f, " tag:{k}={v}")?;
                }
                Ok(())
            }
        }
    }
}

/// An image a source resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The image id to launch with.
    pub id: String,
    /// The image's name, shown to users so they can tell what they run.
    pub name: Option<String>,
    /// When the image was created (RFC 3339, as the cloud reports it).
    pub creation_date: Option<String>,
    /// Which kind of source produced it: `id`, `ssmParameter` or `selector`.
    pub source: String,
    /// The image's root device name (e.g. `/dev/xvda`), needed to size the root
    /// volume at launch.
    pub root_device_name: Option<String>,
    /// The account that owns the image, checked against a tenant policy's
    /// `imageOwners`.
    pub owner_id: Option<String>,
    /// The owner alias EC2 reports for AWS-owned images (`amazon`,
    /// `aws-marketplace`), also matched against `imageOwners`.
    pub owner_alias: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_know_their_kind_and_describe_themselves() {
        let sel = ImageSource::Selector {
            name: "al2023-*".into(),
            owners: vec!["amazon".into(), "self".into()],
            architecture: Some("arm64".into()),
            tags: [("team".to_string(), "hpc".to_string())].into(),
        };
        assert_eq!(sel.kind(), "selector");
        assert_eq!(
            sel.to_string(),
            "image selector name=\"al2023-*\" owners=[amazon,self] architecture=arm64 tag:team=hpc"
        );
        assert_eq!(ImageSource::Id("ami-1".into()).kind(), "id");
        assert_eq!(
            ImageSource::SsmParameter("/p".into()).kind(),
            "ssmParameter"
        );
    }
}
