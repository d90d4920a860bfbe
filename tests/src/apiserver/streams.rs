//! Watch streams: a cursor into the change history, bookmarks, timeouts and 410 Gone.

use super::*;

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
        cursor: st.rv,
        pending: VecDeque::new(),
        finished: false,
        bookmarks: p.bookmarks,
        next_bookmark: Instant::now() + BOOKMARK_EVERY,
        deadline: Instant::now() + p.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT),
    };
    if initial {
        for pod in st.pods.values() {
            if w.sel.matches(pod) {
                w.push_event("ADDED", pod);
            }
        }
        if p.send_initial_events == Some(true) {
            w.push_bookmark(true);
        }
    } else if let Some(from) = p.rv {
        if from < st.compacted {
            w.push_expired(from, st.compacted);
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
pub(super) struct WatchStream {
    pub(super) shared: Arc<Shared>,
    pub(super) changed: watch::Receiver<()>,
    pub(super) sel: Selector,
    /// Every change with rv <= cursor has been considered for this watch.
    pub(super) cursor: u64,
    pub(super) pending: VecDeque<Bytes>,
    /// Write what is pending, then end the stream.
    pub(super) finished: bool,
    pub(super) bookmarks: bool,
    pub(super) next_bookmark: Instant,
    pub(super) deadline: Instant,
}

impl WatchStream {
    pub(super) async fn next_chunk(&mut self) -> Option<Bytes> {
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
    pub(super) fn collect(&mut self) {
        let shared = Arc::clone(&self.shared);
        let st = shared.lock();
        if st.shutdown || !st.available {
            self.finished = true;
            return;
        }
        if self.cursor < st.compacted {
            self.push_expired(self.cursor, st.compacted);
            return;
        }
        let start = st.history.partition_point(|c| c.rv <= self.cursor);
        for change in st.history.get(start..).unwrap_or_default() {
            let was = change
                .before
                .as_deref()
                .is_some_and(|p| self.sel.matches(p));
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
        self.cursor = self.cursor.max(st.rv);
    }

    pub(super) fn push_event(&mut self, kind: &str, pod: &Pod) {
        match serde_json::to_vec(pod) {
            Ok(obj) => self.push_line(kind, &obj),
            Err(e) => eprintln!("apiserver: cannot serialize pod: {e}"),
        }
    }

    pub(super) fn push_bookmark(&mut self, initial_end: bool) {
        let rv = self.cursor.to_string();
        let meta = if initial_end {
            json!({"resourceVersion": rv, "annotations": {"k8s.io/initial-events-end": "true"}})
        } else {
            json!({"resourceVersion": rv})
        };
        let obj = json!({"kind": "Pod", "apiVersion": "v1", "metadata": meta});
        self.push_line("BOOKMARK", obj.to_string().as_bytes());
    }

    pub(super) fn push_expired(&mut self, from: u64, oldest: u64) {
        let msg = format!("too old resource version: {from} ({oldest})");
        let obj = status_json(StatusCode::GONE, "Expired", &msg);
        self.push_line("ERROR", obj.to_string().as_bytes());
        self.finished = true;
    }

    pub(super) fn push_line(&mut self, kind: &str, object: &[u8]) {
        let mut line = Vec::with_capacity(object.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(object);
        line.extend_from_slice(b"}\n");
        self.pending.push_back(Bytes::from(line));
    }
}
