//! Typed configuration: defaults (`#[serde(default)]`) → an optional TOML file → `APP_…` environment variables
//! (`__` separates levels: `APP_DATABASE__URL`, `APP_KAFKA__BROKERS`, `APP_GRPC__LISTEN`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use saga_runtime::db::DatabaseSettings;
use saga_runtime::http::HttpSettings;

use crate::audit::AuditSettings;
use crate::auth::AuthSettings;
use crate::jobs::JobSettings;
use crate::retention::RetentionSettings;
use saga_runtime::kafka::KafkaSettings;
use saga_runtime::outbox::RelaySettings;
use saga_runtime::telemetry::LogFormat;
use saga_runtime::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub grpc: GrpcSettings,
    /// Metrics, health and the dashboard.
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    pub relay: RelaySettings,
    pub replies: ReplySettings,
    pub timers: TimerSettings,
    /// A saga catalog file; the built-in `orchestrator/sagas.toml` when unset.
    pub catalog_path: Option<PathBuf>,
    pub log_format: LogFormat,
    pub auth: AuthSettings,
    pub operator: OperatorSettings,
    /// The consistency audit: participants' ledger endpoints, the periodic audit.
    pub audit: AuditSettings,
    /// Operator bulk work (durable jobs): whether this replica works them, and its lease.
    pub jobs: JobSettings,
    /// How long finished sagas are kept (per saga type) and how fast they are removed.
    pub retention: RetentionSettings,
    /// How many sagas may be in flight before `StartSaga` refuses new ones.
    pub admission: AdmissionSettings,
}

impl Default for Settings {
    fn default() -> Self {
        let mut database = DatabaseSettings::with_url("postgres://postgres@127.0.0.1:5432/saga_orchestrator");
        database.create_if_missing = true;
        Self {
            grpc: GrpcSettings::default(),
            http: HttpSettings::on("127.0.0.1:8080"),
            database,
            kafka: KafkaSettings::default(),
            relay: RelaySettings::default(),
            replies: ReplySettings::default(),
            timers: TimerSettings::default(),
            catalog_path: None,
            log_format: LogFormat::default(),
            auth: AuthSettings::default(),
            operator: OperatorSettings::default(),
            audit: AuditSettings::default(),
            jobs: JobSettings::default(),
            retention: RetentionSettings::default(),
            admission: AdmissionSettings::default(),
        }
    }
}

/// Admission control: when more sagas are in flight (running or compensating, waits for a signal
/// or a person included) than a limit allows, `StartSaga` refuses new ones with
/// RESOURCE_EXHAUSTED and a retry hint instead of queueing them behind the others. The count is
/// read from the database every `refresh_ms` (the same count on every replica); between reads a
/// replica adds what it admitted itself, so replicas together may exceed a limit by what the
/// others admitted within one interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionSettings {
    /// Every saga type together; 0: no limit.
    pub max_in_flight: u64,
    /// Per saga type (`APP_ADMISSION__PER_TYPE__REGISTER_USER=500`); a type not named has only
    /// the overall limit.
    pub per_type: BTreeMap<String, u64>,
    /// How often the sagas in flight are counted, in milliseconds.
    pub refresh_ms: u64,
    /// The retry hint given with a refusal, in milliseconds.
    pub retry_after_ms: u64,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 10_000,
            per_type: BTreeMap::new(),
            refresh_ms: 200,
            retry_after_ms: 1_000,
        }
    }
}

impl AdmissionSettings {
    /// Whether any limit is set (then the count runs).
    pub fn limited(&self) -> bool {
        self.max_in_flight > 0 || self.per_type.values().any(|n| *n > 0)
    }

    /// Refuses a refresh interval of 0 and limits for saga types the catalog does not define.
    pub(crate) fn validate(&self, catalog: &crate::catalog::Catalog) -> anyhow::Result<()> {
        anyhow::ensure!(self.refresh_ms > 0, "admission.refresh_ms must be above 0");
        for name in self.per_type.keys() {
            anyhow::ensure!(
                catalog.latest(name).is_some(),
                "admission.per_type.{name}: no such saga type (known: {})",
                catalog.names().join(", ")
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    /// Address of the gRPC API; port 0 picks a free port (tests).
    pub listen: String,
    /// Largest accepted `payload_json`, in bytes.
    pub max_payload_bytes: usize,
    /// TLS for the API (`APP_GRPC__TLS__…`); plain text when unset.
    pub tls: GrpcTls,
}

/// Server certificate and key, and optionally the CA that client certificates must chain to
/// (mutual TLS: a client without such a certificate is refused during the handshake).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
}

impl GrpcTls {
    /// The tonic TLS configuration, or `None` for plain text. Files are read now, so a bad path
    /// or PEM stops start-up with the file named.
    pub fn server_config(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let files = TlsFiles {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        };
        let Some(identity) = files.load("grpc.tls")? else {
            if self.client_ca_file.is_some() {
                anyhow::bail!(
                    "grpc.tls.client_ca_file (mutual TLS) needs grpc.tls.cert_file and grpc.tls.key_file"
                );
            }
            return Ok(None);
        };
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        if let Some(ca) = &self.client_ca_file {
            let pem = saga_runtime::tls::read_pem("client CA file", ca)?;
            config = config.client_ca_root(Certificate::from_pem(pem));
        }
        Ok(Some(config))
    }
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            max_payload_bytes: 64 * 1024,
            tls: GrpcTls::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplySettings {
    pub enabled: bool,
    /// Logical reply topic (the Kafka prefix is added).
    pub topic: String,
    /// Consumer group shared by all orchestrator replicas (the Kafka topic prefix is added).
    pub group: String,
}

impl Default for ReplySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: "saga.replies".into(),
            group: "saga-orchestrator".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimerSettings {
    pub enabled: bool,
    /// How often the timer loop looks for due deadlines and retries.
    pub interval_ms: u64,
    /// Sagas woken per transaction.
    pub batch_size: i64,
}

impl Default for TimerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 100,
            batch_size: 200,
        }
    }
}

/// Limits on operator actions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperatorSettings {
    /// Sagas per second a bulk replay sends when the request names no rate.
    pub replay_rate_default: f64,
    /// The highest rate a bulk replay may ask for.
    pub replay_rate_max: f64,
    /// Sagas one bulk replay touches when the request names no limit.
    pub replay_limit_default: u32,
    pub replay_limit_max: u32,
}

impl Default for OperatorSettings {
    fn default() -> Self {
        Self {
            replay_rate_default: 20.0,
            replay_rate_max: 500.0,
            replay_limit_default: 1_000,
            replay_limit_max: 10_000,
        }
    }
}

impl Settings {
    /// Loads `APP_CONFIG_FILE` (default `orchestrator.toml`, optional) and the environment.
    pub fn load() -> Result<Self, Box<figment::Error>> {
        saga_runtime::config::load("orchestrator.toml")
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn environment_overrides_nested_settings() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "o.toml",
                "[grpc]\nlisten = \"0.0.0.0:1\"\n[kafka]\nbrokers = \"file:1\"\n",
            )?;
            jail.set_env("APP_CONFIG_FILE", "o.toml");
            jail.set_env("APP_KAFKA__BROKERS", "env:9092");
            jail.set_env("APP_DATABASE__URL", "postgres://u:secret@db/x");
            jail.set_env("APP_KAFKA__CONSUMER__FETCH_WAIT_MAX_MS", "10");
            jail.set_env(
                "APP_AUDIT__CROSS_CHECKS__AUTHORS_REPLICATE_USERS",
                "users.users = posts.authors",
            );
            let s = Settings::load().map_err(|e| e.to_string())?;
            assert_eq!(s.grpc.listen, "0.0.0.0:1");
            assert_eq!(s.kafka.brokers, "env:9092");
            assert_eq!(s.database.url.expose_secret(), "postgres://u:secret@db/x");
            assert!(
                !format!("{s:?}").contains("secret@"),
                "the database URL never prints"
            );
            assert_eq!(
                s.kafka.consumer.get("fetch_wait_max_ms").map(String::as_str),
                Some("10")
            );
            assert!(s.replies.enabled && s.relay.enabled);
            let check = &s.audit.cross_checks["authors_replicate_users"];
            assert_eq!(
                (check.left.to_string(), check.right.to_string()),
                ("users.users".to_owned(), "posts.authors".to_owned())
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_settings_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("o.toml", "[grpc]\nlisen = \"typo\"\n")?;
            jail.set_env("APP_CONFIG_FILE", "o.toml");
            let err = Settings::load().expect_err("typo rejected");
            assert!(err.to_string().contains("lisen"), "{err}");
            Ok(())
        });
    }
}
