//! The aggregator side of the transport: a tonic `FlowService` that validates
//! reports and hands them to an [`IngestSink`], plus `/metrics`, `/healthz`
//! and `/readyz` over HTTP/1 on the same port.
//!
//! Bad input never stops the server, and is bounded before it is decoded:
//! - the samples of an encoded report are counted before anything is
//!   decoded ([`count_encoded_samples`]); over the limit, the report is
//!   refused without allocating for it;
//! - at most [`ServerConfig::max_reports_in_flight`] reports are read,
//!   decoded and counted at once, at most
//!   [`ServerConfig::max_streams_per_connection`] streams per connection;
//! - a report for node X from an address that is not node X's gets
//!   `PermissionDenied` (unless [`ServerConfig::verify_peer_node`] is off);
//! - a sample that breaks a rule is dropped, counted in
//!   `netscope_aggregator_dropped_samples_total{reason}` and logged once per
//!   report; the rest of the report counts;
//! - a report that breaks a report-level rule ([`ValidationError`]) gets
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

use super::convert::{
    count_encoded_samples, report_from_proto, ValidationError, ValidationLimits,
    DEFAULT_MAX_SAMPLES, MAX_ENCODED_SAMPLE_BYTES, REPORT_HEADER_BYTES,
};
use super::pb;
use crate::aggregate::IngestSink;

/// Default bound of one encoded report: 4 MiB, which holds
/// [`DEFAULT_MAX_SAMPLES`] samples of the largest encoding
/// ([`MAX_ENCODED_SAMPLE_BYTES`]) and the report's other fields.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;

const _: () = assert!(
    DEFAULT_MAX_SAMPLES * MAX_ENCODED_SAMPLE_BYTES + REPORT_HEADER_BYTES
        <= DEFAULT_MAX_MESSAGE_BYTES
);

/// Smallest `max_message_bytes` accepted: room for a report with a few
/// samples.
pub const MIN_MESSAGE_BYTES: usize = 4 << 10;

/// Largest `max_message_bytes` accepted: 64 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

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
    /// Most reports read, decoded and counted at once, over all
    /// connections; more wait. Bounds the memory hostile clients can make
    /// the server use to about this many times `max_message_bytes` (plus
    /// the decoded samples).
    pub max_reports_in_flight: usize,
    /// Most concurrent HTTP/2 streams per connection (tonic's default is no
    /// limit), and most requests served at once per connection.
    pub max_streams_per_connection: u32,
    /// Longest time one request may take, reading its body included.
    pub request_timeout: std::time::Duration,
    /// Accept a report for node X only from an address of node X, as the
    /// resolver knows it. Turn off only where agents reach the aggregator
    /// through NAT.
    pub verify_peer_node: bool,
}

/// A [`ServerConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_message_bytes` out of range.
    #[error("the maximum message size of {value} bytes is outside [{min}, {max}]")]
    MessageBytes {
        /// The value.
        value: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// A limit that must be at least 1 is 0.
    #[error("{what} must be at least 1")]
    Zero {
        /// Which limit.
        what: &'static str,
    },
}

impl ServerConfig {
    /// Checks that the settings can work.
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(ConfigError::MessageBytes {
                value: self.max_message_bytes,
                min: MIN_MESSAGE_BYTES,
                max: MAX_MESSAGE_BYTES,
            });
        }
        for (what, v) in [
            ("the sample limit", self.limits.max_samples),
            ("max_reports_in_flight", self.max_reports_in_flight),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection as usize,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { what });
            }
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            limits: ValidationLimits::default(),
            tls: None,
            reflection: true,
            shutdown_grace: std::time::Duration::from_secs(10),
            max_reports_in_flight: 4,
            max_streams_per_connection: 4,
            request_timeout: std::time::Duration::from_secs(15),
            verify_peer_node: true,
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
    /// `/report` body (JSON, the Service estimate); `None` answers 404. The
    /// function bounds its own output.
    pub report: Option<MetricsRender>,
}

impl std::fmt::Debug for HttpEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEndpoints")
            .field("metrics", &self.metrics.is_some())
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field("report", &self.report.is_some())
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
    /// The settings cannot work.
    #[error("invalid server settings")]
    Config {
        /// What is wrong.
        #[source]
        source: ConfigError,
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
    metrics::counter!(crate::metrics::AGGREGATOR_REJECTED_REPORTS_TOTAL, "reason" => reason)
        .increment(1);
    match peer {
        Some(peer) => warn!(%peer, reason, %detail, "rejected a report"),
        None => warn!(reason, %detail, "rejected a report"),
    }
}

/// The label value of `netscope_aggregator_rejected_reports_total{reason}`
/// for a report-level validation error.
fn rejection_reason(e: &ValidationError) -> &'static str {
    match e {
        ValidationError::WindowInFuture { .. } => "future_window",
        ValidationError::ImplausibleBytes { .. } => "implausible",
        ValidationError::TooManySamples { .. } => "too_many_samples",
        _ => "invalid",
    }
}

/// What the bounded decoder hands the service: a decoded report, or why it
/// was not decoded.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed report, not validated yet.
    Report(pb::FlowReport),
    /// More samples than the limit: nothing was decoded.
    TooManySamples {
        /// Samples on the wire.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Not a `FlowReport` message.
    Malformed(String),
}

/// A tonic codec for `FlowService/Report` that counts a report's samples on
/// the wire before decoding it, and reserves exactly that many.
#[derive(Debug, Clone, Copy)]
pub struct BoundedCodec {
    max_samples: usize,
}

impl BoundedCodec {
    /// A codec refusing reports of more than `max_samples` samples.
    pub fn new(max_samples: usize) -> Self {
        BoundedCodec { max_samples }
    }
}

impl tonic::codec::Codec for BoundedCodec {
    type Encode = pb::ReportAck;
    type Decode = Incoming;
    type Encoder = AckEncoder;
    type Decoder = BoundedCodec;
    fn encoder(&mut self) -> AckEncoder {
        AckEncoder
    }
    fn decoder(&mut self) -> BoundedCodec {
        *self
    }
}

/// Encodes acknowledgements.
#[derive(Debug, Clone, Copy, Default)]
pub struct AckEncoder;

impl tonic::codec::Encoder for AckEncoder {
    type Item = pb::ReportAck;
    type Error = Status;
    fn encode(
        &mut self,
        item: pb::ReportAck,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        prost::Message::encode(&item, dst)
            .map_err(|e| Status::internal(format!("encoding the acknowledgement: {e}")))
    }
}

impl tonic::codec::Decoder for BoundedCodec {
    type Item = Incoming;
    type Error = Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Incoming>, Status> {
        use prost::bytes::Buf;
        let len = src.remaining();
        // The message is one contiguous buffer in tonic; copy only if not.
        let copied;
        let wire: &[u8] = if src.chunk().len() >= len {
            &src.chunk()[..len]
        } else {
            copied = src.copy_to_bytes(len);
            &copied
        };
        let incoming = match count_encoded_samples(wire) {
            None => Incoming::Malformed(String::from(
                "report is not a valid netscope.v1.FlowReport protobuf message",
            )),
            Some(count) if count > self.max_samples => Incoming::TooManySamples {
                count,
                max: self.max_samples,
            },
            Some(count) => {
                let mut r = pb::FlowReport::default();
                r.samples.reserve_exact(count);
                match prost::Message::merge(&mut r, wire) {
                    Ok(()) => Incoming::Report(r),
                    Err(e) => Incoming::Malformed(format!(
                        "report is not a valid netscope.v1.FlowReport protobuf message: {e}"
                    )),
                }
            }
        };
        if src.remaining() > 0 {
            src.advance(src.remaining());
        }
        Ok(Some(incoming))
    }
}

/// The `FlowService` implementation: bound, authorize, validate, ingest.
pub struct FlowServer {
    sink: Arc<dyn IngestSink>,
    limits: ValidationLimits,
    max_message_bytes: usize,
    verify_peer_node: bool,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl FlowServer {
    /// A service feeding `sink`, with the limits of `config`.
    pub fn new(sink: Arc<dyn IngestSink>, config: &ServerConfig) -> Self {
        FlowServer {
            sink,
            limits: config.limits,
            max_message_bytes: config.max_message_bytes,
            verify_peer_node: config.verify_peer_node,
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.max_reports_in_flight.max(1),
            )),
        }
    }

    /// The tonic service, with the size limit and the status rewriting
    /// (see the module docs).
    pub fn into_service(self) -> RejectionStatus<FlowRoute> {
        let max = self.max_message_bytes;
        RejectionStatus {
            inner: FlowRoute {
                server: Arc::new(self),
            },
            max_message_bytes: max,
        }
    }

    async fn report(&self, request: Request<Incoming>) -> Result<Response<pb::ReportAck>, Status> {
        let peer = request.remote_addr();
        let wire = match request.into_inner() {
            Incoming::Report(r) => r,
            Incoming::TooManySamples { count, max } => {
                let e = ValidationError::TooManySamples { count, max };
                reject("too_many_samples", peer, &e);
                return Err(Status::invalid_argument(e.to_string()));
            }
            Incoming::Malformed(text) => {
                reject("malformed", peer, &text);
                return Err(Status::invalid_argument(text));
            }
        };
        let now = SystemTime::now();
        let validated = match report_from_proto(wire, &self.limits, now) {
            Ok(v) => v,
            Err(e) => {
                reject(rejection_reason(&e), peer, &e);
                return Err(Status::invalid_argument(e.to_string()));
            }
        };
        if self.verify_peer_node {
            let Some(addr) = peer else {
                let text = "the caller's address is unknown; cannot tell which node it is";
                reject("not_the_node", peer, &text);
                return Err(Status::permission_denied(text));
            };
            if let Err(e) = self.sink.authorize(&validated.report.node, addr.ip(), now) {
                reject("not_the_node", peer, &e);
                return Err(Status::permission_denied(e.to_string()));
            }
        }
        let report = validated.report;
        if let Some(first) = &validated.drops.first {
            for (reason, n) in validated.drops.iter() {
                metrics::counter!(crate::metrics::AGGREGATOR_DROPPED_SAMPLES_TOTAL, "reason" => reason.as_str())
                    .increment(n);
            }
            warn!(
                peer = ?peer,
                node = ?report.node,
                seq = report.seq,
                dropped = validated.drops.total(),
                first = %first,
                "dropped invalid samples; the rest of the report counts"
            );
        }
        let seq = report.seq;
        let sink = self.sink.clone();
        // Counting is CPU work on a validated report; keep it off the I/O
        // threads when it is large.
        let outcome = if report.samples.len() > 4096 {
            match tokio::task::spawn_blocking(move || sink.ingest(report, now)).await {
                Ok(o) => o,
                Err(e) => return Err(Status::unavailable(format!("ingest task failed: {e}"))),
            }
        } else {
            sink.ingest(report, now)
        };
        if let Some(refusal) = outcome.refused {
            reject("seq_jump", peer, &refusal);
            return Err(Status::invalid_argument(refusal.to_string()));
        }
        Ok(Response::new(pb::ReportAck {
            sequence: seq,
            duplicate: outcome.duplicate,
        }))
    }
}

struct ReportMethod(Arc<FlowServer>);

impl tonic::server::UnaryService<Incoming> for ReportMethod {
    type Response = pb::ReportAck;
    type Future = BoxFuture<Response<pb::ReportAck>, Status>;
    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.report(request).await })
    }
}

/// The `netscope.v1.FlowService` route: `Report` through the
/// [`BoundedCodec`], at most `max_reports_in_flight` at once.
#[derive(Clone)]
pub struct FlowRoute {
    server: Arc<FlowServer>,
}

impl NamedService for FlowRoute {
    const NAME: &'static str = "netscope.v1.FlowService";
}

impl Service<http::Request<Body>> for FlowRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let server = self.server.clone();
        if req.uri().path() != "/netscope.v1.FlowService/Report" {
            return Box::pin(
                async move { Ok(Status::unimplemented("no such method").into_http()) },
            );
        }
        Box::pin(async move {
            // The permit is held while the body is read, decoded and counted.
            let Ok(_permit) = server.in_flight.clone().acquire_owned().await else {
                return Ok(Status::unavailable("the server is stopping").into_http());
            };
            let codec = BoundedCodec::new(server.limits.max_samples);
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(Some(server.max_message_bytes), Some(64 << 10));
            Ok(grpc.unary(ReportMethod(server), req).await)
        })
    }
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
    let report = http_endpoints.report.clone();
    axum::Router::new()
        .route(
            "/report",
            get(move || {
                let report = report.clone();
                async move {
                    match report {
                        Some(render) => (
                            StatusCode::OK,
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            render(),
                        ),
                        None => (
                            StatusCode::NOT_FOUND,
                            [(axum::http::header::CONTENT_TYPE, "text/plain")],
                            String::from("no report\n"),
                        ),
                    }
                }
            }),
        )
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
    let flow = FlowServer::new(sink, config).into_service();
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
    config
        .validate()
        .map_err(|source| ServeError::Config { source })?;
    if !config.verify_peer_node {
        warn!("reports are accepted for any node from any address (peer node check off): any host that reaches this port can report any node's traffic");
    }
    let routes = routes(sink, &config, http_endpoints)?;
    let mut builder = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(Some(config.max_streams_per_connection))
        .concurrency_limit_per_connection(config.max_streams_per_connection as usize)
        .timeout(config.request_timeout);
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
