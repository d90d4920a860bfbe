//! HTTP: the accept loop, connections, request routing, list and get, /version and the
//! error bodies. Paths are resolved against the kinds table ([`super::kinds`]), so every
//! kind gets the real server's URL layout: `/api/v1/{plural}`,
//! `/api/v1/namespaces/{ns}/{plural}[/{name}]`, `/api/v1/{cluster-scoped plural}/{name}`,
//! and the same under `/apis/{group}/{version}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};

use super::discovery::{self, Document};
use super::kinds::Kind;
use super::selectors::{Params, Selector, parse_query};
use super::watch::start_watch;
use super::{LOG_CAP, Shared};

pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(super) async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut changed = shared.changed.subscribe();
    loop {
        if shared.lock().shutdown {
            return;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning on the error.
                    eprintln!("apiserver: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            res = changed.changed() => if res.is_err() { return },
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = result {
        // Clients hanging up (often mid-watch) are routine; only log the unexpected.
        let io_kind = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind);
        let routine = e.is_incomplete_message()
            || e.is_canceled()
            || e.is_closed()
            || e.is_parse()
            || matches!(
                io_kind,
                Some(std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
            );
        if !routine {
            eprintln!("apiserver: connection error: {e}");
        }
    }
}

/// What a request path asks for.
#[derive(Debug, PartialEq)]
pub(super) enum Route<'a> {
    /// List or watch; `namespace` None means all namespaces (or a cluster-scoped kind).
    Collection {
        kind: Kind,
        namespace: Option<&'a str>,
    },
    /// Get one object; `namespace` is None for cluster-scoped kinds.
    Object {
        kind: Kind,
        namespace: Option<&'a str>,
        name: &'a str,
    },
    /// `pods/{name}/portforward`: a WebSocket upgrade ([`super::portforward`]).
    PortForward {
        namespace: &'a str,
        name: &'a str,
    },
    Discovery(Document<'a>),
    Version,
    Unknown,
}

pub(super) fn route(path: &str) -> Route<'_> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Route::Unknown;
    }
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::Discovery(Document::CoreVersions),
        ["apis"] => return Route::Discovery(Document::Groups),
        ["apis", group] if discovery::is_group(group) => {
            return Route::Discovery(Document::Group(group));
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::Unknown,
    };
    // `namespaced`: None matches either scope (`/api/v1/pods` lists all namespaces).
    let find = |plural: &str, namespaced: Option<bool>| {
        Kind::ALL.into_iter().find(|k| {
            let i = k.info();
            (i.group, i.version, i.plural) == (group, version, plural)
                && namespaced.is_none_or(|n| n == i.namespaced)
        })
    };
    let found = match rest {
        [] if discovery::is_group_version(group, version) => {
            return Route::Discovery(Document::Resources { group, version });
        }
        [plural] => find(plural, None).map(|kind| Route::Collection {
            kind,
            namespace: None,
        }),
        [plural, name] => find(plural, Some(false)).map(|kind| Route::Object {
            kind,
            namespace: None,
            name,
        }),
        ["namespaces", ns, plural] => find(plural, Some(true)).map(|kind| Route::Collection {
            kind,
            namespace: Some(ns),
        }),
        ["namespaces", ns, "pods", name, "portforward"] if (group, version) == ("", "v1") => {
            Some(Route::PortForward {
                namespace: ns,
                name,
            })
        }
        ["namespaces", ns, plural, name] => find(plural, Some(true)).map(|kind| Route::Object {
            kind,
            namespace: Some(ns),
            name,
        }),
        _ => None,
    };
    found.unwrap_or(Route::Unknown)
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let uri = req.uri().clone();
    {
        let mut st = shared.lock();
        if st.log.len() < LOG_CAP {
            st.log.push(format!("{} {uri}", req.method()));
        }
    }
    // Impersonation, as the real server applies it (the stand-in lets anyone impersonate):
    // the request is made as that user, whom RBAC's messages name.
    let header = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let user = header("impersonate-user").into_iter().next();
    if let Some(user) = &user {
        let groups = header("impersonate-group");
        let mut st = shared.lock();
        if st.impersonations.len() < LOG_CAP {
            st.impersonations.push((user.clone(), groups));
        }
    }
    let user = user.unwrap_or_else(|| super::SIM_USER.to_owned());
    let route = route(uri.path());
    let params = parse_query(uri.query().unwrap_or("")).and_then(|q| Params::parse(&q));
    if let (Route::Collection { .. }, Ok(p)) = (&route, &params) {
        let counter = if p.watch {
            &shared.watches
        } else {
            &shared.lists
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let latency = shared.lock().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if !shared.lock().available {
        let msg = "the server is currently unable to handle the request";
        return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", msg);
    }
    if let Some(denied) = forbidden(shared, &route, &params, &user) {
        return denied;
    }
    if let Route::PortForward { namespace, name } = route {
        // GET for WebSocket clients (kube-rs, kubectl >= 1.30); POST is SPDY, not served.
        if req.method() != Method::GET {
            let msg = "port forwarding is served over WebSocket (GET with Upgrade) only";
            return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", msg);
        }
        let query = parse_query(uri.query().unwrap_or("")).unwrap_or_default();
        return super::portforward::start(shared, req, namespace, name, &query);
    }
    if req.method() != Method::GET {
        let msg = format!("the server does not allow this method: {}", req.method());
        return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &msg);
    }
    let params = match params {
        Ok(p) => p,
        Err(msg) => return bad_request(&msg),
    };
    match route {
        Route::Collection { kind, namespace } => match Selector::parse(kind, namespace, &params) {
            Ok(sel) if params.watch => start_watch(shared, sel, &params),
            Ok(sel) => list(shared, &sel),
            Err(msg) => bad_request(&msg),
        },
        Route::Object {
            kind,
            namespace,
            name,
        } => {
            let st = shared.lock();
            match st.store.get(kind, namespace.unwrap_or_default(), name) {
                Some(object) => json_response(StatusCode::OK, object.json()),
                None => {
                    let msg = format!("{} \"{name}\" not found", kind.resource_name());
                    status(StatusCode::NOT_FOUND, "NotFound", &msg)
                }
            }
        }
        Route::Discovery(doc) => {
            // Aggregated discovery is what the client asks for first when it can read it
            // (kube's `Discovery::run_aggregated`, kubectl); the real server then answers
            // in that format, otherwise in the per-group one.
            let aggregated = req
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("as=APIGroupDiscoveryList"));
            match discovery::serve(&doc, aggregated, shared.addr) {
                Some((body, content_type)) => {
                    let mut resp = json_response(StatusCode::OK, &body);
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                    resp
                }
                None => not_found(),
            }
        }
        Route::Version => json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sim",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.0",
                "compiler": "gc", "platform": "linux/amd64"}),
        ),
        Route::PortForward { .. } | Route::Unknown => not_found(),
    }
}

/// The 403 the real server's RBAC gives when [`super::ApiServer::forbid`] named the resource
/// ("pods", "pods/portforward", "events", ...), with its message.
fn forbidden(
    shared: &Shared,
    route: &Route<'_>,
    params: &Result<Params, String>,
    user: &str,
) -> Option<Response<Body>> {
    let (resource, group, verb, namespace, name) = match route {
        Route::Collection { kind, namespace } => {
            let watch = params.as_ref().is_ok_and(|p| p.watch);
            let verb = if watch { "watch" } else { "list" };
            (
                kind.info().plural.to_owned(),
                kind.info().group,
                verb,
                *namespace,
                None,
            )
        }
        Route::Object {
            kind,
            namespace,
            name,
        } => (
            kind.info().plural.to_owned(),
            kind.info().group,
            "get",
            *namespace,
            Some(*name),
        ),
        Route::PortForward { namespace, name } => (
            "pods/portforward".to_owned(),
            "",
            "create",
            Some(*namespace),
            Some(*name),
        ),
        Route::Discovery(_) | Route::Version | Route::Unknown => return None,
    };
    if !shared.lock().forbidden.contains(&resource) {
        return None;
    }
    let top = resource.split('/').next().unwrap_or_default();
    let subject = match name {
        Some(n) => format!("{top} \"{n}\""),
        None => top.to_owned(),
    };
    let scope = match namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_owned(),
    };
    let msg = format!(
        "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\"{scope}"
    );
    Some(status(StatusCode::FORBIDDEN, "Forbidden", &msg))
}

fn list(shared: &Shared, sel: &Selector) -> Response<Body> {
    // Every list is served from the current state in one page (limit/continue are
    // accepted and ignored): "at least as new as" any given version is always
    // satisfied, and tests do not need historical snapshots.
    let st = shared.lock();
    let items: Vec<Value> = st
        .store
        .list(sel.kind)
        .filter(|object| sel.matches(object))
        .map(|object| object.list_item())
        .collect();
    let info = sel.kind.info();
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": info.api_version, "kind": info.list_kind,
            "metadata": {"resourceVersion": st.store.resource_version().to_string()},
            "items": items}),
    )
}

/// The real server's error body: a `v1.Status` with status Failure.
pub(super) fn status_json(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()})
}

pub(super) fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_json(code, reason, message))
}

fn bad_request(message: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn not_found() -> Response<Body> {
    let msg = "the server could not find the requested resource";
    status(StatusCode::NOT_FOUND, "NotFound", msg)
}

pub(super) fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
