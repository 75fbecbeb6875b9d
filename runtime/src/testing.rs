//! Integration-test helpers (feature `test-util`): a fresh database per test, a unique topic prefix
//! per test on the shared broker, and a reader that collects what lands on a topic.
//!
//! Where the real services are: `SAGA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432`)
//! and `SAGA_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`). `scripts/test.sh` starts both.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::migrate::Migrator;
use sqlx::{Connection, PgPool};

use crate::kafka::KafkaSettings;

/// The server URL (no database name) tests create their databases on.
pub fn database_server_url() -> String {
    std::env::var("SAGA_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("SAGA_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A unique lowercase token for names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::now_v7().simple().to_string()[16..])
}

/// A freshly created database with `migrator` applied. Returns the pool and the database URL.
pub async fn fresh_database(migrator: &Migrator) -> (PgPool, String) {
    let server = database_server_url();
    let name = unique("test_");
    let admin = crate::db::connect_options(&server).expect("SAGA_TEST_DATABASE_URL is a valid URL");
    let mut conn = sqlx::PgConnection::connect_with(&admin.clone().database("postgres"))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {server} ({e}); run scripts/test.sh"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let url = format!("{}/{name}", server.trim_end_matches('/'));
    let pool = PgPool::connect_with(admin.database(&name))
        .await
        .expect("connect to test database");
    migrator
        .run(&pool)
        .await
        .expect("migrations apply to a fresh database");
    (pool, url)
}

/// Kafka settings for one test: the shared broker, a topic prefix no other test uses, few partitions.
pub fn kafka_settings() -> KafkaSettings {
    kafka_settings_for(&kafka_brokers())
}

/// Like [`kafka_settings`], for the brokers at `brokers` (e.g. a [`KafkaBroker`] of the test's own).
pub fn kafka_settings_for(brokers: &str) -> KafkaSettings {
    let brokers = brokers.to_owned();
    let first = brokers.split(',').next().unwrap_or_default();
    let reachable = first
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no Kafka broker at {brokers} (SAGA_TEST_KAFKA_BROKERS); run scripts/test.sh"
    );
    KafkaSettings {
        brokers,
        topic_prefix: format!("{}.", unique("t")),
        create_topics: true,
        partitions: 2,
        replication: 1,
        max_batch: 256,
        client: BTreeMap::new(),
        consumer: BTreeMap::new(),
        producer: BTreeMap::new(),
        security: crate::kafka::KafkaSecurity::default(),
        unready_after_ms: 15_000,
    }
}

/// A received record, owned and easy to assert on.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl From<OwnedMessage> for Record {
    fn from(m: OwnedMessage) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        let v = h
                            .value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default();
                        (h.key.to_owned(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        }
    }
}

/// Reads a topic from the beginning of every partition, without a consumer group.
pub struct TopicReader {
    consumer: StreamConsumer,
}

impl TopicReader {
    /// Creates the topic if needed and assigns all its partitions from offset 0.
    pub async fn new(settings: &KafkaSettings, topic: &str) -> Self {
        settings
            .ensure_topics(&[topic.to_owned()])
            .await
            .expect("create topic");
        let cfg = settings.reader_config(&unique("reader-"));
        // Look the partitions up with a blocking client, off the async runtime.
        let meta_cfg = cfg.clone();
        let name = topic.to_owned();
        let partitions = tokio::task::spawn_blocking(move || {
            let probe: BaseConsumer = meta_cfg.create().expect("metadata client");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let found = probe
                    .fetch_metadata(Some(&name), Duration::from_secs(2))
                    .ok()
                    .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
                    .unwrap_or(0);
                if found > 0 || Instant::now() > deadline {
                    return found as i32;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .expect("metadata lookup");
        assert!(partitions > 0, "topic {topic} has no partitions");
        let consumer: StreamConsumer = cfg.create().expect("reader consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition offset");
        }
        consumer.assign(&tpl).expect("assign partitions");
        Self { consumer }
    }

    /// The next record, or `None` after `timeout`.
    pub async fn next(&self, timeout: Duration) -> Option<Record> {
        match tokio::time::timeout(timeout, self.consumer.recv()).await {
            Ok(Ok(m)) => Some(m.detach().into()),
            Ok(Err(e)) => panic!("kafka read error: {e}"),
            Err(_) => None,
        }
    }

    /// Exactly `n` records, failing the test if they do not arrive within `timeout`.
    pub async fn take(&self, n: usize, timeout: Duration) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(r) => out.push(r),
                None => panic!(
                    "expected {n} records within {timeout:?}, got {}: {out:#?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Everything that arrives until the topic has been quiet for `quiet`.
    pub async fn drain(&self, quiet: Duration) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some(r) = self.next(quiet).await {
            out.push(r);
        }
        out
    }
}

/// Certificates for TLS tests, generated fresh (rcgen) and written as PEM files: a CA; a server
/// certificate for `localhost` and `127.0.0.1` and a client certificate, both signed by it; and
/// a second CA that signed nothing here (a client trusting only it must refuse the server).
pub struct TestPki {
    pub dir: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    pub other_ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
}

impl TestPki {
    pub fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let dir = std::env::temp_dir().join(unique("saga-pki"));
        std::fs::create_dir_all(&dir).expect("PKI directory");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().expect("CA key");
            let cert = params.self_signed(&key).expect("CA certificate");
            (cert, Issuer::new(params, key))
        };
        let leaf = |issuer: &Issuer<'_, KeyPair>, names: &[&str], usage| {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = CertificateParams::new(names.clone()).expect("leaf params");
            params
                .distinguished_name
                .push(DnType::CommonName, names[0].as_str());
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, issuer).expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (ca_cert, ca_issuer) = ca("saga test CA");
        let (other_cert, _) = ca("someone else's CA");
        let (server_cert, server_key) = leaf(
            &ca_issuer,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(&ca_issuer, &["sagactl"], ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca: write("ca.pem", ca_cert.pem()),
            other_ca: write("other-ca.pem", other_cert.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            dir,
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
