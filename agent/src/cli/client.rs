//! Talks to node agents: connects to each (directly, or through the API server's
//! `pods/portforward`), fans the request out with bounded concurrency and a per-agent timeout,
//! and collects one answer or error per agent. An agent that does not answer is named, never
//! silently left out: a missing answer would read as "nothing wrong on that node".

use std::time::Duration;

use futures::StreamExt as _;
use tonic::transport::{Channel, Endpoint};
use triage_agent_proto::v1::{self as pb, agent_service_client::AgentServiceClient};

use crate::{
    codec::{self, ConvertError, PeerLoss},
    evidence::{Evidence, Filter},
};

/// Why talking to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent {agent} unreachable: {detail}")]
    Unreachable { agent: String, detail: String },
    #[error("agent {agent} answered with an error: {code:?}: {message}")]
    Rpc {
        agent: String,
        code: tonic::Code,
        message: String,
    },
    #[error("agent {agent} sent invalid evidence: {source}")]
    Invalid {
        agent: String,
        #[source]
        source: ConvertError,
    },
}

/// Agents asked at once, at most: a 200-node cluster is asked in waves, not all at once (the
/// API server carries every port-forward).
pub const FAN_OUT: usize = 16;

/// Where an agent is.
#[derive(Clone, Debug)]
pub enum Target {
    /// A gRPC URL (`--agent`).
    Direct(String),
    /// An agent pod reached through the API server's `pods/portforward`.
    #[cfg(feature = "cluster")]
    Forward(crate::cli::cluster::AgentPod),
}

impl Target {
    /// How answers and errors name it: the address, or the agent pod and its node.
    pub fn label(&self) -> String {
        match self {
            Target::Direct(url) => display_addr(url),
            #[cfg(feature = "cluster")]
            Target::Forward(p) => format!("{}/{} on node {}", p.namespace, p.name, p.node),
        }
    }

    /// The node, when known before asking.
    pub fn node(&self) -> Option<&str> {
        match self {
            Target::Direct(_) => None,
            #[cfg(feature = "cluster")]
            Target::Forward(p) => Some(&p.node),
        }
    }
}

/// Direct targets from `--agent` URLs.
pub fn direct(urls: &[String]) -> Vec<Target> {
    urls.iter().cloned().map(Target::Direct).collect()
}

impl ClientError {
    /// The agent the error is about.
    pub fn agent(&self) -> &str {
        match self {
            ClientError::Unreachable { agent, .. }
            | ClientError::Rpc { agent, .. }
            | ClientError::Invalid { agent, .. } => agent,
        }
    }
}

/// One agent's answer to a query.
#[derive(Clone, Debug)]
pub struct AgentAnswer {
    /// The address it was reached at (without scheme).
    pub agent: String,
    pub node: String,
    pub evidence: Vec<Evidence>,
    pub truncated: bool,
    pub loss: Vec<PeerLoss>,
    /// Records of the pods asked about evicted from the agent's store inside the window.
    pub evicted_in_window: u64,
    /// When the agent started, if it says.
    pub agent_started: Option<std::time::SystemTime>,
    /// Since when its store and loss counters count, if it says: its start, or with its
    /// persistent store the first start on that store (they outlive restarts).
    pub losses_since: Option<std::time::SystemTime>,
    /// DNS lookup counters of the pods asked about.
    pub dns_lookups: Vec<(
        std::sync::Arc<crate::evidence::PodRef>,
        crate::evidence::DnsLookups,
    )>,
    /// What the kernel lost of the pods asked about, and when each pod's losses last grew.
    pub pod_losses: Vec<(
        std::sync::Arc<crate::evidence::PodRef>,
        crate::evidence::PodLosses,
        std::time::SystemTime,
    )>,
}

/// One Watch update.
#[derive(Clone, Debug)]
pub struct WatchUpdate {
    /// The agent it came from (without scheme).
    pub agent: String,
    pub evidence: Evidence,
    /// The agent's loss counters when it sent the update.
    pub loss: Vec<PeerLoss>,
}

fn display_addr(url: &str) -> String {
    url.strip_prefix("http://").unwrap_or(url).to_owned()
}

/// The innermost cause: "Connection refused (os error 111)" rather than "transport error".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn rpc_error(agent: &str, s: tonic::Status) -> ClientError {
    if matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) {
        let detail = match std::error::Error::source(&s) {
            Some(src) => root_cause(src),
            None => s.message().to_owned(),
        };
        return ClientError::Unreachable {
            agent: display_addr(agent),
            detail,
        };
    }
    ClientError::Rpc {
        agent: display_addr(agent),
        code: s.code(),
        message: s.message().to_owned(),
    }
}

/// A connected agent.
pub struct Connected {
    pub client: AgentServiceClient<Channel>,
    label: String,
    #[cfg(feature = "cluster")]
    forward_errors: Option<crate::cli::cluster::ForwardErrors>,
}

impl Connected {
    /// A failed call as a [`ClientError`]; through a port-forward, the forward's own error
    /// (e.g. nothing listens on the agent's port) says best why.
    pub async fn error(&self, status: tonic::Status) -> ClientError {
        #[cfg(feature = "cluster")]
        if let Some(errors) = &self.forward_errors
            && let Some(detail) = crate::cli::cluster::forward_error(errors).await
        {
            return ClientError::Unreachable {
                agent: self.label.clone(),
                detail,
            };
        }
        rpc_error(&self.label, status)
    }
}

/// Connects to one agent.
pub async fn connect(target: &Target, timeout: Duration) -> Result<Connected, ClientError> {
    match target {
        Target::Direct(url) => Ok(Connected {
            client: connect_url(url, timeout).await?,
            label: display_addr(url),
            #[cfg(feature = "cluster")]
            forward_errors: None,
        }),
        #[cfg(feature = "cluster")]
        Target::Forward(pod) => {
            let errors = crate::cli::cluster::ForwardErrors::default();
            match crate::cli::cluster::forward_channel(pod, timeout, &errors).await {
                Ok(channel) => Ok(Connected {
                    client: AgentServiceClient::new(channel),
                    label: target.label(),
                    forward_errors: Some(errors),
                }),
                Err(e) => Err(ClientError::Unreachable {
                    agent: target.label(),
                    detail: match crate::cli::cluster::forward_error(&errors).await {
                        Some(detail) => detail,
                        None => root_cause(&e),
                    },
                }),
            }
        }
    }
}

/// Connects to an agent's gRPC URL.
async fn connect_url(
    url: &str,
    timeout: Duration,
) -> Result<AgentServiceClient<Channel>, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::Unreachable {
            agent: display_addr(url),
            detail: root_cause(&e),
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Unreachable {
            agent: display_addr(url),
            detail: root_cause(&e),
        })?;
    Ok(AgentServiceClient::new(channel))
}

/// An agent's query response, checked: evidence that does not convert is an error naming the
/// agent, never a panic.
pub fn answer_from_pb(url: &str, response: pb::QueryResponse) -> Result<AgentAnswer, ClientError> {
    let evidence = response
        .evidence
        .into_iter()
        .map(codec::evidence_from_pb)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ClientError::Invalid {
            agent: display_addr(url),
            source,
        })?;
    Ok(AgentAnswer {
        agent: display_addr(url),
        node: response.node,
        evidence,
        truncated: response.truncated,
        losses_since: response
            .loss
            .as_ref()
            .and_then(|l| l.since.as_ref())
            .and_then(|t| codec::time_from_pb(Some(t), "loss.since").ok()),
        loss: codec::loss_from_pb(&response.loss.unwrap_or_default()),
        evicted_in_window: response.evicted_in_window,
        agent_started: response
            .agent_started
            .as_ref()
            .and_then(|t| codec::time_from_pb(Some(t), "agent_started").ok()),
        dns_lookups: response
            .dns_lookups
            .into_iter()
            .filter_map(codec::dns_lookups_from_pb)
            .collect(),
        pod_losses: response
            .pod_losses
            .into_iter()
            .filter_map(codec::pod_losses_from_pb)
            .collect(),
    })
}

/// Runs `call` on every target, at most [`FAN_OUT`] at once, each bounded by `timeout`
/// (connection included); results in target order. `progress` is told after each answer.
async fn fan_out<T, F, Fut>(
    targets: &[Target],
    timeout: Duration,
    call: F,
    mut progress: impl FnMut(usize, usize),
) -> Vec<Result<T, ClientError>>
where
    F: Fn(Connected) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let total = targets.len();
    let call = &call;
    let mut results = futures::stream::iter(targets)
        .map(|target| async move {
            let work = async {
                let connected = connect(target, timeout).await?;
                call(connected).await
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Unreachable {
                    agent: target.label(),
                    detail: format!("no answer within {}", humantime::format_duration(timeout)),
                }),
            }
        })
        .buffered(FAN_OUT);
    let mut out = Vec::with_capacity(total);
    while let Some(r) = results.next().await {
        out.push(r);
        progress(out.len(), total);
    }
    out
}

/// Asks every agent; one answer or error per agent, in order. An agent that does not answer
/// does not stop the others: the caller shows what it has and says what is missing.
pub async fn query_each(
    targets: &[Target],
    filter: &Filter,
    timeout: Duration,
    progress: impl FnMut(usize, usize),
) -> Vec<Result<AgentAnswer, ClientError>> {
    let request = pb::QueryRequest {
        filter: Some(codec::filter_to_pb(filter)),
        limit: 0,
    };
    fan_out(
        targets,
        timeout,
        |mut c| {
            let request = request.clone();
            async move {
                let response = match c.client.query(request).await {
                    Ok(r) => r.into_inner(),
                    Err(s) => return Err(c.error(s).await),
                };
                answer_from_pb(&c.label, response)
            }
        },
        progress,
    )
    .await
}

/// Asks every agent for its status; one status or error per agent, in order.
pub async fn status_each(
    targets: &[Target],
    timeout: Duration,
    progress: impl FnMut(usize, usize),
) -> Vec<Result<(String, pb::StatusResponse), ClientError>> {
    fan_out(
        targets,
        timeout,
        |mut c| async move {
            match c.client.status(pb::StatusRequest {}).await {
                Ok(r) => Ok((c.label.clone(), r.into_inner())),
                Err(s) => Err(c.error(s).await),
            }
        },
        progress,
    )
    .await
}

/// What a merged watch delivers.
#[derive(Debug)]
pub enum WatchItem {
    /// Boxed: updates are most of the traffic, but errors should not make every item large.
    Update(Box<WatchUpdate>),
    /// An agent's stream broke; it is being reconnected (with backoff).
    Lost(ClientError),
    /// An agent's stream is back after a loss (what happened in between is in Query).
    Reconnected { agent: String },
    /// An agent stayed unreachable past the give-up time; it is no longer watched.
    GaveUp(ClientError),
}

/// First and longest wait between reconnection attempts of a watch.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// Opens a Watch on every agent; returns one merged stream. Each agent's stream reconnects
/// with exponential backoff when it breaks (an agent restart), and is given up after
/// `give_up` without a successful reconnection.
pub fn watch_all(
    targets: &[Target],
    filter: &Filter,
    timeout: Duration,
    give_up: Duration,
) -> tokio::sync::mpsc::Receiver<WatchItem> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    for target in targets {
        let (tx, target) = (tx.clone(), target.clone());
        let request = pb::WatchRequest {
            filter: Some(codec::filter_to_pb(filter)),
        };
        tokio::spawn(async move {
            let mut backoff = BACKOFF_FIRST;
            let mut lost_since: Option<std::time::Instant> = None;
            loop {
                let opened = async {
                    let mut c = connect(&target, timeout).await?;
                    match c.client.watch(request.clone()).await {
                        Ok(r) => Ok((r.into_inner(), c)),
                        Err(s) => Err(c.error(s).await),
                    }
                };
                let error = match opened.await {
                    Ok((mut stream, c)) => {
                        if lost_since.take().is_some()
                            && tx
                                .send(WatchItem::Reconnected {
                                    agent: target.label(),
                                })
                                .await
                                .is_err()
                        {
                            return;
                        }
                        backoff = BACKOFF_FIRST;
                        pump(&mut stream, &c, &tx).await
                    }
                    Err(e) => Some(e),
                };
                let Some(error) = error else { return };
                let since = *lost_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= give_up {
                    let _ = tx.send(WatchItem::GaveUp(error)).await;
                    return;
                }
                if tx.send(WatchItem::Lost(error)).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        });
    }
    rx
}

/// Forwards one Watch stream's updates until it breaks (the error) or the receiver is gone
/// (None).
async fn pump(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    c: &Connected,
    tx: &tokio::sync::mpsc::Sender<WatchItem>,
) -> Option<ClientError> {
    loop {
        let item = match stream.message().await {
            Ok(Some(m)) => match m.evidence.map(codec::evidence_from_pb) {
                Some(Ok(evidence)) => WatchItem::Update(Box::new(WatchUpdate {
                    agent: c.label.clone(),
                    evidence,
                    loss: codec::loss_from_pb(&m.loss.unwrap_or_default()),
                })),
                Some(Err(source)) => WatchItem::Lost(ClientError::Invalid {
                    agent: c.label.clone(),
                    source,
                }),
                None => continue,
            },
            Ok(None) => {
                return Some(ClientError::Unreachable {
                    agent: c.label.clone(),
                    detail: "watch stream ended".into(),
                });
            }
            Err(s) => return Some(c.error(s).await),
        };
        if tx.send(item).await.is_err() {
            return None;
        }
    }
}
