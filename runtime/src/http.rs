//! Each service's HTTP port: `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (its database and the Kafka brokers answer, and its relay and consumers can do their
//! work: see [`crate::health`]). The orchestrator mounts its dashboard on the same server.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum_server::tls_rustls::RustlsConfig;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rdkafka::producer::Producer as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::kafka::Producer;
use crate::tls::{TlsError, TlsFiles};

/// Histogram buckets for durations in seconds (1 ms … 60 s), fine around the 5-50 ms range where
/// publish lag and step latencies live.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the metrics/health (and, for the orchestrator, dashboard) port; port 0 picks one.
    pub listen: String,
    /// Serve HTTPS with this certificate and key (`APP_HTTP__TLS__CERT_FILE` / `KEY_FILE`).
    pub tls: TlsFiles,
}

impl HttpSettings {
    pub fn on(listen: &str) -> Self {
        Self {
            listen: listen.into(),
            tls: TlsFiles::default(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self::on("127.0.0.1:8080")
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (only possible in tests): render an empty registry.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Gauges a service samples itself at scrape time (the orchestrator: sagas by state).
pub type Sampler = Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// What `/readyz` checks and `/metrics` samples.
#[derive(Clone)]
pub struct Probes {
    pub pool: PgPool,
    pub producer: Producer,
    /// The background loops' own reports.
    pub health: Health,
    /// The service's own scrape-time gauges.
    pub samplers: Vec<Sampler>,
}

impl Probes {
    async fn database(&self) -> Result<(), String> {
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool);
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2 s".into()),
        }
    }

    async fn broker(&self) -> Result<(), String> {
        let producer = self.producer.get();
        let lookup = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|m| m.brokers().len())
        });
        match lookup.await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(Ok(_)) => Err("no brokers in the metadata".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Gauges read at scrape time: pool usage and the outbox backlog.
    async fn sample(&self) {
        self.health.sample();
        for sampler in &self.samplers {
            sampler().await;
        }
        let size = self.pool.size() as f64;
        let idle = self.pool.num_idle() as f64;
        metrics::gauge!("db_pool_connections", "state" => "idle").set(idle);
        metrics::gauge!("db_pool_connections", "state" => "in_use").set(size - idle);
        metrics::gauge!("db_pool_max_connections").set(f64::from(self.pool.options().get_max_connections()));
        let backlog: Result<(i64, Option<f64>), _> = sqlx::query_as(
            "SELECT count(*), extract(epoch FROM clock_timestamp() - min(created_at))::float8 FROM outbox",
        )
        .fetch_one(&self.pool)
        .await;
        if let Ok((rows, oldest)) = backlog {
            metrics::gauge!("outbox_backlog").set(rows as f64);
            metrics::gauge!("outbox_oldest_age_seconds").set(oldest.unwrap_or(0.0));
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(probes): State<Probes>) -> Response {
    let (db, broker) = tokio::join!(probes.database(), probes.broker());
    let problems = probes.health.problems();
    let status = if db.is_ok() && broker.is_ok() && problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let work = if problems.is_empty() {
        "ok".to_owned()
    } else {
        problems.join("; ")
    };
    (
        status,
        axum::Json(json!({"database": show(&db), "broker": show(&broker), "work": work})),
    )
        .into_response()
}

async fn render_metrics(State(probes): State<Probes>) -> Response {
    probes.sample().await;
    let handle = metrics();
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// `/metrics`, `/healthz`, `/readyz`, plus the service's own routes. Installs the metrics recorder
/// (if nothing did yet), so nothing counted after start-up is lost.
pub fn router(probes: Probes, extra: Router) -> Router {
    metrics();
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probes)
        .merge(extra)
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

/// A bound HTTP port, with its TLS configuration when HTTPS is on.
pub struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<RustlsConfig>,
}

impl HttpListener {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` when the port serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Binds the HTTP port (so the caller knows the address before serving), after loading the TLS
/// certificate and key when configured.
pub async fn bind(settings: &HttpSettings) -> Result<HttpListener, BindError> {
    let tls = match settings.tls.load("http.tls")? {
        Some(identity) => Some(RustlsConfig::from_config(Arc::new(identity.server_config()?))),
        None => None,
    };
    let listen = |e| BindError::Listen(settings.listen.clone(), e);
    let listener = TcpListener::bind(&settings.listen).await.map_err(listen)?;
    let addr = listener.local_addr().map_err(listen)?;
    Ok(HttpListener { listener, addr, tls })
}

/// Serves until `shutdown` (open connections get 5 s to finish).
pub async fn serve(listener: HttpListener, router: Router, shutdown: CancellationToken) {
    let served = match listener.tls {
        None => {
            axum::serve(listener.listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stop = handle.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.graceful_shutdown(Some(Duration::from_secs(5)));
            });
            match listener
                .listener
                .into_std()
                .and_then(|l| axum_server::from_tcp_rustls(l, tls))
            {
                Ok(server) => server.handle(handle).serve(router.into_make_service()).await,
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server failed");
    }
}
