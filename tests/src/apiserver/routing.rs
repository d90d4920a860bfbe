//! HTTP: the accept loop, connections, request routing, the list handler and error bodies.

use super::*;

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

pub(super) async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
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

pub(super) enum Route<'a> {
    Collection(Option<&'a str>),
    Pod(&'a str, &'a str),
    Object(objects::Route<'a>),
    Version,
    Unknown,
}

pub(super) fn route(path: &str) -> Route<'_> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    match segments.as_slice() {
        ["api", "v1", "pods"] => Route::Collection(None),
        ["api", "v1", "namespaces", ns, "pods"] if !ns.is_empty() => Route::Collection(Some(ns)),
        ["api", "v1", "namespaces", ns, "pods", name] if !ns.is_empty() && !name.is_empty() => {
            Route::Pod(ns, name)
        }
        ["version"] => Route::Version,
        _ => objects::route(&segments).map_or(Route::Unknown, Route::Object),
    }
}

pub(super) async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let uri = req.uri().clone();
    {
        let mut st = shared.lock();
        if st.log.len() < LOG_CAP {
            st.log.push(format!("{} {uri}", req.method()));
        }
    }
    let route = route(uri.path());
    let params = parse_query(uri.query().unwrap_or("")).and_then(|q| Params::parse(&q));
    if let (Route::Collection(_), Ok(p)) = (&route, &params) {
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
    if req.method() != Method::GET {
        let msg = format!("the server does not allow this method: {}", req.method());
        return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &msg);
    }
    let params = match params {
        Ok(p) => p,
        Err(msg) => return bad_request(&msg),
    };
    match route {
        Route::Collection(ns) => match Selector::parse(ns, &params) {
            Ok(sel) if params.watch => start_watch(shared, sel, &params),
            Ok(sel) => list(shared, &sel),
            Err(msg) => bad_request(&msg),
        },
        Route::Pod(ns, name) => {
            let pod = shared
                .lock()
                .pods
                .get(&(ns.to_owned(), name.to_owned()))
                .cloned();
            match pod.map(|p| serde_json::to_value(&*p)) {
                Some(Ok(v)) => json_response(StatusCode::OK, &v),
                Some(Err(e)) => internal_error(&e),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("pods \"{name}\" not found"),
                ),
            }
        }
        Route::Object(r) => {
            let st = shared.lock();
            match st.objects.serve(&r, st.rv) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(msg) => status(StatusCode::NOT_FOUND, "NotFound", &msg),
            }
        }
        Route::Version => json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sim",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.0",
                "compiler": "gc", "platform": "linux/amd64"}),
        ),
        Route::Unknown => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

pub(super) fn list(shared: &Shared, sel: &Selector) -> Response<Body> {
    // Every list is served from the current state in one page (limit/continue are
    // accepted and ignored): "at least as new as" any given version is always
    // satisfied, and tests do not need historical snapshots.
    let st = shared.lock();
    let mut items = Vec::new();
    for pod in st.pods.values().filter(|pod| sel.matches(pod)) {
        match serde_json::to_value(&**pod) {
            Ok(mut v) => {
                // The real server omits apiVersion/kind on list items; so do we, so
                // that clients relying on them would break here as they would there.
                if let Value::Object(map) = &mut v {
                    map.remove("apiVersion");
                    map.remove("kind");
                }
                items.push(v);
            }
            Err(e) => return internal_error(&e),
        }
    }
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
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

pub(super) fn bad_request(message: &str) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

pub(super) fn internal_error(e: &serde_json::Error) -> Response<Body> {
    let msg = format!("serialization failed: {e}");
    status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &msg)
}

pub(super) fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
