//! The agent side of the transport: a [`ReportSink`] over a tonic channel.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::convert::report_to_proto;
use super::pb::flow_service_client::FlowServiceClient;
use super::server::DEFAULT_MAX_MESSAGE_BYTES;
use crate::report::{Ack, Report, ReportSink, SendError};

/// PEM material for a TLS connection to the aggregator.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA bundle the server certificate must chain to; `None` uses no extra
    /// roots (then the server must be reachable under a name a configured
    /// root signs, which for netscope means: give a CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key for mTLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify the server certificate against; defaults to the
    /// endpoint's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("mtls", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// Settings of a [`GrpcSink`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` or a full `http://` / `https://` URI. A bare `host:port`
    /// gets `https://` when `tls` is set, `http://` otherwise.
    pub endpoint: String,
    /// Deadline of one report RPC.
    pub request_timeout: Duration,
    /// Deadline of connecting.
    pub connect_timeout: Duration,
    /// TLS, if any.
    pub tls: Option<ClientTls>,
    /// Largest report to send; must not exceed the server's limit.
    pub max_message_bytes: usize,
}

impl ClientConfig {
    /// Defaults for `endpoint`: 5 s per request, 3 s to connect, no TLS.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            tls: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Errors from setting up a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint is not a valid URI.
    #[error("invalid aggregator endpoint {endpoint:?}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS material was not usable.
    #[error("TLS configuration for {endpoint} is invalid")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Sends reports over gRPC. Connects lazily and reconnects by itself, so it
/// can be built while the aggregator is down.
#[derive(Debug, Clone)]
pub struct GrpcSink {
    endpoint: String,
    client: FlowServiceClient<Channel>,
}

impl GrpcSink {
    /// A sink for `config`. Does not connect yet. Must be called within a
    /// Tokio runtime.
    ///
    /// # Errors
    /// [`ClientError`] for a bad endpoint or bad TLS material.
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let uri = if config.endpoint.contains("://") {
            config.endpoint.clone()
        } else if config.tls.is_some() {
            format!("https://{}", config.endpoint)
        } else {
            format!("http://{}", config.endpoint)
        };
        let mut ep = Endpoint::from_shared(uri.clone())
            .map_err(|source| ClientError::Endpoint {
                endpoint: config.endpoint.clone(),
                source,
            })?
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &config.tls {
            let mut t = ClientTlsConfig::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &tls.domain {
                t = t.domain_name(d.clone());
            }
            ep = ep.tls_config(t).map_err(|source| ClientError::Tls {
                endpoint: config.endpoint.clone(),
                source,
            })?;
        }
        let client = FlowServiceClient::new(ep.connect_lazy())
            .max_encoding_message_size(config.max_message_bytes)
            .max_decoding_message_size(64 << 10);
        Ok(GrpcSink {
            endpoint: uri,
            client,
        })
    }
}

impl ReportSink for GrpcSink {
    fn send<'a>(
        &'a self,
        report: &'a Report,
    ) -> Pin<Box<dyn Future<Output = Result<Ack, SendError>> + Send + 'a>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let seq = report.seq;
            let resp = client
                .report(report_to_proto(report))
                .await
                .map_err(|source| SendError::Rpc {
                    endpoint: self.endpoint.clone(),
                    seq,
                    source,
                })?
                .into_inner();
            if resp.sequence != seq {
                return Err(SendError::AckMismatch {
                    endpoint: self.endpoint.clone(),
                    seq,
                    acked: resp.sequence,
                });
            }
            Ok(Ack {
                seq,
                duplicate: resp.duplicate,
            })
        })
    }
}
