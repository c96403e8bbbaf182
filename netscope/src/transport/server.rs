//! The aggregator side of the transport: a tonic `FlowService` that validates
//! reports and hands them to an [`IngestSink`], plus `/metrics`, `/healthz`
//! and `/readyz` over HTTP/1 on the same port.
//!
//! Bad input never stops the server:
//! - a report that decodes but breaks a rule ([`ValidationError`]) gets
//!   `InvalidArgument`;
//! - bytes that are not a `FlowReport` get `InvalidArgument` (tonic would say
//!   `Internal`);
//! - a message over the size limit gets `ResourceExhausted` (tonic would say
//!   `OutOfRange`).
//!
//! Each is counted in `netscope_aggregator_rejected_reports_total{reason}`
//! and logged.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::convert::{report_from_proto, ValidationError, ValidationLimits};
use super::pb;
use super::pb::flow_service_server::{FlowService, FlowServiceServer};
use crate::aggregate::IngestSink;

/// Default bound of one encoded report: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// PEM material for serving TLS, and optionally requiring client
/// certificates (mTLS).
#[derive(Clone)]
pub struct ServerTls {
    /// Server certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Server private key, PEM.
    pub key_pem: Vec<u8>,
    /// CA bundle that client certificates must chain to. `Some` turns on mTLS.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest encoded report accepted.
    pub max_message_bytes: usize,
    /// Content rules.
    pub limits: ValidationLimits,
    /// TLS, if any.
    pub tls: Option<ServerTls>,
    /// Serve gRPC reflection (v1 and v1alpha), so `grpcurl` needs no
    /// `.proto` file.
    pub reflection: bool,
    /// After the shutdown signal, how long in-flight requests may take
    /// before the server stops anyway (a peer that never closes its
    /// connection must not hold the process).
    pub shutdown_grace: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            limits: ValidationLimits::default(),
            tls: None,
            reflection: true,
            shutdown_grace: std::time::Duration::from_secs(10),
        }
    }
}

/// Renders the Prometheus text exposition for `/metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// The HTTP side of the port.
#[derive(Clone, Default)]
pub struct HttpEndpoints {
    /// `/metrics` body; `None` answers 404.
    pub metrics: Option<MetricsRender>,
    /// `/readyz` answers 200 once this is true, 503 before.
    pub ready: Arc<AtomicBool>,
    /// `/healthz` answers 503 once this is set and false (a supervised
    /// part of the process stopped); `None`: always 200.
    pub live: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for HttpEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEndpoints")
            .field("metrics", &self.metrics.is_some())
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish()
    }
}

/// Errors from serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The TLS material was not usable.
    #[error("TLS configuration for {addr} is invalid")]
    Tls {
        /// Listen address.
        addr: String,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server failed.
    #[error("serving on {addr} failed")]
    Serve {
        /// Listen address.
        addr: String,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// Building the reflection service failed.
    #[error("gRPC reflection could not load the netscope.v1 descriptors")]
    Reflection {
        /// The error.
        #[source]
        source: tonic_reflection::server::Error,
    },
}

fn reject(reason: &'static str, peer: Option<SocketAddr>, detail: &dyn std::fmt::Display) {
    metrics::counter!("netscope_aggregator_rejected_reports_total", "reason" => reason)
        .increment(1);
    match peer {
        Some(peer) => warn!(%peer, reason, %detail, "rejected a report"),
        None => warn!(reason, %detail, "rejected a report"),
    }
}

/// The `FlowService` implementation: validate, then ingest.
pub struct FlowServer {
    sink: Arc<dyn IngestSink>,
    limits: ValidationLimits,
    max_message_bytes: usize,
}

impl FlowServer {
    /// A service feeding `sink`.
    pub fn new(
        sink: Arc<dyn IngestSink>,
        limits: ValidationLimits,
        max_message_bytes: usize,
    ) -> Self {
        FlowServer {
            sink,
            limits,
            max_message_bytes,
        }
    }

    /// The tonic service, with the size limit and the status rewriting
    /// (see the module docs).
    pub fn into_service(self) -> RejectionStatus<FlowServiceServer<FlowServer>> {
        let max = self.max_message_bytes;
        RejectionStatus {
            inner: FlowServiceServer::new(self)
                .max_decoding_message_size(max)
                .max_encoding_message_size(64 << 10),
            max_message_bytes: max,
        }
    }
}

#[tonic::async_trait]
impl FlowService for FlowServer {
    async fn report(
        &self,
        request: Request<pb::FlowReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let peer = request.remote_addr();
        let report = match report_from_proto(request.into_inner(), &self.limits) {
            Ok(r) => r,
            Err(e) => {
                reject("invalid", peer, &e);
                return Err(invalid(&e));
            }
        };
        let seq = report.seq;
        let sink = self.sink.clone();
        // Counting is CPU work on a validated report; keep it off the I/O
        // threads when it is large.
        let outcome = if report.samples.len() > 4096 {
            match tokio::task::spawn_blocking(move || sink.ingest(report, SystemTime::now())).await
            {
                Ok(o) => o,
                Err(e) => return Err(Status::unavailable(format!("ingest task failed: {e}"))),
            }
        } else {
            sink.ingest(report, SystemTime::now())
        };
        Ok(Response::new(pb::ReportAck {
            sequence: seq,
            duplicate: outcome.duplicate,
        }))
    }
}

fn invalid(e: &ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Wraps the generated service and turns tonic's own rejections into the
/// codes the protocol promises: `OutOfRange` (message too large) becomes
/// `ResourceExhausted`, `Internal` from a protobuf decode failure becomes
/// `InvalidArgument`. Each is counted and logged.
#[derive(Clone)]
pub struct RejectionStatus<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S: NamedService> NamedService for RejectionStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for RejectionStatus<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let max = self.max_message_bytes;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            rewrite_status(&mut resp, max, peer);
            Ok(resp)
        })
    }
}

fn rewrite_status(resp: &mut http::Response<Body>, max: usize, peer: Option<SocketAddr>) {
    let headers = resp.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (new_code, reason, text) = match code {
        Some(c) if c == tonic::Code::OutOfRange as i32 => (
            tonic::Code::ResourceExhausted,
            "oversize",
            format!("report exceeds the maximum message size of {max} bytes"),
        ),
        Some(c) if c == tonic::Code::Internal as i32 && message.contains("decode") => (
            tonic::Code::InvalidArgument,
            "malformed",
            String::from("report is not a valid netscope.v1.FlowReport protobuf message"),
        ),
        _ => return,
    };
    reject(reason, peer, &text);
    headers.insert("grpc-status", http::HeaderValue::from(new_code as i32));
    // Plain ASCII without '%' needs no percent-encoding.
    if let Ok(v) = http::HeaderValue::from_str(&text) {
        headers.insert("grpc-message", v);
    }
}

/// The HTTP routes alone: `/metrics`, `/healthz`, `/readyz`.
pub fn http_router(http_endpoints: HttpEndpoints) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;

    let metrics = http_endpoints.metrics.clone();
    let ready = http_endpoints.ready.clone();
    let live = http_endpoints.live.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    match metrics {
                        Some(render) => (StatusCode::OK, render()),
                        None => (StatusCode::NOT_FOUND, String::from("no metrics recorder\n")),
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let live = live.as_ref().is_none_or(|l| l.load(Ordering::Acquire));
                async move {
                    if live {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "a supervised task stopped\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Acquire);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
}

/// Serves only the HTTP routes (an agent's `--debug-addr`) until `shutdown`
/// resolves.
///
/// # Errors
/// [`ServeError::Serve`] when the server fails.
pub async fn serve_http<F>(
    listener: tokio::net::TcpListener,
    http_endpoints: HttpEndpoints,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let addr = listener
        .local_addr()
        .map_or_else(|_| String::from("?"), |a| a.to_string());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(http_router(http_endpoints)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|source| ServeError::Serve { addr, source })
}

/// Builds every route of the port: `netscope.v1.FlowService`, reflection if
/// enabled, `/metrics`, `/healthz`, `/readyz`.
///
/// # Errors
/// [`ServeError::Reflection`] when the embedded descriptors do not load.
pub fn routes(
    sink: Arc<dyn IngestSink>,
    config: &ServerConfig,
    http_endpoints: HttpEndpoints,
) -> Result<tonic::service::Routes, ServeError> {
    let router = http_router(http_endpoints);
    let flow = FlowServer::new(sink, config.limits, config.max_message_bytes).into_service();
    let mut routes = tonic::service::Routes::from(router).add_service(flow);
    if config.reflection {
        let v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|source| ServeError::Reflection { source })?;
        let v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|source| ServeError::Reflection { source })?;
        routes = routes.add_service(v1).add_service(v1alpha);
    }
    Ok(routes)
}

/// Serves gRPC and HTTP on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish (so every counted report is also
/// acknowledged), for at most `shutdown_grace`.
///
/// # Errors
/// [`ServeError`] for bad TLS material or a failing server.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    sink: Arc<dyn IngestSink>,
    config: ServerConfig,
    http_endpoints: HttpEndpoints,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let addr = listener
        .local_addr()
        .map_or_else(|_| String::from("?"), |a| a.to_string());
    let routes = routes(sink, &config, http_endpoints)?;
    let mut builder = tonic::transport::Server::builder().accept_http1(true);
    if let Some(tls) = &config.tls {
        let mut t = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        );
        if let Some(ca) = &tls.client_ca_pem {
            t = t.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(t).map_err(|source| ServeError::Tls {
            addr: addr.clone(),
            source,
        })?;
    }
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let server = builder
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    let grace = config.shutdown_grace;
    tokio::select! {
        res = server => res.map_err(|source| ServeError::Serve { addr, source }),
        _ = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            warn!(?grace, "connections still open after the shutdown grace period; stopping anyway");
            Ok(())
        }
    }
}
