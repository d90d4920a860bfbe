//! OTLP over HTTP (`http/protobuf`): each export request is a protobuf POST to the logs URL,
//! as the specification's OTLP/HTTP section describes
//! (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>): `Content-Type:
//! application/x-protobuf`, the operator's headers, `Content-Encoding: gzip` when compression
//! is on; a 200's body is an `ExportLogsServiceResponse` (partial success). 429, 502, 503 and
//! 504 may succeed later (a `Retry-After` in seconds is honoured); any other status, and a
//! body that is not a response, give the batch up. A connection that fails or times out may
//! succeed later.
//!
//! HTTP/1.1 through hyper (the client kube's already is), TLS through rustls with ring and
//! the same trust roots the gRPC transport uses.

use std::{io::Write as _, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, StatusCode, Uri,
    body::Bytes,
    header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER},
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prost::Message as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tracing::{debug, info, warn};
use triage_agent_proto::opentelemetry::proto::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};

use super::{OtlpConfig, config::redacted_endpoint};

/// The longest response body read (a partial success's message; an error page).
const MAX_RESPONSE: usize = 64 * 1024;
/// The longest `Retry-After` honoured: beyond it the usual backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why an export attempt failed, whatever the transport.
#[derive(Debug)]
pub struct Failure {
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// `UNAVAILABLE`, `HTTP 503`, `connect`: what a log line names.
    pub code: String,
    pub message: String,
    /// The receiver's `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
}

/// Why the HTTP transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("OTLP endpoint {endpoint}: not a valid URL ({reason})")]
    Url { endpoint: String, reason: String },
    #[error("OTLP TLS: {0}")]
    Tls(String),
}

pub struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    gzip: bool,
}

/// Which roots an https collector's certificate is checked against, over either transport
/// (besides the operator's `OTEL_EXPORTER_OTLP_CERTIFICATE`, always trusted when set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Roots {
    /// The system's store (`SSL_CERT_FILE`/`SSL_CERT_DIR`, or the distribution's bundle).
    System,
    /// Mozilla's bundle compiled in (webpki-roots): the system has none, as in the agent's
    /// image (`FROM scratch`).
    Compiled,
}

/// The system's roots when it has any, else the compiled-in ones.
pub(super) fn choose_roots(system_roots: usize) -> Roots {
    match system_roots {
        0 => Roots::Compiled,
        _ => Roots::System,
    }
}

/// The system store's trust roots (read once, at setup).
pub(super) fn system_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        debug!(errors = ?found.errors, "reading the system's trust roots");
    }
    found.certs
}

/// Roots of the compiled-in bundle.
pub(super) fn webpki_roots_len() -> usize {
    webpki_roots::TLS_SERVER_ROOTS.len()
}

/// Says so when the compiled-in roots are the ones trusted.
pub(super) fn compiled_roots_note() {
    info!(
        roots = webpki_roots_len(),
        "no trust roots in the system store: the OTLP exporter trusts Mozilla's, compiled in"
    );
}

/// The roots an https receiver's certificate is checked against ([`choose_roots`]); the
/// operator's CA besides.
fn tls_config(config: &OtlpConfig) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    // A plaintext endpoint (`tls` none) trusts nothing: no https request is ever made.
    let tls = config.tls.clone().unwrap_or_default();
    if config.tls.is_some() {
        let system = system_roots();
        match choose_roots(system.len()) {
            Roots::System => {
                let (_added, _ignored) = roots.add_parsable_certificates(system);
            }
            Roots::Compiled => {
                compiled_roots_note();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    if let Some(ca) = &tls.ca {
        for cert in CertificateDer::pem_slice_iter(ca) {
            let cert = cert.map_err(|e| SetupError::Tls(format!("the CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| SetupError::Tls(format!("the CA certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match &tls.identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SetupError::Tls(format!("the client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| SetupError::Tls(format!("the client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SetupError::Tls(format!("the client certificate and key: {e}")))
        }
    }
}

impl HttpTransport {
    pub fn new(config: &OtlpConfig) -> Result<HttpTransport, SetupError> {
        let uri: Uri = config.endpoint.parse().map_err(|e| SetupError::Url {
            endpoint: redacted_endpoint(&config.endpoint),
            reason: format!("{e}"),
        })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(config)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        // The configuration checked every header; lowercase ASCII keys and values.
        let headers = config
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        Ok(HttpTransport {
            client,
            uri,
            headers,
            gzip: config.gzip,
        })
    }

    /// One POST; the rejected record count of a partial success.
    pub async fn export(
        &self,
        request: &ExportLogsServiceRequest,
        timeout: Duration,
    ) -> Result<i64, Failure> {
        let mut body = request.encode_to_vec();
        if self.gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            body = gz
                .write_all(&body)
                .and_then(|()| gz.finish())
                .map_err(|e| Failure {
                    retryable: false,
                    code: "gzip".into(),
                    message: e.to_string(),
                    retry_after: None,
                })?;
        }
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/x-protobuf");
        if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure {
                retryable: false,
                code: "request".into(),
                message: e.to_string(),
                retry_after: None,
            })?;
        let exchange = async {
            let response = self.client.request(req).await.map_err(|e| Failure {
                retryable: true,
                code: "connect".into(),
                message: crate::probes::loader::chain(&e),
                retry_after: None,
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| Failure {
                    retryable: true,
                    code: format!("HTTP {}", status.as_u16()),
                    message: format!("reading the response: {e}"),
                    retry_after,
                })?;
            Ok::<_, Failure>((status, retry_after, body))
        };
        let (status, retry_after, body) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| Failure {
                    retryable: true,
                    code: "timeout".into(),
                    message: format!("no response within {timeout:?}"),
                    retry_after: None,
                })??;
        if status == StatusCode::OK {
            let response = ExportLogsServiceResponse::decode(body).map_err(|e| Failure {
                retryable: false,
                code: "HTTP 200".into(),
                message: format!("the body is not an ExportLogsServiceResponse: {e}"),
                retry_after: None,
            })?;
            return Ok(rejected(response.partial_success));
        }
        Err(Failure {
            retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
            code: format!("HTTP {}", status.as_u16()),
            message: status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_owned(),
            retry_after,
        })
    }
}

/// The records a partial success rejected (0 when the response has none), for either
/// transport: both answer with an `ExportLogsServiceResponse`.
pub(super) fn rejected(partial: Option<ExportLogsPartialSuccess>) -> i64 {
    match partial {
        Some(p) if p.rejected_log_records > 0 || !p.error_message.is_empty() => {
            warn!(
                rejected = p.rejected_log_records,
                message = %p.error_message,
                "the OTLP collector rejected part of an export"
            );
            p.rejected_log_records.max(0)
        }
        _ => 0,
    }
}
