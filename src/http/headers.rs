//! Header hygiene between caller, evalgate and upstream: hop-by-hop and credential headers never cross.
use http::{
    HeaderMap, HeaderName,
    header::{
        ACCEPT_ENCODING, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, COOKIE, HOST,
        PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING,
        UPGRADE,
    },
};

/// Request-id header, generated or propagated, forwarded upstream and echoed to the caller.
pub(crate) use crate::types::REQUEST_ID;
/// Cache outcome on cached routes: `hit`, `miss` or `stale`.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("x-evalgate-cache");

const HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName, connection_listed: &[String]) -> bool {
    HOP_BY_HOP.contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
        || connection_listed
            .iter()
            .any(|listed| listed == name.as_str())
}

/// Any header that may carry a caller credential. Matching by name pattern as well as by the
/// well-known names means a custom `X-Acme-Api-Key` is dropped too.
fn is_credential(name: &HeaderName) -> bool {
    let n = name.as_str();
    *name == AUTHORIZATION
        || *name == PROXY_AUTHORIZATION
        || *name == COOKIE
        || n.contains("api-key")
        || n.contains("apikey")
        || n.contains("token")
        || n.contains("secret")
        || n.contains("password")
        || n.contains("auth")
        || n.contains("session")
}

/// Names listed in the `Connection` header are hop-by-hop too (RFC 9110 §7.6.1).
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The caller's headers as they may go upstream: no hop-by-hop, no credentials, no `Host`,
/// no evalgate control headers. `keep_length` keeps `Content-Length` when the body is unchanged.
pub(crate) fn to_upstream(headers: &HeaderMap, keep_length: bool) -> HeaderMap {
    let listed = connection_listed(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if is_hop_by_hop(name, &listed)
            || is_credential(name)
            || *name == HOST
            || (*name == CONTENT_LENGTH && !keep_length)
            || name.as_str().starts_with("x-evalgate-")
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Same as [`to_upstream`] for a request whose answer will be cached: also asks for an
/// identity-encoded body so any later caller can be served from the cache.
pub(crate) fn to_upstream_for_cache(headers: &HeaderMap) -> HeaderMap {
    let mut out = to_upstream(headers, false);
    out.remove(ACCEPT_ENCODING);
    out
}

/// The upstream's response headers as they may go back to the caller.
pub(crate) fn to_caller(headers: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if is_hop_by_hop(name, &listed) || *name == SET_COOKIE {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn credentials_and_hop_by_hop_never_go_upstream() {
        let headers = map(&[
            ("authorization", "Bearer vq_caller"),
            ("x-api-key", "k"),
            ("x-acme-token", "t"),
            ("cookie", "s=1"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "evalgate:8080"),
            ("content-length", "10"),
            ("content-type", "application/json"),
            ("user-agent", "valiqor-sdk/1.0.0 (failure_analysis)"),
            ("x-request-id", "r1"),
            ("x-evalgate-webhook-secret", "s"),
        ]);
        let out = to_upstream(&headers, true);
        let names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "content-length",
                "content-type",
                "user-agent",
                "x-request-id"
            ]
        );
        assert!(to_upstream(&headers, false).get(CONTENT_LENGTH).is_none());
    }

    #[test]
    fn response_hop_by_hop_is_dropped_and_encoding_kept() {
        let headers = map(&[
            ("connection", "close"),
            ("content-encoding", "gzip"),
            ("content-type", "application/json"),
            ("set-cookie", "a=b"),
        ]);
        let out = to_caller(&headers);
        let names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-encoding", "content-type"]);
    }
}
