//! The shared runtime against real PostgreSQL and a real Kafka-protocol broker.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use saga_runtime::consumer::{self, DeadLetters, Handler, Incoming, Transient, Verdict, Verdicts};
use saga_runtime::kafka::{KafkaSettings, Subscription};
use saga_runtime::outbox::{self, Handoff, OutboxMessage, Relay, RelaySettings};
use saga_runtime::testing::{Record, TopicReader, fresh_database, kafka_settings};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/orchestrator");

fn message(topic: &str, key: &str, body: &str) -> OutboxMessage {
    let mut headers = BTreeMap::new();
    headers.insert("message-id".to_owned(), body.to_owned());
    OutboxMessage {
        topic: topic.to_owned(),
        key: key.to_owned(),
        payload: body.as_bytes().to_vec(),
        headers,
    }
}

async fn write(pool: &PgPool, messages: &[OutboxMessage]) {
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, messages).await.unwrap();
    tx.commit().await.unwrap();
}

async fn outbox_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// One message per key `k0`, `k1`, … on `topic`, each with the body `k<key>:<seq>`.
fn round(topic: &str, keys: usize, seq: usize) -> Vec<OutboxMessage> {
    (0..keys)
        .map(|k| message(topic, &format!("k{k}"), &format!("k{k}:{seq}")))
        .collect()
}

/// The key and sequence number of a record [`round`] wrote.
fn key_and_seq(r: &Record) -> (String, usize) {
    let body = String::from_utf8(r.payload.clone()).unwrap();
    let (k, seq) = body.split_once(':').unwrap();
    (k.to_owned(), seq.parse().unwrap())
}

fn polling_every(ms: u64) -> RelaySettings {
    RelaySettings {
        poll_interval_ms: ms,
        ..RelaySettings::default()
    }
}

/// A fresh database with the outbox, and a topic of the test's own with a reader of it.
struct Setup {
    pool: PgPool,
    kafka: KafkaSettings,
    topic: String,
    reader: TopicReader,
}

async fn setup(topic: &str) -> Setup {
    let (pool, _) = fresh_database(&MIGRATOR).await;
    let kafka = kafka_settings();
    let topic = kafka.topic(topic);
    let reader = TopicReader::new(&kafka, &topic).await;
    Setup {
        pool,
        kafka,
        topic,
        reader,
    }
}

/// A relay running in the background until [`Running::stop`].
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Setup {
    fn relay(&self, settings: RelaySettings) -> Relay {
        Relay::new(self.pool.clone(), self.kafka.producer().unwrap(), settings)
    }

    fn spawn_relay(&self, settings: RelaySettings) -> Running {
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.relay(settings).run(stop.clone()));
        Running { stop, task }
    }

    /// A relay publishing what `handoff` is given, as a service runs it.
    fn spawn_relay_handing(&self, settings: RelaySettings, handoff: &Handoff) -> Running {
        let stop = CancellationToken::new();
        let relay = self.relay(settings).with_handoff(handoff.clone());
        let task = tokio::spawn(relay.run(stop.clone()));
        Running { stop, task }
    }

    /// Waits until every published row was deleted.
    async fn outbox_empties(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while outbox_rows(&self.pool).await > 0 {
            assert!(std::time::Instant::now() < deadline, "the outbox never emptied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }

    /// Ends the relay as a crash would: wherever it is, nothing more runs (its connections close
    /// when dropped; a statement already running on the server finishes unless cut).
    async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Writes `messages` in one transaction, handed over through `handoff`, as the services write.
async fn write_handed(pool: &PgPool, handoff: &Handoff, messages: &[OutboxMessage]) {
    let mut tx = pool.begin().await.unwrap();
    handoff.enqueue(&mut tx, messages).await.unwrap();
    tx.commit().await.unwrap();
}

/// Checks that every key's sequence numbers arrived in order, `0..per_key` each.
fn in_order_per_key(got: &[Record], keys: usize, per_key: usize) {
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    for r in got {
        let (k, seq) = key_and_seq(r);
        seen.entry(k).or_default().push(seq);
    }
    assert_eq!(seen.len(), keys);
    for (k, seqs) in &seen {
        assert_eq!(
            seqs,
            &(0..per_key).collect::<Vec<_>>(),
            "key {k} out of order or incomplete"
        );
    }
}

/// A consumer of `topic` in a group of its own.
fn subscribe(kafka: &KafkaSettings, topic: &str) -> Subscription {
    kafka
        .subscribe(
            &saga_runtime::testing::unique("group-"),
            &[topic.to_owned()],
            saga_runtime::health::Check::detached("consumer"),
        )
        .unwrap()
}

#[tokio::test]
async fn relay_publishes_with_key_and_headers_then_deletes() {
    let t = setup("things").await;
    write(
        &t.pool,
        &[message(&t.topic, "k1", "one"), message(&t.topic, "k1", "two")],
    )
    .await;

    let relay = t.relay(RelaySettings::default());
    let report = relay.relay_once().await.unwrap();
    assert_eq!((report.read, report.published, report.failed), (2, 2, 0));
    assert_eq!(outbox_rows(&t.pool).await, 0, "acknowledged rows are removed");

    let got = t.reader.take(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].key.as_deref(), Some("k1"));
    assert_eq!(got[0].payload, b"one");
    assert_eq!(got[1].payload, b"two");
    assert_eq!(got[1].headers.get("message-id").map(String::as_str), Some("two"));
    assert_eq!(
        relay.relay_once().await.unwrap().read,
        0,
        "nothing left to publish"
    );
}

#[tokio::test]
async fn rows_wait_in_the_outbox_while_the_broker_is_unreachable() {
    let (pool, _) = fresh_database(&MIGRATOR).await;
    let mut kafka = kafka_settings();
    kafka.brokers = "127.0.0.1:1".into(); // nothing listens there
    kafka.client.insert("message.timeout.ms".into(), "1500".into());
    write(&pool, &[message("t.nowhere", "k", "kept")]).await;
    let relay = Relay::new(pool.clone(), kafka.producer().unwrap(), RelaySettings::default());
    let report = relay.relay_once().await.unwrap();
    assert_eq!((report.published, report.failed), (0, 1));
    assert_eq!(
        outbox_rows(&pool).await,
        1,
        "an unacknowledged row is never dropped"
    );
}

#[tokio::test]
async fn two_relays_at_once_keep_per_key_order_and_lose_nothing() {
    let t = setup("ordered").await;
    let settings = RelaySettings {
        batch_size: 37,
        ..polling_every(100)
    };
    let a = t.spawn_relay(settings.clone());
    let b = t.spawn_relay(settings);

    // 40 keys, 16 messages each, written in many small interleaved transactions while both run;
    // halfway through, the relay holding the lanes (whichever it is) may stop: stop A.
    let (keys, per_key) = (40usize, 16usize);
    let (pool, topic) = (&t.pool, t.topic.as_str());
    let write_seqs = |seqs: std::ops::Range<usize>| async move {
        for seq in seqs {
            for chunk in round(topic, keys, seq).chunks(7) {
                write(pool, chunk).await;
            }
        }
    };
    write_seqs(0..per_key / 2).await;
    let mut got = t.reader.take(keys * per_key / 2, Duration::from_secs(60)).await;
    a.stop().await;
    write_seqs(per_key / 2..per_key).await;
    got.extend(t.reader.take(keys * per_key / 2, Duration::from_secs(60)).await);
    b.stop().await;

    in_order_per_key(&got, keys, per_key);
    assert!(
        t.reader.drain(Duration::from_millis(500)).await.is_empty(),
        "nothing published twice"
    );
    assert_eq!(outbox_rows(&t.pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_whose_sessions_are_terminated_hand_lanes_over_and_keep_every_key_in_order() {
    let t = setup("terminated").await;
    let settings = RelaySettings {
        batch_size: 7,
        ..polling_every(50)
    };
    let relays: Vec<_> = (0..2).map(|_| t.spawn_relay(settings.clone())).collect();
    let (keys, per_key) = (4, 60);
    // Rows keep coming while the relays' lane-holding sessions are cut, again and again: each
    // time the lanes go to whichever relay claims them next.
    let writer = {
        let (pool, topic) = (t.pool.clone(), t.topic.clone());
        tokio::spawn(async move {
            for seq in 0..per_key {
                write(&pool, &round(&topic, keys, seq)).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut cut = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        cut += sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()) AS t",
        )
        .bind(outbox::SESSION_NAME)
        .fetch_one(&t.pool)
        .await
        .unwrap();
    }
    writer.await.unwrap();
    assert!(cut >= 4, "relay sessions were cut {cut} times");

    // Every row arrives; a row may arrive again (at-least-once), but never before a row written
    // ahead of it under the same key has arrived once.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut first: HashMap<String, Vec<usize>> = HashMap::new();
    while first.values().map(Vec::len).sum::<usize>() < keys * per_key {
        assert!(std::time::Instant::now() < deadline, "rows missing: {first:?}");
        let Some(r) = t.reader.next(Duration::from_secs(5)).await else {
            continue;
        };
        let (k, seq) = key_and_seq(&r);
        let seen = first.entry(k.clone()).or_default();
        if seen.contains(&seq) {
            continue; // a repeat of something already delivered
        }
        assert_eq!(
            seq,
            seen.len(),
            "key {k}: row {seq} arrived before row {}",
            seen.len()
        );
        seen.push(seq);
    }
    // And every published row is deleted in the end.
    t.outbox_empties().await;
    for r in relays {
        r.stop().await;
    }
}

#[tokio::test]
async fn rows_handed_over_are_published_without_reading_them_back() {
    let t = setup("handed").await;
    let handoff = Handoff::new();
    // No poll in the test's time: a read happens only when a notification asks for one.
    let relay = t.spawn_relay_handing(polling_every(600_000), &handoff);
    // The first row may be written before the relay runs (then it is read): once it arrived, the
    // relay holds every lane and has read the table.
    write_handed(&t.pool, &handoff, &[message(&t.topic, "warm", "warm:0")]).await;
    t.reader.take(1, Duration::from_secs(30)).await;
    let before = handoff.stats();
    let (keys, per_key) = (5, 20);
    for seq in 0..per_key {
        for chunk in round(&t.topic, keys, seq).chunks(2) {
            write_handed(&t.pool, &handoff, chunk).await;
        }
    }
    let got = t.reader.take(keys * per_key, Duration::from_secs(30)).await;
    in_order_per_key(&got, keys, per_key);
    let after = handoff.stats();
    assert_eq!(
        after.published - before.published,
        (keys * per_key) as u64,
        "every row published from memory ({after:?})"
    );
    assert_eq!(after.refused, before.refused);
    t.outbox_empties().await;
    relay.stop().await;
}

#[tokio::test]
async fn rows_another_process_wrote_are_read_before_later_handed_rows_and_keys_stay_in_order() {
    let t = setup("mixed").await;
    let handoff = Handoff::new();
    let relay = t.spawn_relay_handing(polling_every(600_000), &handoff);
    // Every key's rows come alternately from another process (plain `enqueue`: only the
    // notification tells the relay) and from this one, in transactions of one or several keys.
    let (keys, per_key) = (6, 30);
    for seq in 0..per_key {
        for (i, chunk) in round(&t.topic, keys, seq).chunks(3).enumerate() {
            if (seq + i) % 2 == 0 {
                write(&t.pool, chunk).await;
            } else {
                write_handed(&t.pool, &handoff, chunk).await;
            }
        }
    }
    let got = t.reader.take(keys * per_key, Duration::from_secs(60)).await;
    in_order_per_key(&got, keys, per_key);
    let stats = handoff.stats();
    assert!(stats.published > 0, "some rows went from memory: {stats:?}");
    t.outbox_empties().await;
    relay.stop().await;
}

#[tokio::test]
async fn rows_handed_to_a_relay_that_crashed_before_publishing_them_are_read_by_the_next() {
    let t = setup("handed-crash").await;
    let handoff = Handoff::new();
    let first = t.spawn_relay_handing(polling_every(600_000), &handoff);
    write_handed(&t.pool, &handoff, &[message(&t.topic, "k", "before")]).await;
    assert_eq!(
        t.reader.take(1, Duration::from_secs(30)).await[0].payload,
        b"before"
    );
    t.outbox_empties().await;
    // The relay dies; its writer does not know and hands the next row over to it.
    first.crash().await;
    write_handed(&t.pool, &handoff, &[message(&t.topic, "k", "committed")]).await;
    assert_eq!(outbox_rows(&t.pool).await, 1, "committed, not published");
    // The service starts again: a new relay with a hand-over of its own reads the row.
    let second = t.spawn_relay_handing(polling_every(100), &Handoff::new());
    assert_eq!(
        t.reader.take(1, Duration::from_secs(30)).await[0].payload,
        b"committed"
    );
    t.outbox_empties().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_published_from_memory_by_a_relay_that_crashed_before_deleting_it_is_published_again() {
    let t = setup("handed-undeleted").await;
    let handoff = Handoff::new();
    let first = t.spawn_relay_handing(polling_every(600_000), &handoff);
    write_handed(&t.pool, &handoff, &[message(&t.topic, "k", "before")]).await;
    t.reader.take(1, Duration::from_secs(30)).await;
    t.outbox_empties().await;
    // From now on a delete hangs (until its session is cut).
    sqlx::raw_sql(
        "CREATE FUNCTION hold_deletes() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(600); RETURN NULL; END $$; \
         CREATE TRIGGER hold_deletes BEFORE DELETE ON outbox \
         FOR EACH STATEMENT EXECUTE FUNCTION hold_deletes();",
    )
    .execute(&t.pool)
    .await
    .unwrap();
    let before = handoff.stats().published;
    write_handed(&t.pool, &handoff, &[message(&t.topic, "k", "once")]).await;
    assert_eq!(
        t.reader.take(1, Duration::from_secs(30)).await[0].payload,
        b"once"
    );
    assert_eq!(handoff.stats().published - before, 1, "published from memory");
    // The relay is deleting the row it published when it dies (and its session with it).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND datname = current_database() AND query LIKE '%DELETE%' AND state = 'active'",
    )
    .bind(outbox::SESSION_NAME)
    .fetch_one(&t.pool)
    .await
    .unwrap()
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the relay never deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.crash().await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(outbox::SESSION_NAME)
    .execute(&t.pool)
    .await
    .unwrap();
    sqlx::raw_sql("DROP TRIGGER hold_deletes ON outbox")
        .execute(&t.pool)
        .await
        .unwrap();
    assert_eq!(outbox_rows(&t.pool).await, 1, "published, not deleted");
    // The next relay publishes it again (at least once), then deletes it.
    let second = t.spawn_relay_handing(polling_every(100), &Handoff::new());
    assert_eq!(
        t.reader.take(1, Duration::from_secs(30)).await[0].payload,
        b"once"
    );
    t.outbox_empties().await;
    second.stop().await;
}

#[tokio::test]
async fn a_relay_takes_over_the_lanes_of_one_that_stopped() {
    let t = setup("takeover").await;
    // A starts alone and takes every lane.
    let a = t.spawn_relay(polling_every(100));
    write(&t.pool, &[message(&t.topic, "k", "by-a")]).await;
    assert_eq!(
        t.reader.take(1, Duration::from_secs(30)).await[0].payload,
        b"by-a"
    );
    // B starts while A holds the lanes: it publishes nothing (one relay per lane)...
    let b = t.spawn_relay(polling_every(100));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(held, 16, "every lane is held once");
    // ...and once A stops, B picks the lanes up within a poll interval.
    a.stop().await;
    write(&t.pool, &[message(&t.topic, "k", "by-b")]).await;
    assert_eq!(
        t.reader.take(1, Duration::from_secs(30)).await[0].payload,
        b"by-b"
    );
    b.stop().await;
    assert_eq!(outbox_rows(&t.pool).await, 0);
}

#[tokio::test]
async fn a_row_committed_after_higher_ids_were_published_is_still_published() {
    let t = setup("late").await;
    let relay = t.spawn_relay(polling_every(20));

    // A takes the lower id and stays open while B's higher ids commit and are published, and the
    // relay polls many times (each poll may move its floor).
    let mut a = t.pool.begin().await.unwrap();
    outbox::enqueue(&mut a, &[message(&t.topic, "a", "late")])
        .await
        .unwrap();
    for i in 0..5 {
        write(
            &t.pool,
            &[message(&t.topic, &format!("b{i}"), &format!("early-{i}"))],
        )
        .await;
    }
    let early = t.reader.take(5, Duration::from_secs(30)).await;
    assert!(early.iter().all(|r| r.payload.starts_with(b"early")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.commit().await.unwrap();

    let late = t.reader.take(1, Duration::from_secs(30)).await;
    assert_eq!(
        late[0].payload, b"late",
        "the late commit below the published ids is not skipped"
    );
    relay.stop().await;
    assert_eq!(outbox_rows(&t.pool).await, 0);
}

/// Counts calls; fails transiently the first `flaky` times; calls payload "poison" poison.
struct Recorder {
    /// Batches handed to the handler, including failed attempts.
    calls: AtomicUsize,
    /// Messages seen in those batches.
    seen: AtomicUsize,
    flaky: usize,
    done: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Handler for Recorder {
    async fn handle(&self, batch: &[Incoming<'_>]) -> Result<Verdicts, Transient> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.fetch_add(batch.len(), Ordering::SeqCst);
        if n < self.flaky {
            return Err(Transient::new("database unavailable"));
        }
        Ok(batch
            .iter()
            .map(|m| {
                let body = String::from_utf8_lossy(m.payload.unwrap_or_default()).into_owned();
                if body == "poison" {
                    return Verdict::Poison("cannot decode".to_owned());
                }
                let _ = self.done.send(body);
                Verdict::Done
            })
            .collect())
    }
}

#[tokio::test]
async fn consumer_loop_retries_transient_failures_and_dead_letters_poison() {
    let (pool, _) = fresh_database(&MIGRATOR).await;
    let kafka = kafka_settings();
    let topic = kafka.topic("in");
    let dlq_topic = kafka.dead_letter_topic("in");
    kafka
        .ensure_topics(&[topic.clone(), dlq_topic.clone()])
        .await
        .unwrap();
    let dlq_reader = TopicReader::new(&kafka, &dlq_topic).await;
    write(
        &pool,
        &[
            message(&topic, "a", "first"),
            message(&topic, "a", "poison"),
            message(&topic, "a", "after"),
        ],
    )
    .await;
    let relay = Relay::new(pool.clone(), kafka.producer().unwrap(), RelaySettings::default());
    relay.relay_once().await.unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = Arc::new(Recorder {
        calls: AtomicUsize::new(0),
        seen: AtomicUsize::new(0),
        flaky: 2,
        done: tx,
    });
    let subscription = subscribe(&kafka, &topic);
    let shutdown = CancellationToken::new();
    let dead = DeadLetters::new(kafka.producer().unwrap(), dlq_topic.clone());
    let task = tokio::spawn(consumer::run(
        subscription,
        handler.clone(),
        dead,
        shutdown.clone(),
    ));

    let first = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let after = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.as_str(), after.as_str()),
        ("first", "after"),
        "traffic behind the poison keeps flowing"
    );
    // The failed batch was retried as it was (at least "first" each time), and every message was
    // handled exactly once after the failures: 2 failed attempts + 3 messages, however batched.
    let (calls, seen) = (
        handler.calls.load(Ordering::SeqCst),
        handler.seen.load(Ordering::SeqCst),
    );
    assert!(calls >= 3, "{calls} calls");
    assert!(seen >= 5, "{seen} messages seen");
    assert!(rx.try_recv().is_err(), "nothing handled twice");

    let dead = dlq_reader.take(1, Duration::from_secs(10)).await;
    assert_eq!(dead[0].payload, b"poison");
    assert_eq!(
        dead[0].headers.get("dlq-reason").map(String::as_str),
        Some("cannot decode")
    );
    assert_eq!(dead[0].headers.get("dlq-source-topic"), Some(&topic));
    assert_eq!(
        dead[0].headers.get("message-id").map(String::as_str),
        Some("poison"),
        "original headers kept"
    );
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_planned_once_transaction_plans_generically_and_only_until_it_ends() {
    let (pool, _) = fresh_database(&MIGRATOR).await;
    // One connection, so every transaction below runs on the same session and its statements.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let plans = |pool: PgPool| async move {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
             WHERE statement LIKE 'INSERT INTO outbox%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let row = message("t", "k", "v");

    let mut tx = saga_runtime::db::begin_planned_once(&pool).await.unwrap();
    outbox::enqueue(&mut tx, std::slice::from_ref(&row))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        outbox_rows(&pool).await,
        0,
        "the BEGIN sent with the setting began a transaction"
    );
    assert_eq!(plans(pool.clone()).await, (1, 0));

    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, std::slice::from_ref(&row))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        plans(pool.clone()).await,
        (1, 1),
        "outside, statements are planned for their parameters"
    );
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "force_custom_plan");
}

#[tokio::test]
async fn the_relay_vacuums_the_outbox_it_empties() {
    let t = setup("vacuum").await;
    let relay = t.spawn_relay(RelaySettings::default());
    let vacuums = || async {
        sqlx::query_scalar::<_, i64>("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'")
            .fetch_one(&t.pool)
            .await
            .unwrap()
    };
    assert_eq!(vacuums().await, 0);
    // More deletes than the relay's vacuum threshold (2,000), in a few transactions.
    for chunk in 0..5 {
        let rows: Vec<_> = (0..500)
            .map(|i| message(&t.topic, &format!("k{i}"), &format!("{chunk}-{i}")))
            .collect();
        write(&t.pool, &rows).await;
    }
    assert_eq!(t.reader.take(2_500, Duration::from_secs(60)).await.len(), 2_500);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while vacuums().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never vacuumed the outbox (autovacuum here: {})",
            sqlx::query_scalar::<_, String>("SHOW autovacuum")
                .fetch_one(&t.pool)
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
    assert_eq!(outbox_rows(&t.pool).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_whose_topic_is_missing_receives_once_another_service_creates_it() {
    // What a consumer rebuilt after a broker lost its log relies on (`Subscription::recover`):
    // joined while its topic is missing, it picks the topic up once another service creates it,
    // with nothing on this side repairing or resubscribing.
    let kafka = saga_runtime::kafka::KafkaSettings {
        create_topics: false,
        ..kafka_settings()
    };
    let topic = kafka.topic("late");
    let subscription = subscribe(&kafka, &topic);
    let consumer = subscription.consumer();
    // The group answers first that the topic is missing.
    let missing = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the consumer reports the missing topic");
    assert!(missing.is_err(), "nothing to receive yet");

    let producer_side = kafka_settings();
    producer_side
        .ensure_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    let producer = producer_side.producer().unwrap().get();
    let sent = producer
        .send_result(
            rdkafka::producer::FutureRecord::to(&topic)
                .key("k")
                .payload("late"),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    sent.await.unwrap().unwrap();

    let received = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(m) = consumer.recv().await {
                return rdkafka::Message::payload(&m).map(<[u8]>::to_vec);
            }
        }
    })
    .await
    .expect("the record on the topic created later arrives within 30 s");
    assert_eq!(received.as_deref(), Some(&b"late"[..]));
}
