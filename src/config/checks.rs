//! Checks of single values (names, regions, URLs, ARNs): each says what is
//! wrong in words a user can act on, and the caller adds the key path.

/// Names end up in tags and in `spec.provider`, whose schema only admits
/// DNS labels: accept exactly those.
pub(super) fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "{s:?} must be lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Region names as the clouds spell them: lowercase words and digits joined
/// by dashes.
pub(super) fn check_region(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok || s.starts_with('-') || s.ends_with('-') {
        return Err(format!("{s:?} is not a region name (e.g. us-east-1)"));
    }
    Ok(())
}

/// Endpoint overrides must be absolute http(s) URLs, so a host:port slip is
/// caught at start rather than by the SDK at the first call. Plain `http://`
/// is only for a simulator on this host (127.0.0.0/8, `::1`, `localhost`):
/// requests carry SigV4 headers and session tokens, which must not cross a
/// network in clear text.
pub(super) fn check_url(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty (leave it out to use the cloud's own endpoint)".into());
    }
    let (rest, plain) = match (s.strip_prefix("https://"), s.strip_prefix("http://")) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => return Err(format!("{s:?} is not an http:// or https:// URL")),
    };
    let host = url_host(rest).ok_or_else(|| format!("{s:?} is not an http:// or https:// URL"))?;
    if plain && !is_loopback(host) {
        return Err(format!(
            "{s:?} sends credentials in clear text: use https://, plain http:// is only \
             accepted for a loopback host (127.0.0.0/8, ::1, localhost)"
        ));
    }
    Ok(())
}

/// The host of a URL's authority (what follows the scheme): without user
/// info, port, path, query or fragment; `None` when there is none.
fn url_host(rest: &str) -> Option<&str> {
    if rest.contains(char::is_whitespace) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    (!host.is_empty()).then_some(host)
}

/// Whether a URL host names this machine: `localhost`, or an IPv4 address
/// in 127.0.0.0/8, or `::1`.
fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
        return v4.is_loopback();
    }
    host.parse::<std::net::Ipv6Addr>()
        .is_ok_and(|v6| v6.is_loopback())
}

/// An assumed role must be an IAM role ARN; anything else fails only when
/// the first call tries to assume it.
pub(super) fn check_role_arn(s: &str) -> Result<(), String> {
    // arn:<partition>:iam::<account>:role/<path/name>
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/name)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OperatorConfig;

    #[test]
    fn plain_http_endpoints_are_accepted_for_loopback_hosts_only() {
        for ok in [
            "https://ec2.vpce.example",
            "https://ec2.us-east-1.amazonaws.com/",
            "https://10.0.0.5:8443",
            "http://127.0.0.1:5000",
            "http://127.9.8.7",
            "http://localhost:4566/",
            "http://LOCALHOST:4566",
            "http://[::1]:5000",
            "http://user@127.0.0.1:5000/path",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://moto:5000",
            "http://10.0.0.5:5000",
            "http://128.0.0.1",
            "http://ec2.us-east-1.amazonaws.com",
            "http://localhost.evil.example:80",
            "http://127.0.0.1.nip.io:5000",
            "http://[::2]:5000",
            "http://127.0.0.1@evil.example/",
        ] {
            let msg = check_url(bad).expect_err(bad);
            assert!(
                msg.contains("https://") && msg.contains("loopback"),
                "{bad}: {msg}"
            );
        }
        for malformed in [
            "localhost:5000",
            "http://",
            "https:///x",
            "ftp://h",
            "http://:5000",
            "HTTP://evil.example",
        ] {
            assert!(check_url(malformed).is_err(), "{malformed}");
        }
    }

    #[test]
    fn plain_http_to_another_host_is_a_config_error_naming_the_field() {
        let msg = OperatorConfig::from_yaml(
            "clusterName: c\nproviders:\n- {name: a, type: aws, region: r1, endpointUrl: 'http://moto.example:5000'}\n",
        )
        .expect_err("plain http to a remote host")
        .to_string();
        assert!(msg.contains("providers[0].endpointUrl"), "{msg}");
        assert!(msg.contains("http://moto.example:5000"), "{msg}");
        let ok = OperatorConfig::from_yaml(
            "clusterName: c\nproviders:\n- {name: a, type: aws, region: r1, endpointUrl: 'http://127.0.0.1:5000'}\n",
        )
        .expect("loopback simulator");
        assert_eq!(
            ok.providers[0].endpoint_url.as_deref(),
            Some("http://127.0.0.1:5000")
        );
    }
}
