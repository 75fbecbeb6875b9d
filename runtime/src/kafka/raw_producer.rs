//! The producer every service sends with: librdkafka's producer with one delivery future per
//! record, like rdkafka's `FutureProducer`, but served by a thread that sleeps while nothing
//! happens.
//!
//! `FutureProducer`'s thread polls with a 100 ms deadline, and rdkafka turns the deadline's last
//! fraction of a millisecond into a zero timeout, so the thread spins for up to a millisecond in
//! every hundred: about 1 % of a core per process with no traffic at all (measured with `perf` on
//! an idle service: two thirds of its samples were that thread reading the clock). Here the thread
//! waits up to [`POLL`] for an event; a delivery report wakes it at once.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{OwnedMessage, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureRecord};
use rdkafka::{ClientConfig, Timestamp};
use tokio::sync::oneshot;

use rdkafka::producer::future_producer::OwnedDeliveryResult;

use super::context::{QuietContext, Report};

/// How long the serving thread waits for an event before it looks whether it should stop.
const POLL: Duration = Duration::from_secs(1);

/// An idempotent librdkafka producer (configured by [`super::KafkaSettings`]) whose sends
/// return futures of their delivery reports. Cheap to clone; clones share one producer. It
/// dereferences to rdkafka's `BaseProducer`, so `flush`, `client` and the rest of rdkafka's
/// `Producer` trait are at hand.
#[derive(Clone)]
pub struct RawProducer {
    inner: Arc<Inner>,
}

struct Inner {
    producer: Arc<BaseProducer<QuietContext>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    /// The serving thread stops within [`POLL`] and drops the producer there: rdkafka then fails
    /// what is still queued (each sender hears of it) and destroys the client off the caller's
    /// thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The future of one record's delivery report.
pub struct DeliveryFuture(oneshot::Receiver<OwnedDeliveryResult>);

impl std::future::Future for DeliveryFuture {
    /// `Err` if the producer went away without reporting (it reports even failures otherwise).
    type Output = Result<OwnedDeliveryResult, oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

// The same shapes as rdkafka's `FutureProducer` (a record given back, a failed message), so that
// code written for it reads the same.
#[allow(clippy::result_large_err)]
impl RawProducer {
    pub(super) fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        let producer: Arc<BaseProducer<QuietContext>> = Arc::new(config.create_with_context(QuietContext)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (served, stopping) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-deliveries".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    served.poll(POLL);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start the delivery thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner { producer, stop }),
        })
    }

    /// Hands `record` to librdkafka's queue; the future resolves with its delivery report. A full
    /// queue is an error that gives the record back.
    pub fn send_result<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<DeliveryFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (tx, rx) = oneshot::channel();
        match self.inner.producer.send(with_report(record, tx)) {
            Ok(()) => Ok(DeliveryFuture(rx)),
            Err((e, base)) => Err((e, without_report(base))),
        }
    }

    /// Sends `record` and waits for its delivery report, retrying while librdkafka's queue is
    /// full for up to `queue_timeout`.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let start = Instant::now();
        let mut record = record;
        loop {
            match self.send_result(record) {
                Ok(delivery) => {
                    let gone = || {
                        (
                            KafkaError::Canceled,
                            OwnedMessage::new(
                                None,
                                None,
                                String::new(),
                                Timestamp::NotAvailable,
                                -1,
                                -1,
                                None,
                            ),
                        )
                    };
                    return delivery.await.unwrap_or_else(|_| Err(gone()));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if start.elapsed() < queue_timeout =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((e, r)) => return Err((e, owned(&r))),
            }
        }
    }
}

impl Deref for RawProducer {
    type Target = BaseProducer<QuietContext>;

    fn deref(&self) -> &Self::Target {
        &self.inner.producer
    }
}

fn with_report<'a, K, P>(r: FutureRecord<'a, K, P>, report: Report) -> BaseRecord<'a, K, P, Box<Report>>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    BaseRecord {
        topic: r.topic,
        partition: r.partition,
        payload: r.payload,
        key: r.key,
        timestamp: r.timestamp,
        headers: r.headers,
        delivery_opaque: Box::new(report),
    }
}

fn without_report<'a, K, P>(r: BaseRecord<'a, K, P, Box<Report>>) -> FutureRecord<'a, K, P>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    FutureRecord {
        topic: r.topic,
        partition: r.partition,
        payload: r.payload,
        key: r.key,
        timestamp: r.timestamp,
        headers: r.headers,
    }
}

/// A record that was never queued, as the message a failed delivery report carries.
fn owned<K, P>(r: &FutureRecord<'_, K, P>) -> OwnedMessage
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    OwnedMessage::new(
        r.payload.map(|p| p.to_bytes().to_vec()),
        r.key.map(|k| k.to_bytes().to_vec()),
        r.topic.to_owned(),
        r.timestamp.map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
        r.partition.unwrap_or(-1),
        0,
        r.headers.clone(),
    )
}
