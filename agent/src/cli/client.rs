//! Talks to node agents: connects to each, fans the request out concurrently and collects the
//! answers. Any agent failing makes the whole command fail with a one-line error naming it:
//! a silent partial answer would read as "nothing wrong on that node".

use std::time::Duration;

use futures::future::try_join_all;
use tonic::transport::{Channel, Endpoint};
use triage_agent_proto::v1::{self as pb, agent_service_client::AgentServiceClient};

use crate::{
    api::convert::{self, ConvertError, PeerLoss},
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
    /// DNS lookup counters of the pods asked about.
    pub dns_lookups: Vec<(
        std::sync::Arc<crate::evidence::PodRef>,
        crate::evidence::DnsLookups,
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

/// Connects to one agent.
pub async fn connect(
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
        .map(convert::evidence_from_pb)
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
        loss: convert::loss_from_pb(&response.loss.unwrap_or_default()),
        evicted_in_window: response.evicted_in_window,
        agent_started: response
            .agent_started
            .as_ref()
            .and_then(|t| convert::time_from_pb(Some(t), "agent_started").ok()),
        dns_lookups: response
            .dns_lookups
            .into_iter()
            .filter_map(convert::dns_lookups_from_pb)
            .collect(),
    })
}

/// Asks every agent concurrently; one answer or error per agent, in order. An agent that does
/// not answer does not stop the others: the caller shows what it has and says what is missing.
pub async fn query_each(
    agents: &[String],
    filter: &Filter,
    timeout: Duration,
) -> Vec<Result<AgentAnswer, ClientError>> {
    futures::future::join_all(agents.iter().map(|url| async move {
        let mut client = connect(url, timeout).await?;
        let response = client
            .query(pb::QueryRequest {
                filter: Some(convert::filter_to_pb(filter)),
                limit: 0,
            })
            .await
            .map_err(|s| rpc_error(url, s))?
            .into_inner();
        answer_from_pb(url, response)
    }))
    .await
}

/// Asks every agent for its status.
pub async fn status_all(
    agents: &[String],
    timeout: Duration,
) -> Result<Vec<(String, pb::StatusResponse)>, ClientError> {
    try_join_all(agents.iter().map(|url| async move {
        let mut client = connect(url, timeout).await?;
        let status = client
            .status(pb::StatusRequest {})
            .await
            .map_err(|s| rpc_error(url, s))?
            .into_inner();
        Ok((display_addr(url), status))
    }))
    .await
}

/// Opens a Watch on every agent; returns one merged stream of updates.
pub async fn watch_all(
    agents: &[String],
    filter: &Filter,
    timeout: Duration,
) -> Result<tokio::sync::mpsc::Receiver<Result<WatchUpdate, ClientError>>, ClientError> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    for url in agents {
        let mut client = connect(url, timeout).await?;
        let mut stream = client
            .watch(pb::WatchRequest {
                filter: Some(convert::filter_to_pb(filter)),
            })
            .await
            .map_err(|s| rpc_error(url, s))?
            .into_inner();
        let tx = tx.clone();
        let url = url.clone();
        tokio::spawn(async move {
            loop {
                let item = match stream.message().await {
                    Ok(Some(m)) => match m.evidence.map(convert::evidence_from_pb) {
                        Some(Ok(evidence)) => Ok(WatchUpdate {
                            agent: display_addr(&url),
                            evidence,
                            loss: convert::loss_from_pb(&m.loss.unwrap_or_default()),
                        }),
                        Some(Err(source)) => Err(ClientError::Invalid {
                            agent: display_addr(&url),
                            source,
                        }),
                        None => continue,
                    },
                    Ok(None) => Err(ClientError::Unreachable {
                        agent: display_addr(&url),
                        detail: "watch stream ended".into(),
                    }),
                    Err(s) => Err(rpc_error(&url, s)),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
    }
    Ok(rx)
}
