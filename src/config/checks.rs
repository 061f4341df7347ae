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
/// caught at start rather than by the SDK at the first call.
pub(super) fn check_url(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty (leave it out to use the cloud's own endpoint)".into());
    }
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty()
                && !host.starts_with('/')
                && !host.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(format!("{s:?} is not an http:// or https:// URL")),
    }
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
