//! Where people reach this deployment (`KEYMETER_PUBLIC_URL`): every link in an email or a
//! notification starts with it.

use std::fmt;
use std::net::SocketAddr;

/// An absolute http(s) URL with a host, and no user info, query or fragment (links are made by
/// appending a path to it). Kept as written, without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

/// Why a text is not a [`PublicUrl`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{raw:?} {why}")]
pub struct PublicUrlError {
    raw: String,
    why: String,
}

impl PublicUrl {
    pub fn parse(raw: &str) -> Result<Self, PublicUrlError> {
        let bad = |why: &str| PublicUrlError { raw: raw.to_owned(), why: why.to_owned() };
        let url = url::Url::parse(raw).map_err(|_| bad("is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must start with http:// or https://"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("names no host"));
        }
        if raw.contains('@') {
            return Err(bad("must not hold a user name or password"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a query (?…) or a fragment (#…)"));
        }
        if url.port() == Some(0) {
            return Err(bad("has a port outside 1-65535"));
        }
        // Kept as written, it must be what the parser makes of it: browsers compare the origin
        // they send with it (a default port, a non-ASCII or percent-encoded host would differ),
        // and mail clients cut links at spaces and `<>`; `https:/host` is not a link as written.
        let written = raw.trim_end_matches('/');
        let parsed = url.as_str().trim_end_matches('/');
        if !written.eq_ignore_ascii_case(parsed) {
            return Err(bad(&format!("must be written as browsers write it: {parsed}")));
        }
        Ok(Self(written.to_owned()))
    }

    /// Where a server listening on `addr` is reached, when no public URL is configured
    /// (`localhost` for every interface, which names no host a link could use).
    pub fn listening_on(addr: SocketAddr) -> Self {
        if addr.ip().is_unspecified() {
            Self(format!("http://localhost:{}", addr.port()))
        } else {
            Self(format!("http://{addr}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The page at `path` (from `/`) of this deployment.
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    pub fn is_https(&self) -> bool {
        self.0.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    }
}

/// Where `make run` serves the app.
impl Default for PublicUrl {
    fn default() -> Self {
        Self("http://127.0.0.1:3000".to_owned())
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_is_an_http_address_to_append_paths_to() {
        for good in ["https://km.example.com:8443", "http://[::1]", "http://[::1]:3000", "http://localhost:3000"] {
            assert_eq!(PublicUrl::parse(good).unwrap().as_str(), good);
        }
        let url = PublicUrl::parse("https://keymeter.example.com/app/").unwrap();
        assert_eq!(url.link("/login"), "https://keymeter.example.com/app/login");
        assert!(url.is_https() && !PublicUrl::default().is_https());
        for bad in [
            "",
            "keymeter.example.com",
            "http:// x",
            "https:\\\\evil.example",
            "javascript:alert(1)",
            "mailto:a@b.com",
            "https://user:pw@km.example.com",
            "https://user@km.example.com",
            "https://km.example.com/?a=1",
            "https://km.example.com/?",
            "https://km.example.com/#top",
            "https://km.example.com:99999",
            "https://km.example.com:0",
            "https:///path",
            "https:/km.example.com",
            "https://@km.example.com",
            "https://:@km.example.com",
            "https://bücher.example",
            "https://km%2Eexample.com",
            "https://km.example.com:",
            "https://km.example.com:443",
            "https://km.example.com/a b",
            "https://km.example.com/<x>",
            " https://km.example.com",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            PublicUrl::parse("ftp://km.example.com").unwrap_err().to_string(),
            "\"ftp://km.example.com\" must start with http:// or https://"
        );
        assert_eq!(
            PublicUrl::parse("https://KM.example.com:443/app").unwrap_err().to_string(),
            "\"https://KM.example.com:443/app\" must be written as browsers write it: https://km.example.com/app"
        );
        assert_eq!(PublicUrl::parse("HTTPS://KM.Example.com/").unwrap().as_str(), "HTTPS://KM.Example.com");
        // Without one configured: where the server listens (port 0 in tests, chosen later).
        assert_eq!(PublicUrl::listening_on("0.0.0.0:8080".parse().unwrap()).as_str(), "http://localhost:8080");
        assert_eq!(PublicUrl::listening_on("[::1]:0".parse().unwrap()).as_str(), "http://[::1]:0");
    }
}
