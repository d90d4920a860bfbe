//! Watch streams: a cursor into the change history of one kind, bookmarks, timeouts, 410 Gone,
//! and the ends the Rust API forces (outage, [`super::ApiServer::close_watches`],
//! [`super::ApiServer::expire_watches`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::routing::{Body, status, status_json};
use super::selectors::{Params, Selector};
use super::store::Object;
use super::{BOOKMARK_EVERY, DEFAULT_WATCH_TIMEOUT, Shared};

pub(super) fn start_watch(shared: &Arc<Shared>, sel: Selector, p: &Params) -> Response<Body> {
    let initial = match p.send_initial_events {
        Some(true) if p.rv_match.as_deref() != Some("NotOlderThan") || !p.bookmarks => {
            // Same rule (and status) as the real server's validation.
            let msg = "sendInitialEvents requires allowWatchBookmarks=true and \
                       resourceVersionMatch=NotOlderThan";
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg);
        }
        Some(explicit) => explicit,
        // Unset or "0": the watch starts with synthetic ADDED events for current state.
        None => p.rv.is_none(),
    };
    // Subscribe before reading state so no change between the two is missed.
    let changed = shared.changed.subscribe();
    let st = shared.lock();
    let mut w = WatchStream {
        shared: Arc::clone(shared),
        changed,
        sel,
        cursor: st.store.resource_version(),
        closes: st.closes,
        expiries: st.expiries,
        pending: VecDeque::new(),
        finished: false,
        bookmarks: p.bookmarks,
        next_bookmark: Instant::now() + BOOKMARK_EVERY,
        deadline: Instant::now() + p.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT),
    };
    if initial {
        for object in st.store.list(w.sel.kind) {
            if w.sel.matches(object) {
                w.push_event("ADDED", object);
            }
        }
        if p.send_initial_events == Some(true) {
            w.push_bookmark(true);
        }
    } else if let Some(from) = p.rv {
        if from < st.store.compacted() {
            w.push_too_old(from, st.store.compacted());
        } else {
            w.cursor = from;
        }
    }
    drop(st);
    let stream = futures_util::stream::unfold(w, |mut w| async move {
        let chunk = w.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), w))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// One open watch: a cursor into the history plus lines waiting to be written.
struct WatchStream {
    shared: Arc<Shared>,
    changed: watch::Receiver<()>,
    sel: Selector,
    /// Every change with rv <= cursor has been considered for this watch.
    cursor: u64,
    /// `State::closes` and `State::expiries` when the watch started: a change means
    /// the Rust API ended every watch open at the time.
    closes: u64,
    expiries: u64,
    pending: VecDeque<Bytes>,
    /// Write what is pending, then end the stream.
    finished: bool,
    bookmarks: bool,
    next_bookmark: Instant,
    deadline: Instant,
}

impl WatchStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if self.finished {
                return None;
            }
            self.changed.borrow_and_update();
            self.collect();
            if !self.pending.is_empty() || self.finished {
                continue;
            }
            tokio::select! {
                res = self.changed.changed() => self.finished |= res.is_err(),
                () = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    self.push_bookmark(false);
                    self.next_bookmark = Instant::now() + BOOKMARK_EVERY;
                }
                () = tokio::time::sleep_until(self.deadline) => self.finished = true,
            }
        }
    }

    /// Queues the events for every change after the cursor.
    fn collect(&mut self) {
        let shared = Arc::clone(&self.shared);
        let st = shared.lock();
        if st.shutdown || !st.available || st.closes != self.closes {
            self.finished = true;
            return;
        }
        if st.expiries != self.expiries {
            // What the real server sends when etcd compacted past a watch that had not
            // caught up (storage/etcd3/watcher.go, ErrCompacted).
            let msg = "The resourceVersion for the provided watch is too old.";
            self.push_error(StatusCode::GONE, "Expired", msg);
            return;
        }
        let compacted = st.store.compacted();
        if self.cursor < compacted {
            self.push_too_old(self.cursor, compacted);
            return;
        }
        for change in st.store.changes_after(self.cursor) {
            let was = change
                .before
                .as_deref()
                .is_some_and(|o| self.sel.matches(o));
            let is = !change.deleted && self.sel.matches(&change.after);
            // Moving across the selector boundary looks like create/delete to this
            // watch, exactly as on the real server.
            let kind = match (was, is) {
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => continue,
            };
            self.push_event(kind, &change.after);
        }
        self.cursor = self.cursor.max(st.store.resource_version());
    }

    fn push_event(&mut self, kind: &str, object: &Object) {
        match serde_json::to_vec(object.json()) {
            Ok(obj) => self.push_line(kind, &obj),
            Err(e) => eprintln!("apiserver: cannot serialize {}: {e}", object.name()),
        }
    }

    /// A bookmark carries the newest resourceVersion overall, not of this kind: changes to
    /// other kinds move a watcher's resume point too, as on the real server.
    fn push_bookmark(&mut self, initial_end: bool) {
        let rv = self.cursor.to_string();
        let meta = if initial_end {
            json!({"resourceVersion": rv, "annotations": {"k8s.io/initial-events-end": "true"}})
        } else {
            json!({"resourceVersion": rv})
        };
        let info = self.sel.kind.info();
        let obj = json!({"kind": info.kind, "apiVersion": info.api_version, "metadata": meta});
        self.push_line("BOOKMARK", obj.to_string().as_bytes());
    }

    /// The watch cache's answer to a watch from before the compaction point.
    fn push_too_old(&mut self, from: u64, oldest: u64) {
        let msg = format!("too old resource version: {from} ({oldest})");
        self.push_error(StatusCode::GONE, "Expired", &msg);
    }

    /// An in-stream ERROR event, after which the stream ends.
    fn push_error(&mut self, code: StatusCode, reason: &str, message: &str) {
        let obj = status_json(code, reason, message);
        self.push_line("ERROR", obj.to_string().as_bytes());
        self.finished = true;
    }

    fn push_line(&mut self, kind: &str, object: &[u8]) {
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(object);
        line.extend_from_slice(b"}\n");
        self.pending.push_back(Bytes::from(line));
    }
}
