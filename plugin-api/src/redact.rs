//! Credentials inside URLs (`http://user:pass@host`) kept out of logs and printed configs.

use std::borrow::Cow;

/// `text` with the user information of every URL in it (`scheme://user:pass@host`) replaced by
/// `********`; text without any is returned as it is.
pub fn redact_url_credentials(text: &str) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        out.push_str(&rest[..authority_start]);
        let after = &rest[authority_start..];
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str("********");
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_is_masked_and_the_rest_kept() {
        assert_eq!(
            redact_url_credentials("http://user:pass@collector:4318/v1/metrics"),
            "http://********@collector:4318/v1/metrics"
        );
        assert_eq!(
            redact_url_credentials("a https://u@h and grpc://x:y@z?q=a@b"),
            "a https://********@h and grpc://********@z?q=a@b"
        );
        assert_eq!(
            redact_url_credentials("http://host:4318/"),
            "http://host:4318/"
        );
        assert_eq!(redact_url_credentials("mail me@home"), "mail me@home");
    }
}
