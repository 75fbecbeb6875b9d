//! The kit's Kafka side: a producer playing the orchestrator, and collectors that gather every
//! record published to the reply topic and the dead-letter topic from the moment the kit starts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use saga_proto::envelope::Reply;
use tokio::sync::Notify;

/// A record as received.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

impl Record {
    pub fn key_text(&self) -> String {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }

    /// The reply this record carries, decoded as the orchestrator decodes it.
    pub fn reply(&self) -> Result<Reply, String> {
        Reply::decode(self.payload.as_deref().unwrap_or_default()).map_err(|e| e.0)
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or_default()
    }
}

fn client(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    cfg
}

pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(client(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()?)
}

/// Sends one record and waits for the broker's acknowledgement.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: Option<&[u8]>,
    headers: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let mut hs = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        hs = hs.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key).headers(hs);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("sending to {topic}: {e}"))?;
    Ok(())
}

/// Creates the topics if they are missing (a participant creates them too; whoever is first wins).
pub async fn ensure_topics(brokers: &str, topics: &[String], partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = client(brokers).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("could not create topic {topic}: {code:?}"),
        }
    }
    Ok(())
}

/// Every record published to a topic after [`Collector::start`], kept in arrival order.
#[derive(Clone)]
pub struct Collector {
    records: Arc<Mutex<Vec<Record>>>,
    arrived: Arc<Notify>,
}

impl Collector {
    /// Reads `topic` from its current end (the high watermarks now), in the background.
    pub async fn start(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let cfg = client(brokers)
            .set(
                "group.id",
                format!("conformance-{}", uuid::Uuid::now_v7().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .clone();
        let (meta_cfg, name) = (cfg.clone(), topic.to_owned());
        let ends = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64)>> {
            let probe: BaseConsumer = meta_cfg.create()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let partitions: Vec<i32> = probe
                    .fetch_metadata(Some(&name), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| {
                        m.topics()
                            .first()
                            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                    })
                    .unwrap_or_default();
                // A topic just created has no leaders for a moment: ask again until every
                // partition answers.
                let ends: Result<Vec<(i32, i64)>, _> = partitions
                    .iter()
                    .map(|&p| {
                        probe
                            .fetch_watermarks(&name, p, Duration::from_secs(5))
                            .map(|w| (p, w.1))
                    })
                    .collect();
                match ends {
                    Ok(ends) if !ends.is_empty() => return Ok(ends),
                    Ok(_) => anyhow::ensure!(Instant::now() < deadline, "topic {name} has no partitions"),
                    Err(e) => anyhow::ensure!(Instant::now() < deadline, "topic {name}: {e}"),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await??;
        let consumer: StreamConsumer = cfg.create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, high) in ends {
            tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
        consumer.assign(&tpl)?;
        let collector = Self {
            records: Arc::default(),
            arrived: Arc::default(),
        };
        let (records, arrived) = (collector.records.clone(), collector.arrived.clone());
        tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        let headers = m
                            .headers()
                            .map(|hs| {
                                hs.iter()
                                    .map(|h| {
                                        let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                        (h.key.to_owned(), v.unwrap_or_default())
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let record = Record {
                            key: m.key().map(<[u8]>::to_vec),
                            payload: m.payload().map(<[u8]>::to_vec),
                            headers,
                        };
                        records.lock().unwrap_or_else(|e| e.into_inner()).push(record);
                        arrived.notify_waiters();
                    }
                    Err(e) => {
                        eprintln!("  (reading: {e})");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(collector)
    }

    /// Everything received so far.
    pub fn snapshot(&self) -> Vec<Record> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `found` picks something out of the records received so far, at most `timeout`.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        found: impl Fn(&[Record]) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.arrived.notified();
            if let Some(t) = found(&self.snapshot()) {
                return Ok(t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no {what} within {} s", timeout.as_secs()));
            }
            // Woken by the next record; the timeout bounds the wait.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), arrived).await;
        }
    }
}
