//! The exporter's settings, read from the standard OpenTelemetry environment variables
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>, and the batch log record
//! processor's `OTEL_BLRP_*`). The exporter is on when an endpoint is set and off otherwise.
//! Every value is checked here, at startup: a wrong one is an error naming the variable, never
//! a panic or a silent default later.

use std::{path::PathBuf, time::Duration};

/// Per-request deadline when `OTEL_EXPORTER_OTLP_TIMEOUT` is unset (the specification's 10 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Records per export request (the specification's `OTEL_BLRP_MAX_EXPORT_BATCH_SIZE` default).
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Longest a record waits for its batch to fill (`OTEL_BLRP_SCHEDULE_DELAY`, the
/// specification's 1 s).
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Record updates waiting for export at most (`OTEL_BLRP_MAX_QUEUE_SIZE`): larger than the
/// specification's 2048, so a minute-long collector outage at a few hundred updates per
/// second loses nothing; about 3 MiB of records at most.
pub const DEFAULT_QUEUE: usize = 8192;
/// How long one batch may be retried before it is given up (`OTEL_BLRP_EXPORT_TIMEOUT`, the
/// specification's 30 s).
pub const DEFAULT_RETRY_WINDOW: Duration = Duration::from_secs(30);

/// The resource's `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say
/// otherwise.
pub const SERVICE_NAME: &str = "triage-agent";

/// TLS towards an `https` endpoint: the system's roots (Mozilla's, compiled in, when the system
/// has none), plus the files the variables name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM CA certificate(s) to trust (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key for mutual TLS (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`
    /// and `OTEL_EXPORTER_OTLP_CLIENT_KEY`, both or neither).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Batching and queueing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub size: usize,
    pub interval: Duration,
    pub queue: usize,
    pub retry_window: Duration,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            size: DEFAULT_BATCH_SIZE,
            interval: DEFAULT_BATCH_INTERVAL,
            queue: DEFAULT_QUEUE,
            retry_window: DEFAULT_RETRY_WINDOW,
        }
    }
}

/// How export requests travel (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc`: the collector's LogsService (port 4317); the default, as it always was here.
    Grpc,
    /// `http/protobuf`: a protobuf POST to `/v1/logs` (port 4318), for receivers that speak
    /// only HTTP (Loki's native OTLP intake, many hosted backends).
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// The path the specification appends to `OTEL_EXPORTER_OTLP_ENDPOINT` for logs over HTTP.
pub const HTTP_LOGS_PATH: &str = "v1/logs";

/// The OTLP log exporter's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: Protocol,
    /// gRPC: `http://host:port` or `https://host:port` of the collector's gRPC service.
    /// http/protobuf: the full URL requests are POSTed to (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`
    /// as given, or `OTEL_EXPORTER_OTLP_ENDPOINT` with `v1/logs` appended, as the
    /// specification says).
    pub endpoint: String,
    /// `Some` for an `https` endpoint.
    pub tls: Option<Tls>,
    /// gRPC metadata or HTTP headers sent with every request (lowercase ASCII keys).
    pub headers: Vec<(String, String)>,
    /// Deadline of one export request.
    pub timeout: Duration,
    /// gzip-compressed requests.
    pub gzip: bool,
    /// Resource attributes from `OTEL_RESOURCE_ATTRIBUTES`, with `OTEL_SERVICE_NAME` as
    /// `service.name` (the agent adds its defaults to these, never over them).
    pub resource: Vec<(String, String)>,
    pub batch: Batch,
}

/// A variable the exporter cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?}: not a valid URL ({reason})")]
    Endpoint {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{var}={value:?}: the scheme must be http (plaintext) or https (TLS)")]
    Scheme { var: &'static str, value: String },
    #[error(
        "{var}={value:?}: the protocol must be grpc (the collector's port 4317) or http/protobuf (port 4318); http/json is not supported"
    )]
    Protocol { var: &'static str, value: String },
    #[error("{var}={value:?}: compression must be gzip or none")]
    Compression { var: &'static str, value: String },
    #[error("{var}: entry {entry:?} is not key=value with a valid gRPC metadata key and value")]
    Header { var: &'static str, entry: String },
    #[error("OTEL_RESOURCE_ATTRIBUTES: entry {entry:?} is not key=value")]
    ResourceAttribute { entry: String },
    #[error("{var}={value:?}: expected a whole number{unit}")]
    Number {
        var: &'static str,
        value: String,
        unit: &'static str,
    },
    #[error("{var}={path:?}: cannot read the file")]
    File {
        var: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together: only {set} is set"
    )]
    HalfIdentity { set: &'static str },
    #[error("{var} is set, but the endpoint is not https")]
    TlsOnPlaintext { var: &'static str },
}

/// Environment lookups, one variable at a time (the process environment, or a map in tests).
/// An empty value counts as unset, as the specification asks.
struct Env<F> {
    get: F,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn var(&self, name: &'static str) -> Option<(&'static str, String)> {
        (self.get)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|v| (name, v))
    }

    /// The logs-specific variable, else the general one.
    fn signal(&self, logs: &'static str, general: &'static str) -> Option<(&'static str, String)> {
        self.var(logs).or_else(|| self.var(general))
    }

    fn number(&self, name: &'static str, unit: &'static str) -> Result<Option<u64>, ConfigError> {
        self.var(name)
            .map(|(var, value)| {
                value.parse::<u64>().map_err(|_| ConfigError::Number {
                    var,
                    value: value.clone(),
                    unit,
                })
            })
            .transpose()
    }

    fn file(
        &self,
        logs: &'static str,
        general: &'static str,
    ) -> Result<Option<(&'static str, Vec<u8>)>, ConfigError> {
        self.signal(logs, general)
            .map(|(var, path)| {
                std::fs::read(&path)
                    .map(|bytes| (var, bytes))
                    .map_err(|source| ConfigError::File {
                        var,
                        path: path.into(),
                        source,
                    })
            })
            .transpose()
    }
}

/// `%XX` escapes decoded (the W3C baggage format the header and resource variables use); a
/// malformed escape stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k1=v1,k2=v2` with percent-encoded values; an entry without `=` or key is an `Err`.
fn key_values(s: &str) -> Vec<Result<(String, String), String>> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((percent_decode(k.trim()), percent_decode(v.trim())))
            }
            _ => Err(entry.to_owned()),
        })
        .collect()
}

/// An endpoint as it may be shown in logs and errors: credentials in its authority
/// (`https://user:token@host`) are replaced by `***`.
pub fn redacted_endpoint(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => endpoint.to_owned(),
    }
}

/// A header entry as it may be shown in an error: its key, never its value (a bearer token,
/// an API key); an entry that is not `key=value` is shown by its length only.
fn redacted_entry(entry: &str) -> String {
    match entry.split_once('=') {
        Some((k, v)) => format!("{}=<{} bytes, not shown>", k.trim(), v.trim().len()),
        None => format!("<{} bytes, not shown>", entry.len()),
    }
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` as a base URL: `v1/logs` appended to its path, with one
/// slash between (`http://c:4318` and `http://c:4318/` both give `http://c:4318/v1/logs`,
/// `https://gw/otlp` gives `https://gw/otlp/v1/logs`); a query string stays at the end.
fn http_logs_url(base: &str) -> String {
    let (base, query) = match base.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (base, None),
    };
    let mut url = base.trim_end_matches('/').to_owned();
    url.push('/');
    url.push_str(HTTP_LOGS_PATH);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

fn millis(n: Option<u64>, default: Duration) -> Duration {
    n.map_or(default, Duration::from_millis)
}

impl OtlpConfig {
    /// The exporter's settings from the environment: `Ok(None)` when no endpoint is set (or
    /// `OTEL_SDK_DISABLED=true`), an error naming the variable when one is unusable.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpConfig>, ConfigError> {
        let env = Env { get };
        if env
            .var("OTEL_SDK_DISABLED")
            .is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"))
        {
            return Ok(None);
        }
        let Some((endpoint_var, endpoint)) = env.signal(
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ) else {
            return Ok(None);
        };
        let protocol = match env.signal(
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            None => Protocol::Grpc,
            Some((_, v)) if v == "grpc" => Protocol::Grpc,
            Some((_, v)) if v == "http/protobuf" => Protocol::HttpProtobuf,
            Some((var, value)) => return Err(ConfigError::Protocol { var, value }),
        };
        // Over HTTP the general endpoint is a base URL the signal's path is appended to; the
        // logs endpoint is used as it is.
        let endpoint = match protocol {
            Protocol::HttpProtobuf if endpoint_var == "OTEL_EXPORTER_OTLP_ENDPOINT" => {
                http_logs_url(&endpoint)
            }
            _ => endpoint,
        };
        let uri = tonic::transport::Endpoint::from_shared(endpoint.clone()).map_err(|e| {
            ConfigError::Endpoint {
                var: endpoint_var,
                value: redacted_endpoint(&endpoint),
                reason: e.to_string(),
            }
        })?;
        let https = match uri.uri().scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(ConfigError::Scheme {
                    var: endpoint_var,
                    value: redacted_endpoint(&endpoint),
                });
            }
        };
        if uri.uri().host().is_none_or(str::is_empty) {
            return Err(ConfigError::Endpoint {
                var: endpoint_var,
                value: redacted_endpoint(&endpoint),
                reason: "no host".to_owned(),
            });
        }

        let ca = env.file(
            "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )?;
        let cert = env.file(
            "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        )?;
        let key = env.file(
            "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        )?;
        let identity = match (cert, key) {
            (Some((_, c)), Some((_, k))) => Some((c, k)),
            (Some((var, _)), None) | (None, Some((var, _))) => {
                return Err(ConfigError::HalfIdentity { set: var });
            }
            (None, None) => None,
        };
        let tls = if https {
            Some(Tls {
                ca: ca.map(|(_, b)| b),
                identity,
            })
        } else {
            if let Some((var, _)) = ca {
                return Err(ConfigError::TlsOnPlaintext { var });
            }
            if identity.is_some() {
                return Err(ConfigError::TlsOnPlaintext {
                    var: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                });
            }
            None
        };

        let mut headers = Vec::new();
        if let Some((var, value)) = env.signal(
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            for kv in key_values(&value) {
                let (k, v) = kv.map_err(|entry| ConfigError::Header {
                    var,
                    entry: redacted_entry(&entry),
                })?;
                let k = k.to_ascii_lowercase();
                let valid = k
                    .parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>()
                    .is_ok()
                    && v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                        .is_ok();
                if !valid {
                    return Err(ConfigError::Header {
                        var,
                        entry: redacted_entry(&format!("{k}={v}")),
                    });
                }
                headers.push((k, v));
            }
        }

        let gzip = match env.signal(
            "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) {
            None => false,
            Some((_, v)) if v == "none" => false,
            Some((_, v)) if v == "gzip" => true,
            Some((var, value)) => return Err(ConfigError::Compression { var, value }),
        };

        let timeout_var = if env.var("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT").is_some() {
            "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT"
        } else {
            "OTEL_EXPORTER_OTLP_TIMEOUT"
        };
        let timeout = millis(
            env.number(timeout_var, " of milliseconds")?,
            DEFAULT_TIMEOUT,
        );

        let mut resource = Vec::new();
        if let Some((_, value)) = env.var("OTEL_RESOURCE_ATTRIBUTES") {
            for kv in key_values(&value) {
                let (k, v) = kv.map_err(|entry| ConfigError::ResourceAttribute { entry })?;
                resource.retain(|(key, _): &(String, String)| *key != k);
                resource.push((k, v));
            }
        }
        if let Some((_, name)) = env.var("OTEL_SERVICE_NAME") {
            resource.retain(|(key, _)| key != "service.name");
            resource.push(("service.name".to_owned(), name));
        }

        let defaults = Batch::default();
        let batch = Batch {
            size: env
                .number("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "")?
                .map_or(defaults.size, |n| usize::try_from(n).unwrap_or(usize::MAX))
                .max(1),
            interval: millis(
                env.number("OTEL_BLRP_SCHEDULE_DELAY", " of milliseconds")?,
                defaults.interval,
            )
            .max(Duration::from_millis(1)),
            queue: env
                .number("OTEL_BLRP_MAX_QUEUE_SIZE", "")?
                .map_or(defaults.queue, |n| usize::try_from(n).unwrap_or(usize::MAX))
                .max(1),
            retry_window: millis(
                env.number("OTEL_BLRP_EXPORT_TIMEOUT", " of milliseconds")?,
                defaults.retry_window,
            ),
        };
        // A batch is never larger than the queue it is taken from.
        let batch = Batch {
            size: batch.size.min(batch.queue),
            ..batch
        };

        Ok(Some(OtlpConfig {
            protocol,
            endpoint,
            tls,
            headers,
            timeout,
            gzip,
            resource,
            batch,
        }))
    }
}

#[cfg(test)]
mod tests {

    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpConfig::from_env(|k| map.get(k).cloned())
    }

    fn error(vars: &[(&str, &str)]) -> String {
        match parse(vars) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("expected an error for {vars:?}, got {c:?}"),
        }
    }

    #[test]
    fn secrets_never_reach_an_error_or_a_log() {
        // A header whose value does not parse: the key is named, the token is not.
        let e = error(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer s3cr3t\u{7f}tok",
            ),
        ]);
        assert!(e.contains("authorization=") && !e.contains("s3cr3t"), "{e}");
        // An entry that is not key=value may be the token itself.
        let e = error(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "s3cr3t-token"),
        ]);
        assert!(!e.contains("s3cr3t"), "{e}");
        // Credentials in the endpoint.
        let e = error(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "ftp://user:s3cr3t@collector:4317",
        )]);
        assert!(
            !e.contains("s3cr3t") && e.contains("***@collector:4317"),
            "{e}"
        );
        assert_eq!(
            redacted_endpoint("https://user:s3cr3t@logs.example:4317/v1?x=1"),
            "https://***@logs.example:4317/v1?x=1"
        );
        assert_eq!(
            redacted_endpoint("http://collector:4317/a@b"),
            "http://collector:4317/a@b"
        );
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(
            parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            None
        );
        // Settings alone do not switch it on.
        assert_eq!(
            parse(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=b")]).unwrap(),
            None
        );
        assert_eq!(
            parse(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_SDK_DISABLED", "true"),
            ])
            .unwrap(),
            None
        );
    }

    #[test]
    fn defaults() {
        let c = parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://collector:4317");
        assert_eq!(c.tls, None);
        assert!(c.headers.is_empty());
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert!(!c.gzip);
        assert!(c.resource.is_empty());
        assert_eq!(c.batch, Batch::default());
    }

    #[test]
    fn logs_variables_win_over_general_ones() {
        let c = parse(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "https://logs:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "B=2,c=x%20y"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "100"),
            ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "https://logs:4317");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.tls, Some(Tls::default()));
        assert_eq!(
            c.headers,
            vec![
                ("b".to_owned(), "2".to_owned()),
                ("c".to_owned(), "x y".to_owned())
            ]
        );
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert!(c.gzip);
        // Only the general endpoint: it is used.
        let c = parse(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.0.0.1:4317")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://10.0.0.1:4317");
    }

    #[test]
    fn resource_and_service_name() {
        let c = parse(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,k8s.cluster.name=prod%2Deu, deployment.environment=x",
            ),
            ("OTEL_SERVICE_NAME", "node-triage"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.resource,
            vec![
                ("k8s.cluster.name".to_owned(), "prod-eu".to_owned()),
                ("deployment.environment".to_owned(), "x".to_owned()),
                ("service.name".to_owned(), "node-triage".to_owned()),
            ]
        );
    }

    #[test]
    fn batch_variables() {
        let c = parse(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "100"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "200"),
            ("OTEL_BLRP_MAX_QUEUE_SIZE", "50"),
            ("OTEL_BLRP_EXPORT_TIMEOUT", "5000"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.batch,
            Batch {
                size: 50,
                interval: Duration::from_millis(200),
                queue: 50,
                retry_window: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn http_protobuf_posts_to_v1_logs() {
        let http = |vars: &[(&str, &str)]| {
            let mut vars = vars.to_vec();
            vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"));
            parse(&vars).unwrap().unwrap()
        };
        // The general endpoint is a base: the signal's path is appended.
        for (base, url) in [
            ("http://c:4318", "http://c:4318/v1/logs"),
            ("http://c:4318/", "http://c:4318/v1/logs"),
            ("https://gw.example/otlp", "https://gw.example/otlp/v1/logs"),
            (
                "https://gw.example/otlp/?t=1",
                "https://gw.example/otlp/v1/logs?t=1",
            ),
        ] {
            let c = http(&[("OTEL_EXPORTER_OTLP_ENDPOINT", base)]);
            assert_eq!(c.protocol, Protocol::HttpProtobuf);
            assert_eq!(c.endpoint, url, "{base}");
        }
        // The logs endpoint is used as it is.
        let c = http(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "https://loki:3100/otlp/v1/logs",
            ),
        ]);
        assert_eq!(c.endpoint, "https://loki:3100/otlp/v1/logs");
        assert_eq!(c.tls, Some(Tls::default()));
        // The logs protocol wins over the general one.
        let c = parse(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://c:4318/v1/logs");
    }

    #[test]
    fn clear_errors() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317");
        assert!(
            error(&[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])
                .contains("grpc (the collector's port 4317) or http/protobuf")
        );
        assert!(error(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")]).contains("scheme"));
        assert!(error(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c:4317")]).contains("scheme"));
        assert!(
            error(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://")])
                .starts_with("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=")
        );
        assert!(
            error(&[ep, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).contains(
                "OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\": expected a whole number of milliseconds"
            )
        );
        assert!(error(&[ep, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]).contains("gzip or none"));
        // An entry without `=` may be a bare token: its length is shown, not its text.
        let e = error(&[ep, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]);
        assert!(
            e.contains("<7 bytes, not shown>") && !e.contains("novalue"),
            "{e}"
        );
        assert!(error(&[ep, ("OTEL_EXPORTER_OTLP_HEADERS", "bad key=v")]).contains("bad key"));
        assert!(error(&[ep, ("OTEL_EXPORTER_OTLP_HEADERS", "k=a%0Ab")]).contains("k="));
        assert!(error(&[ep, ("OTEL_RESOURCE_ATTRIBUTES", "=x")]).contains("=x"));
        assert!(
            error(&[
                ep,
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
            ])
            .contains("cannot read")
        );
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, b"pem").unwrap();
        let ca = ca.to_str().unwrap();
        assert!(
            error(&[ep, ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)]).contains("endpoint is not https")
        );
        let https = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317");
        assert!(error(&[https, ("OTEL_EXPORTER_OTLP_CLIENT_KEY", ca)]).contains("go together"));
        let c = parse(&[
            https,
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", ca),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            c.tls,
            Some(Tls {
                ca: Some(b"pem".to_vec()),
                identity: Some((b"pem".to_vec(), b"pem".to_vec())),
            })
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Cc"), "a b,c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
