//! What keeps browsers from being turned against the hub (SPEC §5).
//!
//! Two kinds of authority travel with a request by themselves, without the
//! page that sends it knowing a secret: a cookie, and in dev mode the
//! loopback address the developer's browser sends from. A page on any site
//! can make the browser send a POST (a form, `fetch` with `no-cors`), so:
//!
//! * **Cross-site requests with side effects are refused** when they carry
//!   such authority: a request other than GET, HEAD or OPTIONS that sends a
//!   cookie, or reaches a dev-mode hub, must come from the hub's own origin or
//!   one of `cors.allowed_origins` (browsers always send `Origin` on such
//!   requests). A bearer token in `Authorization` cannot be sent by another
//!   site, so it needs no such check.
//! * **`Host` is checked** where DNS rebinding would pay (a page whose name
//!   is re-pointed at 127.0.0.1 becomes same-origin with the hub): in dev
//!   mode, or when `allowed_hosts` is set, a request must name an IP
//!   address, `localhost` (or a name under it) or one of `allowed_hosts`.
//!   A rebinding page's name is none of these.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::config::Cidr;
use crate::hub::Hub;

/// Behind a reverse proxy in `trusted_proxies`, the client is the last
/// address of `X-Forwarded-For` that is not itself a trusted proxy: per-IP
/// limits, rate limits and dev mode's loopback rule then see the client,
/// not the proxy. A header from anyone else is ignored (it can be forged).
pub(super) async fn client_address(
    State(hub): State<Hub>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    if let Some(peer) = peer {
        let client = client_ip(&hub, peer.ip(), request.headers());
        if client != peer.ip() {
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
        }
    }
    next.run(request).await
}

/// The client behind `peer`: itself, or from `X-Forwarded-For` when `peer`
/// is one of `trusted_proxies` (see [`client_address`]).
pub(crate) fn client_ip(hub: &Hub, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let proxies = &hub.config().trusted_proxies;
    if proxies.is_empty() {
        return peer;
    }
    forwarded_client(peer, headers, proxies).unwrap_or(peer)
}

fn forwarded_client(peer: IpAddr, headers: &HeaderMap, proxies: &[String]) -> Option<IpAddr> {
    let ranges: Vec<Cidr> = proxies.iter().filter_map(|p| Cidr::parse(p)).collect();
    let trusted = |ip: IpAddr| ranges.iter().any(|r| r.contains(ip));
    if !trusted(peer) {
        return None;
    }
    let mut hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = None;
    while let Some(hop) = hops.pop() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Garbage from an untrusted hop: what lies before it is not
            // vouched for.
            break;
        };
        client = Some(ip.to_canonical());
        if !trusted(ip) {
            break;
        }
    }
    client
}

pub(super) async fn browser_guard(
    State(hub): State<Hub>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(refusal) = check(&hub, request.method(), request.uri(), request.headers()) {
        return refusal.into_response();
    }
    next.run(request).await
}

/// The checks of [`browser_guard`], for a request's method, URI and
/// headers.
pub(crate) fn check(
    hub: &Hub,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let config = hub.config();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    if hub.dev_mode() || !config.allowed_hosts.is_empty() {
        // Every `Host` a request names (a second one is no way around it).
        let named = headers
            .get_all(header::HOST)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .chain(uri.authority().map(|a| a.as_str()));
        for host in named {
            if !host_allowed(host, &config.allowed_hosts) {
                return Err(ApiError::ForbiddenHost(host.to_owned()));
            }
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    // A bearer header wins over a cookie (see `Caller`), and no other
    // site can set it.
    let ambient = hub.dev_mode()
        || (!headers.contains_key(header::AUTHORIZATION)
            && sends_cookie(headers, &config.auth.cookie_name));
    if !ambient {
        return Ok(());
    }
    match headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""))
    {
        Some(origin) => {
            if !origin_allowed(origin, host, &config.cors.allowed_origins) {
                return Err(ApiError::ForbiddenOrigin(origin.to_owned()));
            }
        }
        None => {
            let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
            if site == Some("cross-site") {
                return Err(ApiError::ForbiddenOrigin("(cross-site)".into()));
            }
        }
    }
    Ok(())
}

fn sends_cookie(headers: &HeaderMap, cookie_name: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|pair| {
            pair.trim()
                .split_once('=')
                .is_some_and(|(n, _)| n == cookie_name)
        })
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]:port`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            match a.strip_prefix("*.") {
                Some(parent) => name.ends_with(&format!(".{parent}")),
                None => a == name,
            }
        })
}

/// The hub's own origin (its `Host`), or one of `cors.allowed_origins`
/// (`*` is not enough: it never allows credentials).
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let own = origin
        .split_once("://")
        .is_some_and(|(_, authority)| Some(authority) == host);
    own || allowed
        .iter()
        .any(|a| a != "*" && a.eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let allowed = ["push.example.com".to_owned(), "*.example.org".to_owned()];
        for ok in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost",
            "10.0.0.5",
            "push.example.com:443",
            "a.example.org",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example",
            "example.org",
            "push.example.com.evil",
            "localhost.evil",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_read_from_trusted_proxies_only() {
        let proxies = ["127.0.0.1".to_owned(), "10.0.0.0/8".to_owned()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.1.1.1".parse().unwrap(),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // The last hop that is not a proxy, whatever the client wrote first.
        assert_eq!(
            forwarded_client(ip("127.0.0.1"), &headers, &proxies),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(forwarded_client(ip("192.0.2.1"), &headers, &proxies), None);
        headers.insert("x-forwarded-for", "junk, 203.0.113.9".parse().unwrap());
        assert_eq!(
            forwarded_client(ip("127.0.0.1"), &headers, &proxies),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            forwarded_client(ip("127.0.0.1"), &HeaderMap::new(), &proxies),
            None
        );
    }

    #[test]
    fn origins() {
        let allowed = ["https://app.example.com".to_owned(), "*".to_owned()];
        assert!(origin_allowed(
            "http://127.0.0.1:8080",
            Some("127.0.0.1:8080"),
            &[]
        ));
        assert!(origin_allowed("https://app.example.com", None, &allowed));
        assert!(!origin_allowed(
            "https://evil.example",
            Some("127.0.0.1:8080"),
            &allowed
        ));
        assert!(!origin_allowed("null", Some("127.0.0.1:8080"), &allowed));
    }
}
