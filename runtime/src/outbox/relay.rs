//! The relay: publishes committed outbox rows to Kafka, pipelined, and deletes them once the
//! broker acknowledged them.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer as _};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::CHANNEL;
use super::handoff::{self, Handoff};
use super::lanes::{Row, Session};
use super::pipeline::{Delivered, Pipeline, Settled};
use super::vacuum::Vacuum;
use crate::backoff::Backoff;
use crate::health::Check;
use crate::kafka::Producer;

/// How the relay batches and how often it looks without being notified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    pub enabled: bool,
    /// Most rows read (and handed to the producer) at once.
    pub batch_size: i64,
    /// Polling fallback when no notification arrives (e.g. the listener connection dropped),
    /// and how often a relay looks for lanes another relay gave up.
    pub poll_interval_ms: u64,
    /// Most rows handed to the producer and not yet acknowledged and deleted.
    pub max_in_flight: usize,
    /// Publish the rows this process's writers hand over straight from memory (see
    /// [`Handoff`]); off, every row is read back from the table.
    pub handoff: bool,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            batch_size: 500,
            poll_interval_ms: 500,
            max_in_flight: 2000,
            handoff: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows the broker acknowledged (and that were deleted).
    pub published: usize,
    /// Rows the broker did not acknowledge; they stay and are retried.
    pub failed: usize,
    /// Rows read in this batch.
    pub read: usize,
    /// Age of the oldest row published, from insert to acknowledgement.
    pub max_lag: Option<Duration>,
}

/// Publishes outbox rows to Kafka. See the module docs for the ordering guarantee.
pub struct Relay {
    pool: PgPool,
    producer: Producer,
    settings: RelaySettings,
    /// Failing while rows wait for acknowledgements that do not come, or deliveries fail.
    health: Check,
    /// Rows this process's writers hand over (see [`Handoff`]).
    handoff: Option<Handoff>,
}

/// How long acknowledgements may stop before the relay checks that its topics still exist.
const STALLED: Duration = Duration::from_secs(3);

/// A row handed to the producer; resolves when the broker answered (or the producer gave up).
type Delivery = Pin<Box<dyn Future<Output = Delivered> + Send + Sync>>;

impl Relay {
    pub fn new(pool: PgPool, producer: Producer, settings: RelaySettings) -> Self {
        Self {
            pool,
            producer,
            settings,
            health: Check::detached("outbox relay"),
            handoff: None,
        }
    }

    /// Publishes the rows `handoff` is given straight from memory once their transaction's commit
    /// is announced, instead of reading them back (see [`Handoff`]); the writers of this process
    /// enqueue through it.
    pub fn with_handoff(mut self, handoff: Handoff) -> Self {
        self.handoff = self.settings.handoff.then_some(handoff);
        self
    }

    /// Reports to `health` whether the relay can publish (see [`crate::health`]).
    pub fn reporting_to(mut self, health: Check) -> Self {
        self.health = health;
        self
    }

    /// Publishes one batch from the lanes no other relay holds, waits for every acknowledgement
    /// and deletes the acknowledged rows (rows the broker did not acknowledge stay for the next
    /// time). The unpipelined form of [`Relay::run`], for tests and tools.
    #[tracing::instrument(name = "outbox.relay_once", skip_all, fields(published, failed))]
    pub async fn relay_once(&self) -> Result<BatchReport, RelayError> {
        let mut pipeline = Pipeline::new(&self.settings);
        let mut session = Session::open(&self.pool).await?;
        session.claim().await?;
        let mut report = BatchReport::default();
        if let Some(limit) = pipeline.read_limit(Instant::now()) {
            let rows = session.read(pipeline.unfinished(), &[], limit).await?;
            report.read = rows.len();
            let mut pending = FuturesUnordered::new();
            for row in &rows {
                pending.push(self.publish(row).await);
            }
            pipeline.sent(rows.iter().map(|r| (r.id, r.topic.as_str())), limit);
            while let Some(d) = pending.next().await {
                match self.settle(&mut pipeline, d) {
                    Settled::Acknowledged => {
                        let lag = lag_of(d.created_at);
                        report.max_lag = Some(report.max_lag.map_or(lag, |m| m.max(lag)));
                    }
                    Settled::Failed { .. } => report.failed += 1,
                }
            }
        }
        let done = pipeline.take_acked();
        session.delete(&done).await?;
        report.published = done.len();
        session.close().await;
        tracing::Span::current()
            .record("published", report.published)
            .record("failed", report.failed);
        Ok(report)
    }

    /// Hands one row to the producer under a span of its own that continues the trace of the
    /// transaction that wrote it; the record's trace headers name that span, so the consumer
    /// continues from the publish. The span ends with the acknowledgement.
    async fn publish(&self, row: &Row) -> Delivery {
        let span = tracing::info_span!(
            "outbox.publish",
            otel.name = %format!("publish {}", row.topic),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.destination.name = %row.topic,
            messaging.message.id = row.headers.get("message-id").map(String::as_str).unwrap_or_default(),
        );
        crate::trace::continue_from(&span, &row.headers);
        let (id, created_at) = (row.id, row.created_at);
        let producer = self.producer.clone();
        let health = self.health.clone();
        let topic = row.topic.clone();
        // A failed delivery repairs what it can (a fatally failed producer, a missing topic)
        // before it counts as failed, so the retry that follows can succeed.
        let failed = move |e: KafkaError| async move {
            health.failing(format_args!("delivery to {topic} failed: {e}"));
            producer.recover(&topic, &e).await;
        };
        match self.enqueue(row, &span).await {
            Ok(fut) => Box::pin(async move {
                let outcome = match fut.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                };
                drop(span);
                let ok = match outcome {
                    Ok(()) => true,
                    Err(e) => {
                        failed(e).await;
                        false
                    }
                };
                Delivered { id, created_at, ok }
            }),
            Err(e) => {
                tracing::debug!(parent: &span, error = %e, "could not hand an outbox row to the producer");
                Box::pin(async move {
                    failed(e).await;
                    Delivered {
                        id,
                        created_at,
                        ok: false,
                    }
                })
            }
        }
    }

    /// Hands one row to the producer, waiting while its local queue is full.
    async fn enqueue(
        &self,
        row: &Row,
        span: &tracing::Span,
    ) -> Result<crate::kafka::DeliveryFuture, KafkaError> {
        let mut all = row.headers.0.clone();
        crate::trace::inject(span, &mut all);
        let mut headers = OwnedHeaders::new_with_capacity(all.len());
        for (k, v) in all.iter() {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(&row.topic)
            .key(row.key.as_bytes())
            .payload(row.payload.as_slice())
            .headers(headers);
        let producer = self.producer.get();
        for _ in 0..600 {
            match producer.send_result(record) {
                Ok(fut) => return Ok(fut),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(0));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
    }

    /// Publishes until `shutdown`, pipelined: reads and hands rows to the producer whenever
    /// notified (and at least every poll interval) without waiting for earlier acknowledgements,
    /// deletes acknowledged rows in batches, and reads rows whose delivery failed again after a
    /// pause. At most `max_in_flight` rows are unacknowledged at once.
    pub async fn run(self, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms.max(1));
        let mut pipeline = Pipeline::new(&self.settings);
        metrics::counter!("outbox_published_total").increment(0);
        metrics::counter!("outbox_publish_failures_total").increment(0);
        let mut listener = self.listen().await;
        let mut session: Option<Session> = None;
        let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        let mut last_claim: Option<Instant> = None;
        let mut reconnect = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut vacuum = Vacuum::default();
        let mut polled = Instant::now();
        if let Some(h) = &self.handoff {
            h.set_active(true);
        }
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            match self
                .step(
                    &mut session,
                    &mut pipeline,
                    &mut in_flight,
                    &mut last_claim,
                    &mut vacuum,
                    poll,
                )
                .await
            {
                Ok(()) => reconnect.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay database error; reconnecting");
                    session = None;
                    pipeline.reset();
                    in_flight.clear();
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(reconnect.next_wait()) => {}
                    }
                    continue;
                }
            }

            // Wait for something to do: an acknowledgement, a notification, the poll interval.
            if pipeline.read_limit(Instant::now()).is_some() {
                // Still rows to read: only collect the acknowledgements already in.
                while let Some(Some(d)) = in_flight.next().now_or_never() {
                    self.settle(&mut pipeline, d);
                }
                continue;
            }
            // A notification's payload names the transaction that committed; `None` stands for
            // notifications that may have been lost (the listener's connection dropped).
            let notified = async {
                match listener.as_mut() {
                    Some(l) => match l.try_recv().await {
                        Ok(n) => n.map(|n| n.payload().to_owned()),
                        Err(_) => {
                            tokio::time::sleep(poll).await;
                            None
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            // The poll interval runs from the last look; the pipeline may want to act sooner (a
            // delete due, a pause over), which needs no read.
            let wait = pipeline.wait(poll.saturating_sub(polled.elapsed()), Instant::now());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(d) = in_flight.next(), if !in_flight.is_empty() => {
                    self.settle(&mut pipeline, d);
                    while let Some(Some(d)) = in_flight.next().now_or_never() {
                        self.settle(&mut pipeline, d);
                    }
                }
                first = notified => {
                    let mut notes = vec![first];
                    if let Some(l) = listener.as_mut() {
                        while let Some(n) = l.next_buffered() {
                            notes.push(Some(n.payload().to_owned()));
                        }
                    }
                    self.notified(session.as_ref(), &mut pipeline, &mut in_flight, notes).await;
                }
                _ = tokio::time::sleep(wait) => {
                    if polled.elapsed() >= poll {
                        polled = Instant::now();
                        pipeline.wake();
                        if let Some(h) = &self.handoff {
                            h.expire(handoff::EXPIRY, polled);
                        }
                    }
                }
            }
        }
        if let Some(h) = &self.handoff {
            h.set_active(false);
        }
        // Give in-flight deliveries a moment (less if acknowledgements had stopped coming); rows
        // not acknowledged stay in the outbox. Off the async threads: flushing blocks.
        let wait = if self.health.is_failing() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let producer = self.producer.get();
        let _ = tokio::task::spawn_blocking(move || producer.flush(wait)).await;
        settle_reported(&mut in_flight, SETTLE_WAIT, |d| {
            self.settle(&mut pipeline, d);
        })
        .await;
        if let Some(mut s) = session {
            if let Err(e) = s.delete(&pipeline.take_acked()).await {
                tracing::warn!(error = %e, "could not delete acknowledged outbox rows; they will be published again");
            }
            s.close().await;
        }
        tracing::info!("outbox relay stopped");
    }

    /// One round trip of [`Relay::run`]: (re)open the session, take free lanes every poll
    /// interval, delete what was acknowledged, read and hand over what may be waiting.
    async fn step(
        &self,
        session: &mut Option<Session>,
        pipeline: &mut Pipeline,
        in_flight: &mut FuturesUnordered<Delivery>,
        last_claim: &mut Option<Instant>,
        vacuum: &mut Vacuum,
        poll: Duration,
    ) -> sqlx::Result<()> {
        let s = match session {
            Some(s) => s,
            None => session.insert(Session::open(&self.pool).await?),
        };
        if last_claim.is_none_or(|t| t.elapsed() >= poll) {
            if s.claim().await? {
                // Lanes taken over may hold older rows: read them before any hand-over.
                pipeline.wake();
            }
            *last_claim = Some(Instant::now());
        }
        let now = Instant::now();
        let done = pipeline.take_due(now);
        if let Some(limit) = pipeline.read_limit(now) {
            let rows = s.read(pipeline.unfinished(), &done, limit).await?;
            if let Some(h) = &self.handoff {
                h.forget(rows.iter().map(|r| r.xmin));
            }
            for row in &rows {
                in_flight.push(self.publish(row).await);
            }
            pipeline.sent(rows.iter().map(|r| (r.id, r.topic.as_str())), limit);
        } else {
            s.delete(&done).await?;
        }
        if !done.is_empty() {
            vacuum.deleted(done.len(), &self.pool);
        }
        if !in_flight.is_empty() {
            // Failing since the last acknowledgement, if the broker stops answering.
            self.health
                .failing("rows handed to the producer are not acknowledged");
            if self.health.failing_for().is_some_and(|d| d >= STALLED) {
                // A topic deleted (or lost with the broker's log) fails deliveries only after
                // librdkafka's metadata timeout; look for it sooner.
                let producer = self.producer.clone();
                let topics = pipeline.topics().clone();
                tokio::spawn(async move { producer.ensure(topics.iter().map(String::as_str)).await });
            }
        }
        Ok(())
    }

    /// Goes through notifications in the order they came, which is the order their transactions
    /// committed: while the relay is caught up (its last read was complete, no pause runs), the
    /// rows of a transaction this process handed over are published from memory; at the first
    /// notification without a hand-over, or one that cannot be taken, a read is due, and it
    /// covers that transaction and every later one (their rows are committed), so their
    /// hand-overs are dropped. Rows of lanes another relay holds are that relay's to read.
    async fn notified(
        &self,
        session: Option<&Session>,
        pipeline: &mut Pipeline,
        in_flight: &mut FuturesUnordered<Delivery>,
        notes: Vec<Option<String>>,
    ) {
        let (Some(handoff), Some(session)) = (&self.handoff, session) else {
            pipeline.wake();
            return;
        };
        let mut direct = pipeline.caught_up(Instant::now());
        for note in notes {
            let Some(pending) = note.and_then(|payload| handoff.take(&payload)) else {
                direct = false;
                continue;
            };
            if !direct {
                handoff.refused(1);
                continue;
            }
            let rows: Vec<&Row> = pending
                .rows
                .iter()
                .filter(|h| session.holds(h.lane))
                .map(|h| &h.row)
                .filter(|r| r.id > session.floor() && !pipeline.unfinished().contains(&r.id))
                .collect();
            if rows.len() > pipeline.room() {
                handoff.refused(1);
                direct = false;
                continue;
            }
            for row in &rows {
                in_flight.push(self.publish(row).await);
            }
            handoff.published(rows.len());
            pipeline.handed(rows.iter().map(|r| (r.id, r.topic.as_str())));
        }
        if !direct {
            pipeline.wake();
        }
    }

    /// Books one delivery in the pipeline, with its metrics and health.
    fn settle(&self, pipeline: &mut Pipeline, d: Delivered) -> Settled {
        let settled = pipeline.settle(d, Instant::now());
        match settled {
            Settled::Acknowledged => {
                lag_of(d.created_at);
                metrics::counter!("outbox_published_total").increment(1);
                self.health.ok();
            }
            Settled::Failed { retry_in } => {
                metrics::counter!("outbox_publish_failures_total").increment(1);
                // Logged by the health check when it lasts, not once per row.
                tracing::debug!(
                    row = d.id,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "broker did not acknowledge an outbox row; it will be published again"
                );
            }
        }
        settled
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for outbox notifications; polling only");
                return None;
            }
        };
        match listener.listen(CHANNEL).await {
            Ok(()) => Some(listener),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for outbox notifications; polling only");
                None
            }
        }
    }
}

/// How long a stopping relay waits for deliveries already reported to be settled (a failed one
/// first repairs what it can, which may take longer: that row is simply published again).
const SETTLE_WAIT: Duration = Duration::from_secs(1);

/// Settles every delivery in `in_flight` whose report is in or arrives within `wait`.
///
/// It awaits rather than polling with `now_or_never`: each delivery's report is a tokio oneshot,
/// and tokio's cooperative budget makes a oneshot look pending once a task has polled 128 ready
/// ones without yielding — so a stopping relay with a few hundred acknowledgements in hand
/// settled the first 128 and left the rest in the outbox, to be published again (seen once as
/// 182 rows left after a test's second relay stopped).
async fn settle_reported(
    in_flight: &mut FuturesUnordered<Delivery>,
    wait: Duration,
    mut settle: impl FnMut(Delivered),
) {
    let _ = tokio::time::timeout(wait, async {
        while let Some(d) = in_flight.next().await {
            settle(d);
        }
    })
    .await;
}

/// Records the publish lag of an acknowledged row (insert to acknowledgement) and returns it.
fn lag_of(created_at: DateTime<Utc>) -> Duration {
    let lag = (Utc::now() - created_at).to_std().unwrap_or_default();
    metrics::histogram!("outbox_publish_lag_seconds").record(lag.as_secs_f64());
    lag
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::pipeline::tests::delivered;

    fn pipeline(batch: i64, max_in_flight: usize) -> Pipeline {
        Pipeline::new(&RelaySettings {
            batch_size: batch,
            max_in_flight,
            ..RelaySettings::default()
        })
    }

    #[tokio::test]
    async fn a_stopping_relay_settles_every_delivery_already_reported() {
        let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        for id in 0..1000 {
            in_flight.push(Box::pin(std::future::ready(delivered(id, true))));
        }
        // One more whose report never comes: waited for only until the bound.
        in_flight.push(Box::pin(std::future::pending()));
        let mut p = pipeline(1000, 2000);
        settle_reported(&mut in_flight, Duration::from_millis(200), |d| {
            p.settle(d, Instant::now());
        })
        .await;
        assert_eq!(p.take_acked().len(), 1000, "every reported delivery settled");
    }

    #[tokio::test]
    async fn reports_behind_tokio_oneshots_are_settled_past_the_cooperative_budget() {
        let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        for id in 0..500 {
            let (tx, rx) = tokio::sync::oneshot::channel::<Delivered>();
            in_flight.push(Box::pin(async move { rx.await.unwrap_or(delivered(-1, false)) }));
            let _ = tx.send(delivered(id, true));
        }
        let mut settled = 0;
        settle_reported(&mut in_flight, Duration::from_secs(5), |d| {
            assert!(d.ok);
            settled += 1;
        })
        .await;
        assert_eq!(settled, 500, "not only the first 128");
    }
}
