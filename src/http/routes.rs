//! The route table: every upstream path evalgate serves, with its methods and how it is handled.
//!
//! One place lists every path (reference §4). Anything not listed is refused with 404, so the
//! platform key can only be used for the API the SDK speaks. Templates double as metric labels.
use http::Method;

/// How a matched request is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handling {
    /// Forwarded as-is, streaming both ways.
    Forward,
    /// A submit endpoint (POST): the BYOK judge key is applied to its JSON body.
    Submit,
    /// The failure-analysis playground (POST): playground rate limits, never a BYOK key.
    Playground,
    /// A catalog GET answered from the taxonomy cache.
    Cached,
    /// An Arize task run's status (GET): single-flight, shared by every watcher of the run.
    RunStatus,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    /// The path template, e.g. `/v2/failure-analysis/runs/{id}/status`; also the metric label.
    pub template: &'static str,
    methods: &'static [Method],
    handling: Handling,
}

const GET: &[Method] = &[Method::GET];
const POST: &[Method] = &[Method::POST];
const PATCH: &[Method] = &[Method::PATCH];
const GET_POST: &[Method] = &[Method::GET, Method::POST];
const GET_PATCH_DELETE: &[Method] = &[Method::GET, Method::PATCH, Method::DELETE];

use Handling::{Cached, Forward, Playground, RunStatus, Submit};

/// One table: (template, methods, handling for the first method). `Submit`, `Playground`,
/// `Cached` and `RunStatus` apply to POST, POST, GET and GET respectively; other methods on the
/// same template are forwarded.
type Table = &'static [(&'static str, &'static [Method], Handling)];

/// The Arize tasks API (arize-tasks-api.md §1 and §1.1), on the Arize listener.
pub(crate) const ARIZE: Table = &[
    ("/v2/tasks", GET_POST, Forward),
    ("/v2/tasks/{id}", GET_PATCH_DELETE, Forward),
    ("/v2/tasks/{id}/trigger", POST, Forward),
    ("/v2/tasks/{id}/runs", GET, Forward),
    ("/v2/task-runs/{id}", GET, RunStatus),
    ("/v2/task-runs/{id}/cancel", POST, Forward),
    // Name resolution (§1.1)
    ("/v2/spaces", GET, Forward),
    ("/v2/projects", GET, Forward),
    ("/v2/datasets", GET, Forward),
];

/// The Valiqor v2 API (valiqor-api.md §4), on the API listener.
pub(crate) const VALIQOR: Table = &[
    // Unified client, auth (§4.1)
    ("/v2/projects", GET_POST, Forward),
    ("/v2/projects/{id}", GET, Forward),
    ("/v2/auth/usage", GET, Forward),
    ("/v2/auth/validate", POST, Forward),
    // Failure analysis (§4.2)
    ("/v2/failure-analysis/analyze", POST, Submit),
    ("/v2/failure-analysis/playground", POST, Playground),
    ("/v2/failure-analysis/runs", GET, Forward),
    ("/v2/failure-analysis/runs/count", GET, Forward),
    ("/v2/failure-analysis/runs/{id}", GET, Forward),
    ("/v2/failure-analysis/runs/{id}/status", GET, Forward),
    ("/v2/failure-analysis/runs/{id}/cancel", POST, Forward),
    ("/v2/failure-analysis/runs/{id}/inputs", GET, Forward),
    ("/v2/failure-analysis/runs/{id}/tags", GET, Forward),
    ("/v2/failure-analysis/tags/{id}", PATCH, Forward),
    ("/v2/failure-analysis/taxonomy", GET, Cached),
    ("/v2/failure-analysis/taxonomy/subcategories", GET, Cached),
    ("/v2/failure-analysis/buckets/{id}", GET, Cached),
    ("/v2/failure-analysis/insights", GET, Forward),
    ("/v2/failure-analysis/insights/trends", GET, Forward),
    ("/v2/failure-analysis/insights/security", GET, Forward),
    ("/v2/failure-analysis/projects", GET, Forward),
    // Eval (§4.3); the SDK posts to `/v2/evaluate/` with the trailing slash
    ("/v2/evaluate/", POST, Submit),
    ("/v2/evaluate", POST, Submit),
    ("/v2/evaluate/trace", POST, Submit),
    ("/v2/evaluate/jobs/{id}/status", GET, Forward),
    ("/v2/evaluate/jobs/{id}/cancel", POST, Forward),
    ("/v2/evaluate/runs/{id}", GET, Forward),
    ("/v2/evaluate/runs/{id}/metrics", GET, Forward),
    ("/v2/evaluate/runs/{id}/items", GET, Forward),
    ("/v2/evaluate/items/{id}", GET, Forward),
    ("/v2/evaluate/projects/{id}/stats", GET, Forward),
    ("/v2/evaluate/trends", GET, Forward),
    ("/v2/evaluate/compare", GET, Forward),
    ("/v2/admin/projects", GET_POST, Forward),
    ("/v2/admin/projects/{id}/metrics", GET_POST, Forward),
    ("/v2/admin/metric-templates", GET, Cached),
    // Security and red team (§4.4)
    ("/v2/security/vulnerabilities", GET, Cached),
    ("/v2/security/attack-vectors", GET, Cached),
    ("/v2/security/audit", POST, Submit),
    ("/v2/security/audit-trace", POST, Submit),
    ("/v2/security/redteam", POST, Submit),
    ("/v2/security/jobs/{id}/status", GET, Forward),
    ("/v2/security/jobs/{id}/cancel", POST, Forward),
    ("/v2/security/audit/batches", GET, Forward),
    ("/v2/security/audit/batches/{id}", GET, Forward),
    ("/v2/security/audit/batches/{id}/items", GET, Forward),
    ("/v2/security/audit/items/{id}", GET, Forward),
    ("/v2/security/redteam/runs", GET, Forward),
    ("/v2/security/redteam/runs/{id}", GET, Forward),
    ("/v2/security/redteam/runs/{id}/attacks", GET, Forward),
    (
        "/v2/security/redteam/runs/{id}/submit-responses",
        POST,
        Forward,
    ),
    ("/v2/security/redteam/attacks/{id}", GET, Forward),
    ("/v2/security/redteam/compare", GET, Forward),
    ("/v2/security/projects/{id}/vulnerabilities", GET, Forward),
    (
        "/v2/security/projects/{id}/vulnerabilities/{item}",
        PATCH,
        Forward,
    ),
    ("/v2/security/projects/{id}/attack-vectors", GET, Forward),
    (
        "/v2/security/projects/{id}/attack-vectors/{item}",
        PATCH,
        Forward,
    ),
    // Trace read-back (§4.5)
    ("/api/v1/traces", GET, Forward),
    ("/api/v1/traces/{id}", GET, Forward),
    ("/api/v1/traces/{id}/summary", GET, Forward),
    ("/api/v1/traces/{id}/messages", GET, Forward),
    ("/api/v1/traces/{id}/spans", GET, Forward),
    ("/api/v1/traces/{id}/full", GET, Forward),
    ("/api/v1/traces/{id}/eval_steps", GET, Forward),
];

/// What a request path and method resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    Found(&'static str, Handling),
    MethodNotAllowed(&'static str),
    NotFound,
    /// A segment that is a dot segment in any spelling, or holds NUL or a backslash.
    BadPath,
}

/// The compiled route table.
#[derive(Debug)]
pub(crate) struct RouteTable(matchit::Router<Route>);

// === impl RouteTable ===

impl RouteTable {
    pub(crate) fn new(table: Table) -> Self {
        let mut router = matchit::Router::new();
        for &(template, methods, handling) in table {
            if let Err(error) = router.insert(
                template,
                Route {
                    template,
                    methods,
                    handling,
                },
            ) {
                // The table is a constant; `every_template_compiles` proves this never happens.
                tracing::error!(%error, template, "route table entry rejected");
            }
        }
        Self(router)
    }

    pub(crate) fn resolve(&self, method: &Method, path: &str) -> Resolved {
        // A dot segment in any spelling (`..`, `%2e%2e`, `.%2E`) or a backslash would be
        // normalised away by the URL parser after matching, sending the platform key to a path
        // the table does not list; NUL has no business in a path: such a path is refused.
        if path.split('/').any(is_bad_segment) {
            return Resolved::BadPath;
        }
        let Ok(matched) = self.0.at(path) else {
            return Resolved::NotFound;
        };
        let route = matched.value;
        if !route.methods.contains(method) {
            return Resolved::MethodNotAllowed(route.template);
        }
        let handling = match route.handling {
            Submit | Playground if *method == Method::POST => route.handling,
            Cached | RunStatus if *method == Method::GET => route.handling,
            _ => Forward,
        };
        Resolved::Found(route.template, handling)
    }
}

/// `.` or `..` with any of the dots percent-encoded (`%2e`, `%2E`); or a segment holding NUL
/// (`%00`) or a backslash, raw or encoded (URL parsers read `\` as `/` in http URLs).
fn is_bad_segment(segment: &str) -> bool {
    // Nearly every segment has none of these: no allocation on the request path for them.
    if !segment
        .bytes()
        .any(|b| matches!(b, b'%' | b'.' | b'\\' | 0))
    {
        return false;
    }
    let lower = segment.to_ascii_lowercase();
    if lower.contains("%00") || lower.contains("%5c") || segment.contains(['\\', '\0']) {
        return true;
    }
    let decoded = lower.replace("%2e", ".");
    decoded == "." || decoded == ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every template, every parameter replaced by a hostile id: what the table admits reaches
    /// the upstream with exactly the segments it was admitted with (the URL parser normalises
    /// nothing away), and what it would not keep intact is refused.
    #[test]
    fn admitted_paths_reach_the_upstream_segment_for_segment() {
        let config = crate::config::Config::for_tests("https://up.example/prefix/", "k", |_| {});
        let client = crate::upstream::UpstreamClient::new(&config.valiqor).unwrap();
        let hostile = [
            "a%2Fb",
            "a%2Bb%3D%3D",
            "%252e%252e",
            "..%2F..%2Fadmin",
            "%2e%2e",
            ".%2E",
            "a%00b",
            "a%5Cb",
            "...",
            "%20x%09",
            "a;b=c",
            "%23frag",
        ];
        let mut admitted = 0;
        let tables = [
            (RouteTable::new(VALIQOR), VALIQOR),
            (RouteTable::new(ARIZE), ARIZE),
        ];
        for (table, &(template, methods, _)) in tables
            .iter()
            .flat_map(|(table, list)| list.iter().map(move |route| (table, route)))
        {
            for id in hostile {
                let path = template
                    .split('/')
                    .map(|seg| if seg.starts_with('{') { id } else { seg })
                    .collect::<Vec<_>>()
                    .join("/");
                let Some(method) = methods.first() else {
                    continue;
                };
                match table.resolve(method, &path) {
                    Resolved::Found(..) => {
                        admitted += 1;
                        let url = reqwest::Url::parse(&client.url(&path, None)).unwrap();
                        assert_eq!(url.path(), format!("/prefix{path}"), "{template} with {id}");
                        assert_eq!(url.host_str(), Some("up.example"));
                    }
                    Resolved::BadPath | Resolved::NotFound | Resolved::MethodNotAllowed(_) => {}
                }
            }
        }
        assert!(
            admitted > VALIQOR.len() + ARIZE.len(),
            "hostile ids were admitted {admitted} times"
        );
    }

    #[test]
    fn dot_segments_in_any_spelling_are_not_served() {
        let table = RouteTable::new(VALIQOR);
        for path in [
            "/v2/admin/projects/%2e%2e/metrics",
            "/v2/admin/projects/%2E%2e/metrics",
            "/v2/admin/projects/.%2E/metrics",
            "/v2/admin/projects/../metrics",
            "/v2/failure-analysis/runs/%2e/status",
            "/v2/failure-analysis/runs/..\\x/status",
            "/v2/failure-analysis/runs/a%00b/status",
            "/v2/failure-analysis/runs/a%5Cb/status",
        ] {
            assert!(
                matches!(table.resolve(&Method::POST, path), Resolved::BadPath)
                    && matches!(table.resolve(&Method::GET, path), Resolved::BadPath),
                "{path}"
            );
        }
        // Dots inside an id are fine; only whole dot segments are refused.
        assert!(matches!(
            table.resolve(&Method::GET, "/v2/failure-analysis/runs/run.1..2/status"),
            Resolved::Found(..)
        ));
    }

    #[test]
    fn every_template_compiles_and_resolves_to_itself() {
        for list in [VALIQOR, ARIZE] {
            let table = RouteTable::new(list);
            for &(template, methods, _) in list {
                let path = template.replace("{id}", "abc_123").replace("{item}", "x-9");
                match table.resolve(&methods[0], &path) {
                    Resolved::Found(t, _) => assert_eq!(t, template, "{path}"),
                    other => panic!("{path} resolved to {other:?}"),
                }
            }
        }
        // Only a task run's GET is single-flight; its cancel is forwarded.
        let arize = RouteTable::new(ARIZE);
        assert_eq!(
            arize.resolve(&Method::GET, "/v2/task-runs/VGFz%2Fvg%3D%3D"),
            Resolved::Found("/v2/task-runs/{id}", RunStatus)
        );
        assert_eq!(
            arize.resolve(&Method::POST, "/v2/task-runs/VGFz%2Fvg%3D%3D/cancel"),
            Resolved::Found("/v2/task-runs/{id}/cancel", Forward)
        );
        assert_eq!(
            arize.resolve(&Method::GET, "/v2/webhooks"),
            Resolved::NotFound
        );
    }

    #[test]
    fn handling_depends_on_path_and_method() {
        let table = RouteTable::new(VALIQOR);
        assert_eq!(
            table.resolve(&Method::POST, "/v2/evaluate/"),
            Resolved::Found("/v2/evaluate/", Submit)
        );
        assert_eq!(
            table.resolve(&Method::GET, "/v2/failure-analysis/runs/count"),
            Resolved::Found("/v2/failure-analysis/runs/count", Forward)
        );
        assert_eq!(
            table.resolve(&Method::GET, "/v2/failure-analysis/buckets/b1"),
            Resolved::Found("/v2/failure-analysis/buckets/{id}", Cached)
        );
        assert_eq!(
            table.resolve(&Method::DELETE, "/v2/projects/p1"),
            Resolved::MethodNotAllowed("/v2/projects/{id}")
        );
        assert_eq!(
            table.resolve(&Method::GET, "/v2/auth/cli/keys"),
            Resolved::NotFound
        );
        assert_eq!(table.resolve(&Method::GET, "/"), Resolved::NotFound);
    }
}
