//! `pods/portforward` through kube-rs's own client, against a TCP echo server standing in for
//! the pod's port; RBAC denials as kube-rs reports them.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{ApiServer, client, pod, within};

/// An echo server on loopback: what it reads it writes back, per connection.
async fn echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn kube_portforward_reaches_the_pods_port_both_ways() {
    let server = ApiServer::start().expect("start");
    server.apply_pod(pod("triage-agent", "agent-1", "node-1"));
    server.forward_port("triage-agent", "agent-1", 9742, echo().await);
    let pods: Api<Pod> = Api::namespaced(client(&server), "triage-agent");
    let mut pf = within(pods.portforward("agent-1", &[9742]))
        .await
        .expect("portforward");
    let mut stream = pf.take_stream(9742).expect("stream");
    // Large enough to span several WebSocket frames each way.
    let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    within(stream.write_all(&sent)).await.expect("write");
    let mut got = vec![0u8; sent.len()];
    within(stream.read_exact(&mut got)).await.expect("read");
    assert!(got == sent, "echoed bytes differ");
    // A second forward is a second connection.
    let mut pf2 = within(pods.portforward("agent-1", &[9742]))
        .await
        .expect("portforward");
    let mut s2 = pf2.take_stream(9742).expect("stream");
    within(s2.write_all(b"ping")).await.expect("write");
    let mut four = [0u8; 4];
    within(s2.read_exact(&mut four)).await.expect("read");
    assert_eq!(&four, b"ping");
}

#[tokio::test]
async fn nothing_listening_is_an_error_on_the_error_channel() {
    let server = ApiServer::start().expect("start");
    server.apply_pod(pod("triage-agent", "agent-1", "node-1"));
    let pods: Api<Pod> = Api::namespaced(client(&server), "triage-agent");
    let mut pf = within(pods.portforward("agent-1", &[9742]))
        .await
        .expect("the upgrade succeeds; the port then fails");
    let error = within(pf.take_error(9742).expect("error future")).await;
    let error = error.expect("an error message");
    assert!(
        error.contains("error forwarding port 9742") && error.contains("refused"),
        "{error}"
    );
}

#[tokio::test]
async fn unknown_pod_is_404_and_rbac_denial_is_403() {
    let server = ApiServer::start().expect("start");
    server.apply_pod(pod("triage-agent", "agent-1", "node-1"));
    let pods: Api<Pod> = Api::namespaced(client(&server), "triage-agent");
    match within(pods.portforward("nope", &[9742])).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404, "{s:?}"),
        Err(e) => panic!("expected 404, got {e}"),
        Ok(_) => panic!("expected 404"),
    }
    server.forbid("pods/portforward");
    match within(pods.portforward("agent-1", &[9742])).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message
                    .contains("cannot create resource \"pods/portforward\""),
                "{}",
                s.message
            );
        }
        Err(e) => panic!("expected 403, got {e}"),
        Ok(_) => panic!("expected 403"),
    }
    // Listing is a separate permission.
    assert!(within(pods.list(&Default::default())).await.is_ok());
    server.forbid("pods");
    match within(pods.list(&Default::default())).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("expected 403, got {other:?}"),
    }
    server.allow("pods");
    assert!(within(pods.list(&Default::default())).await.is_ok());
}

/// Events select by their involved object, as `kubectl get events --field-selector` and the
/// timeline read them.
#[tokio::test]
async fn events_select_by_involved_object() {
    use k8s_openapi::api::core::v1::Event;
    let server = ApiServer::start().expect("start");
    for (name, pod, reason) in [
        ("e1", "web", "Scheduled"),
        ("e2", "web", "BackOff"),
        ("e3", "db", "Scheduled"),
    ] {
        server.apply_event(super::super::pod_event_object(
            "shop", pod, name, "Normal", reason, "m",
        ));
    }
    let events: Api<Event> = Api::namespaced(client(&server), "shop");
    let lp = kube::api::ListParams::default()
        .fields("involvedObject.kind=Pod,involvedObject.name=web,reason=Scheduled");
    let got = within(events.list(&lp)).await.expect("list");
    let names: Vec<_> = got
        .items
        .iter()
        .filter_map(|e| e.metadata.name.clone())
        .collect();
    assert_eq!(names, vec!["e1".to_owned()]);
}
