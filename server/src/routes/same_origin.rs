//! Cross-site request defence for server functions: a POST to `/rpc/…` whose `Origin` (or,
//! without one, `Referer`) names another site is refused with 403 before it runs. The session
//! cookie is `SameSite=Lax`, which already keeps it off cross-site POSTs in current browsers;
//! this also covers sign-in (a forged sign-in needs no cookie) and browsers without SameSite.
//! Requests with neither header (API clients, curl) are let through: they are not a browser
//! acting for someone else.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use services::Services;

use crate::error::ApiError;

pub async fn require_same_origin(State(services): State<Services>, req: Request, next: Next) -> Response {
    if req.method() == Method::POST
        && req.uri().path().starts_with("/rpc/")
        && !same_origin(req.headers(), services.settings.public_url.as_str())
    {
        tracing::warn!(
            path = req.uri().path(),
            "cross-site server function call refused (if people reach this server under a name \
             other than KEYMETER_PUBLIC_URL's, set it to that name)"
        );
        return ApiError::new(StatusCode::FORBIDDEN, "cross_site_request", "this request came from another site")
            .into_response();
    }
    next.run(req).await
}

/// Whether the request's origin, if it names one, is this server: the public URL a proxy serves
/// it under (scheme included: a page of `http://host` must not act on `https://host`), or the
/// host addressed in `Host` when that is not the public one and names an address or
/// `localhost` (reached directly, e.g. on loopback). A domain name there is refused: with DNS
/// rebinding a page of `evil.example` reaches a server on 127.0.0.1 with `Host` and `Origin`
/// both `evil.example:3000`, and could sign in with `make run`'s demo credentials.
fn same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    let claimed = headers.get(header::ORIGIN).or_else(|| headers.get(header::REFERER));
    let Some(claimed) = claimed else { return true };
    let Some((scheme, claimed)) = claimed.to_str().ok().and_then(origin) else { return false };
    let Some((public_scheme, public_authority)) = origin(public_url) else { return false };
    if public_authority.eq_ignore_ascii_case(claimed) {
        return scheme == public_scheme;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|h| h.eq_ignore_ascii_case(claimed) && names_no_domain(h))
}

/// Whether a `Host` (`name[:port]`) is an IP address or `localhost`: nothing a DNS answer of
/// someone else's decides.
fn names_no_domain(host: &str) -> bool {
    if host.starts_with('[') {
        // An IPv6 literal, `[…]` or `[…]:port`.
        return host.split_once(']').is_some_and(|(ip, _)| ip[1..].parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = host.split_once(':').map_or(host, |(name, _)| name);
    name.parse::<std::net::Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

/// The scheme (`http` or `https`) and `host[:port]` of an absolute http(s) URL; none for
/// anything else (including `null`).
fn origin(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = ["http", "https"].into_iter().find(|s| s.eq_ignore_ascii_case(scheme))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    (!authority.is_empty() && !authority.contains('@')).then_some((scheme, authority))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (n.clone(), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn only_this_sites_origin_or_none_passes() {
        let public = "https://keymeter.example.com";
        let host = (header::HOST, "127.0.0.1:3000");
        assert!(same_origin(&headers(std::slice::from_ref(&host)), public));
        assert!(same_origin(&headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:3000")]), public));
        assert!(same_origin(&headers(&[host.clone(), (header::ORIGIN, "https://keymeter.example.com")]), public));
        assert!(same_origin(
            &headers(&[host.clone(), (header::REFERER, "http://127.0.0.1:3000/login?next=/x")]),
            public
        ));
        for evil in ["http://evil.example", "null", "http://127.0.0.1:3000@evil.example", "http://127.0.0.1:30001"] {
            let h = headers(&[host.clone(), (header::ORIGIN, evil)]);
            assert!(!same_origin(&h, public), "{evil}");
        }
        assert!(!same_origin(&headers(&[host.clone(), (header::REFERER, "https://evil.example/page")]), public));
    }

    #[test]
    fn a_host_reached_directly_must_be_an_address_or_localhost() {
        let public = "http://127.0.0.1:3000";
        for direct in ["localhost:3000", "LOCALHOST:3000", "10.0.0.5:3000", "[::1]:3000", "10.0.0.5"] {
            let origin = format!("http://{direct}");
            let h: HeaderMap = [(header::HOST, direct.parse().unwrap()), (header::ORIGIN, origin.parse().unwrap())]
                .into_iter()
                .collect();
            assert!(same_origin(&h, public), "{direct}");
        }
        // DNS rebinding: a name the attacker's DNS points at this server.
        for rebound in ["evil.example:3000", "localhost.evil.example:3000", "[::1.evil]:3000"] {
            let origin = format!("http://{rebound}");
            let h: HeaderMap = [(header::HOST, rebound.parse().unwrap()), (header::ORIGIN, origin.parse().unwrap())]
                .into_iter()
                .collect();
            assert!(!same_origin(&h, public), "{rebound}");
        }
        // The public URL's own name is this server, whatever it is.
        let h = headers(&[(header::HOST, "keymeter.example.com"), (header::ORIGIN, "https://keymeter.example.com")]);
        assert!(same_origin(&h, "https://keymeter.example.com"));
    }

    #[test]
    fn the_same_host_under_another_scheme_is_another_origin() {
        let public = "https://keymeter.example.com";
        let host = (header::HOST, "keymeter.example.com");
        assert!(same_origin(&headers(&[host.clone(), (header::ORIGIN, "https://keymeter.example.com")]), public));
        assert!(same_origin(&headers(&[host.clone(), (header::ORIGIN, "HTTPS://keymeter.example.com")]), public));
        for other in ["http://keymeter.example.com", "ftp://keymeter.example.com"] {
            assert!(!same_origin(&headers(&[host.clone(), (header::ORIGIN, other)]), public), "{other}");
        }
        let referer = (header::REFERER, "http://keymeter.example.com/dashboard");
        assert!(!same_origin(&headers(&[host.clone(), referer]), public));
        // Served over plain HTTP (development): an https page of that host is another origin.
        let local = (header::HOST, "127.0.0.1:3000");
        let h = headers(&[local, (header::ORIGIN, "https://127.0.0.1:3000")]);
        assert!(!same_origin(&h, "http://127.0.0.1:3000"));
    }
}
