//! `pods/portforward` over WebSocket, as kube-rs's `Api::<Pod>::portforward` and
//! `kubectl port-forward` speak it: a GET with `Upgrade: websocket`, the subprotocol
//! `v4.channel.k8s.io` (the only one the real server offers for port forwarding besides the
//! legacy `portforward.k8s.io`), and per requested port two channels: data `2i` and error
//! `2i + 1`. Every binary frame starts with its channel byte; the first frame the server sends
//! on each channel carries the port as two little-endian bytes (kubelet's
//! `pkg/kubelet/cri/streaming/portforward/websocket.go`). An error (nothing listens) is a text
//! on the error channel, then the port is unusable; the stand-in then closes the socket, as
//! nothing else travels on it.
//!
//! Where a pod's port is: [`super::ApiServer::forward_port`] maps (namespace, pod, port) to a
//! loopback address, the process that plays that pod.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY};
use hyper::header::{SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};

use super::Shared;
use super::routing::{Body, status};

/// The subprotocols the real server accepts for port forwarding, in its order of preference.
const PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "portforward.k8s.io"];

/// How long a forward whose every port failed stays open after the errors were sent.
const ERROR_LINGER: std::time::Duration = std::time::Duration::from_millis(200);

/// The real server's limit on ports per request.
const MAX_PORTS: usize = 128;

/// Answers a port-forward request: 101 and a forwarding task, or the error the real server gives.
pub(super) fn start(
    shared: &Arc<Shared>,
    mut req: Request<Incoming>,
    namespace: &str,
    name: &str,
    query: &[(String, String)],
) -> Response<Body> {
    let ports = match parse_ports(query) {
        Ok(p) => p,
        Err(msg) => return status(StatusCode::BAD_REQUEST, "BadRequest", &msg),
    };
    let uid = {
        let st = shared.lock();
        let pod = st
            .store
            .get(super::kinds::Kind::Pod, namespace, name)
            .map(|o| {
                o.json()["metadata"]["uid"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            });
        match pod {
            Some(uid) => uid,
            None => {
                let msg = format!("pods \"{name}\" not found");
                return status(StatusCode::NOT_FOUND, "NotFound", &msg);
            }
        }
    };
    let headers = req.headers();
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
    else {
        let msg = "Upgrade request required";
        return status(StatusCode::BAD_REQUEST, "BadRequest", msg);
    };
    let offered: Vec<String> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        let msg = format!("no supported subprotocol among {offered:?}");
        return status(StatusCode::BAD_REQUEST, "BadRequest", &msg);
    };
    if !upgrade {
        let msg = "Upgrade request required";
        return status(StatusCode::BAD_REQUEST, "BadRequest", msg);
    }
    let targets: Vec<(u16, Option<SocketAddr>)> = {
        let st = shared.lock();
        ports
            .iter()
            .map(|p| {
                let key = (namespace.to_owned(), name.to_owned(), *p);
                (*p, st.forwards.get(&key).copied())
            })
            .collect()
    };
    let pod = format!("{namespace}/{name}");
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                forward(ws, &pod, &uid, targets).await;
            }
            Err(e) => eprintln!("apiserver: port-forward upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(&key)) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    resp
}

fn parse_ports(query: &[(String, String)]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (_, value) in query.iter().filter(|(k, _)| k == "ports") {
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return Err(format!("invalid port {part:?}")),
            }
        }
    }
    if ports.is_empty() {
        return Err("at least one port must be specified".into());
    }
    if ports.len() > MAX_PORTS {
        return Err(format!("at most {MAX_PORTS} ports"));
    }
    Ok(ports)
}

/// Frames one channel's bytes.
fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::binary(v)
}

/// Connects each port to its target and pumps bytes both ways until either side ends.
async fn forward<S>(
    ws: WebSocketStream<S>,
    pod: &str,
    uid: &str,
    targets: Vec<(u16, Option<SocketAddr>)>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    // Data from the targets to the client, one task per port; the sink is written here only.
    let (to_client, mut from_targets) = tokio::sync::mpsc::channel::<Message>(64);
    let mut writers = Vec::new();
    let mut usable = 0;
    for (i, (port, target)) in targets.into_iter().enumerate() {
        let data = u8::try_from(2 * i).unwrap_or(u8::MAX);
        let error = data.saturating_add(1);
        let header = port.to_le_bytes();
        if sink.send(frame(data, &header)).await.is_err()
            || sink.send(frame(error, &header)).await.is_err()
        {
            return;
        }
        let connected = match target {
            Some(addr) => tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string()),
            None => Err("connect: connection refused".to_owned()),
        };
        match connected {
            Ok(tcp) => {
                usable += 1;
                let (mut read, write) = tcp.into_split();
                writers.push(Some(write));
                let tx = to_client.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let Some(chunk) = buf.get(..n) else { break };
                                if tx.send(frame(data, chunk)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // v4 has no half-close: the target ending ends the forward.
                    let _ = tx.send(Message::Close(None)).await;
                });
            }
            Err(e) => {
                writers.push(None);
                // kubelet's message, so clients show what users see with kubectl.
                let msg = format!(
                    "error forwarding port {port} to pod {pod}, uid {uid}: failed to connect to localhost:{port}: {e}"
                );
                if sink.send(frame(error, msg.as_bytes())).await.is_err() {
                    return;
                }
            }
        }
    }
    drop(to_client);
    if usable == 0 {
        // Read (and drop) what the client sends for a moment before closing: a client writing
        // its first bytes must not fail on a closed socket before it has read the error.
        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = tokio::time::timeout(ERROR_LINGER, drain).await;
        let _ = sink.send(Message::Close(None)).await;
        return;
    }
    loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Binary(bytes))) => {
                    let Some((&channel, data)) = bytes.split_first() else { continue };
                    let writer = writers
                        .get_mut(usize::from(channel / 2))
                        .and_then(Option::as_mut);
                    if channel % 2 == 0
                        && let Some(w) = writer
                        && w.write_all(data).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            outgoing = from_targets.recv() => match outgoing {
                Some(Message::Close(f)) => {
                    let _ = sink.send(Message::Close(f)).await;
                    break;
                }
                Some(m) => if sink.send(m).await.is_err() { break },
                None => break,
            },
        }
    }
    for w in writers.iter_mut().flatten() {
        let _ = w.shutdown().await;
    }
}
