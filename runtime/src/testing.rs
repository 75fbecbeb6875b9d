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

/// The `application_name` of the connections of a [`fresh_database`] pool: a test can tell its own
/// sessions from the services' in `pg_stat_activity`.
pub const TEST_SESSION_NAME: &str = "saga-test";

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
    let pool = PgPool::connect_with(admin.database(&name).application_name(TEST_SESSION_NAME))
        .await
        .expect("connect to test database");
    migrator
        .run(&pool)
        .await
        .expect("migrations apply to a fresh database");
    (pool, url)
}

/// Fails the test unless PostgreSQL has never analyzed `table` (so the planner knows only its size
/// on disk): the state of a new deployment's tables, which plan checks reproduce.
pub async fn assert_never_analyzed(pool: &PgPool, table: &str) {
    let tuples: f32 = sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = $1")
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("the table exists");
    assert!(
        tuples < 0.0,
        "{table} must not have been analyzed, reltuples = {tuples}"
    );
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
        instance_id: None,
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

/// Where [`free_port`] takes ports from: below Linux's ephemeral range (32768–60999), where the
/// kernel picks the source port of every outgoing connection and the port of every `bind(0)`,
/// and clear of the fixed ports the scripts use (19092, 29092, …).
const TEST_PORTS: std::ops::Range<u16> = 20_000..28_000;

/// A loopback port for a server a test starts in another process (a service, a broker).
///
/// A port found free by binding port 0 and releasing it can be taken before the server binds it:
/// it lies in the ephemeral range, so any outgoing connection of any process (a database pool, a
/// Kafka client) may get it as its source port, and another test's `bind(0)` may be handed it
/// too — seen as "Address already in use" in a full suite run. So ports come from [`TEST_PORTS`],
/// and each is reserved for the life of the test process by an exclusive lock on a file named after
/// it (`flock`, released by the kernel when the process ends, however it ends): no two test
/// processes, and no two calls in one, get the same port.
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("saga-test-ports");
    std::fs::create_dir_all(&dir).expect("a directory for port reservations");
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Start somewhere else in each process, so processes rarely contend for the same files.
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for i in 0..span {
        let port = TEST_PORTS.start + ((seed as u64 + u64::from(i)) % u64::from(span)) as u16;
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        // Reserved; still check nothing else (outside the tests) listens there.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
        return port;
    }
    panic!("no free port in {TEST_PORTS:?}");
}

/// An Apache Kafka broker of the test's own (`scripts/kafka.sh run`), for tests that kill it,
/// wipe its log, delete its topics or give it other listeners. Its log directory is a temporary
/// directory that outlives restarts and goes when the value is dropped (the broker with it).
pub struct KafkaBroker {
    dir: std::path::PathBuf,
    port: u16,
    controller_port: u16,
    listeners: Vec<String>,
    sets: Vec<String>,
    format_args: Vec<String>,
    child: Option<std::process::Child>,
    starts: usize,
}

/// How to start a [`KafkaBroker`] other than plainly.
#[derive(Debug, Clone, Default)]
pub struct BrokerOptions {
    /// More listeners, `NAME://127.0.0.1:PORT`, the name being the security protocol.
    pub listeners: Vec<String>,
    /// Broker properties, over the project's defaults.
    pub sets: Vec<String>,
    /// Arguments for the storage formatter (e.g. `--add-scram …`).
    pub format_args: Vec<String>,
}

impl KafkaBroker {
    /// A broker with the project's `server.properties`, listening on a free loopback port.
    pub async fn start() -> Self {
        Self::start_with(BrokerOptions::default()).await
    }

    /// A broker whose PLAINTEXT listener is on a free loopback port, started with `options`.
    pub async fn start_with(options: BrokerOptions) -> Self {
        let dir = std::env::temp_dir().join(unique("saga-kafka-"));
        std::fs::create_dir_all(&dir).expect("broker directory");
        let mut broker = Self {
            dir,
            port: free_port(),
            controller_port: free_port(),
            listeners: options.listeners,
            sets: options.sets,
            format_args: options.format_args,
            child: None,
            starts: 0,
        };
        broker.restart().await;
        broker
    }

    /// `bootstrap.servers` for the PLAINTEXT listener.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log so far (all starts), for failure messages.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.dir.join(format!("broker-{n}.log"))).unwrap_or_default())
            .collect()
    }

    /// SIGKILL: no controlled shutdown, nothing flushed beyond what the OS already has.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes the log directory (the broker must be stopped): the next start is a new cluster
    /// that has lost every topic, message, offset and producer id.
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "wipe a stopped broker");
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }

    /// Starts the broker (again), on the same ports and log directory, and waits until it serves.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        self.starts += 1;
        let log_path = self.dir.join(format!("broker-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).expect("broker log");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka.sh");
        let mut cmd = std::process::Command::new(script);
        cmd.args(["run", "--dir"])
            .arg(&self.dir)
            .args(["--port", &self.port.to_string()])
            .args(["--controller-port", &self.controller_port.to_string()]);
        for l in &self.listeners {
            cmd.args(["--listener", l]);
        }
        for s in &self.sets {
            cmd.args(["--set", s]);
        }
        for a in &self.format_args {
            cmd.args(["--format-arg", a]);
        }
        cmd.stdout(log.try_clone().expect("broker log")).stderr(log);
        self.child = Some(cmd.spawn().expect("run scripts/kafka.sh"));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("Kafka Server started") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!("the Kafka broker exited ({status}) while starting:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the Kafka broker did not start within 120 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The test failed: what the broker said is part of the story (shown by the runner).
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- the test's Kafka broker, last lines of its log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy a test can cut, standing in for a server that goes away and comes back (a stopped
/// PostgreSQL, a network partition): while cut, the proxy's port refuses connections — as a
/// stopped server's does — and every connection through it has been closed; [`Self::restore`]
/// listens on the same port again.
pub struct CuttableProxy {
    addr: std::net::SocketAddr,
    target: String,
    serving: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl CuttableProxy {
    /// A proxy on a free loopback port forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = Self {
            addr,
            target: target.to_owned(),
            serving: std::sync::Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Closes the port and every connection through it.
    pub fn cut(&self) {
        if let Some(task) = self.serving.lock().expect("proxy lock").take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("proxy port {} not free again: {e}", self.addr),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            // The connections live in this set: aborting the accept task drops it, and with it
            // every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let target = target.clone();
                        connections.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        *self.serving.lock().expect("proxy lock") = Some(task);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_outside_the_ephemeral_range_and_reserved_against_other_processes() {
        let ports: Vec<u16> = (0..40).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for &port in &ports {
            assert!(TEST_PORTS.contains(&port), "{port}");
            // Another process opening the reservation gets no lock (flock locks belong to open
            // files, so a second open in this process is refused the same way).
            let other = std::fs::OpenOptions::new()
                .write(true)
                .open(
                    std::env::temp_dir()
                        .join("saga-test-ports")
                        .join(port.to_string()),
                )
                .unwrap();
            assert!(other.try_lock().is_err(), "port {port} is not reserved");
            // And the server can bind it.
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
