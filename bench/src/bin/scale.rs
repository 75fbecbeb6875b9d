//! A year of sagas, in small: seeds a fresh orchestrator database with N finished sagas of
//! realistic size spread over D days — each with its history (six events) and its business keys —
//! then, against the real orchestrator running on it, prints: table and index sizes; p50/p95 of
//! the dashboard's overview, list and search and of ListSagas by key; StartSaga latency with and
//! without retention at work; how fast retention removes the older half; the sizes after, and
//! that new sagas reuse the space freed (the table does not grow).
//!
//!   cargo run --release -p saga-bench --bin scale -- [--sagas 1000000] [--days 10]
//!   scripts/scale.sh --sagas 10000000        # the issue's figure (≈ 25 GB of disk, ≈ 1 h)
//!   scale --seed-into postgres://…/db --sagas 1000000 --days 2   # only seed an existing database
//!   scripts/scale.sh --partitioned           # the alternative: daily partitions, dropped whole
//!
//! Kafka is not needed: the orchestrator's relay and consumer are off (StartSaga writes its
//! outbox rows, which stay).

use std::time::{Duration, Instant};

use clap::Parser;
use saga_bench::database::DatabaseServer;
use saga_bench::timing::{percentile, time_get};
use saga_orchestrator::{Application, MIGRATOR, Settings};
use saga_proto::v1::saga_orchestrator_client::SagaOrchestratorClient;
use saga_proto::v1::{KeyMatch, ListSagasRequest, SagaFilter, StartSagaRequest};
use saga_runtime::db::DatabaseSettings;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    server: DatabaseServer,
    /// Finished sagas to seed.
    #[arg(long, default_value_t = 1_000_000)]
    sagas: i64,
    /// Over how many days they were created (retention then removes the older half).
    #[arg(long, default_value_t = 10.0)]
    days: f64,
    /// Requests per timed query.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// StartSaga calls per second while measuring write latency.
    #[arg(long, default_value_t = 100)]
    write_rate: u32,
    /// Keep the database (its name is printed) instead of dropping it.
    #[arg(long)]
    keep: bool,
    /// Only seed this existing database (migrating it first) and stop: `scripts/bench.sh` with
    /// `BENCH_SEED_FINISHED` measures load while retention removes what this seeds.
    #[arg(long, value_name = "URL")]
    seed_into: Option<String>,
    /// Measure the alternative to batched deletes instead: the three tables partitioned by day
    /// of saga id (UUIDv7, so by creation time), the older half removed by dropping partitions.
    #[arg(long)]
    partitioned: bool,
}

/// The saga tables re-created partitioned by range of saga id (a UUIDv7 range is a time range):
/// the primary keys must hold the partition key, so the history's becomes (saga_id, id).
const PARTITION: &str = r#"
CREATE TABLE sagas_p (LIKE sagas INCLUDING DEFAULTS) PARTITION BY RANGE (id);
ALTER TABLE sagas_p ADD PRIMARY KEY (id);
CREATE TABLE saga_events_p (LIKE saga_events INCLUDING DEFAULTS) PARTITION BY RANGE (saga_id);
ALTER TABLE saga_events_p ADD PRIMARY KEY (saga_id, id);
CREATE TABLE saga_keys_p (LIKE saga_keys INCLUDING DEFAULTS) PARTITION BY RANGE (saga_id);
ALTER TABLE saga_keys_p ADD PRIMARY KEY (saga_id, name, value);
CREATE INDEX ON saga_keys_p (value, name, saga_id);
DROP TABLE saga_keys, saga_events, sagas CASCADE;
ALTER TABLE sagas_p RENAME TO sagas;
ALTER TABLE saga_events_p RENAME TO saga_events;
ALTER TABLE saga_keys_p RENAME TO saga_keys;
CREATE SEQUENCE saga_events_id_seq OWNED BY saga_events.id;
ALTER TABLE saga_events ALTER COLUMN id SET DEFAULT nextval('saga_events_id_seq');
"#;

const TABLES: [&str; 3] = ["sagas", "saga_events", "saga_keys"];

/// Sagas seeded per statement.
const CHUNK: i64 = 200_000;

/// `$1..$2` of the seed: 60% register_user (keys email, user_id), 40% publish_post (keys
/// user_id, post_id); 85% completed, 15% compensated; created over the last `$3` days in id order.
const SEED_SAGAS: &str = r#"
INSERT INTO sagas (id, saga_type, definition_version, state, version, context, steps, current_step,
                   failure_reason, created_at, updated_at)
SELECT s.id, s.typ, 1, s.state, 5, s.context,
       (SELECT jsonb_agg(jsonb_build_object(
                  'action', jsonb_build_object('status', 'succeeded', 'attempt', 1,
                                               'started_at', s.created + (k * 40) * interval '1 ms',
                                               'finished_at', s.created + (k * 40 + 25) * interval '1 ms'),
                  'compensation', CASE WHEN s.state = 'compensated'
                       THEN jsonb_build_object('status', 'succeeded', 'attempt', 1,
                                               'started_at', s.created + interval '90 ms',
                                               'finished_at', s.created + interval '110 ms')
                       ELSE jsonb_build_object('status', 'pending', 'attempt', 0) END,
                  'completion', k))
          FROM generate_series(0, CASE WHEN s.typ = 'register_user' THEN 1 ELSE 2 END) k),
       NULL,
       CASE WHEN s.state = 'compensated' THEN 'step `create_post` was rejected: no post quota left' END,
       s.created, s.created + interval '120 ms'
FROM (SELECT g,
             (lpad(to_hex((extract(epoch FROM c.created) * 1000)::bigint), 12, '0') || '7'
               || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text || 'v7'), 1, 15))::uuid AS id,
             c.created,
             CASE WHEN g % 5 < 3 THEN 'register_user' ELSE 'publish_post' END AS typ,
             CASE WHEN g % 100 < 85 THEN 'completed' ELSE 'compensated' END AS state,
             CASE WHEN g % 5 < 3
                  THEN jsonb_build_object('email', 'u' || g || '@example.com', 'name', 'User ' || g,
                                          'user_id', md5('user' || g)::uuid)
                  ELSE jsonb_build_object('user_id', md5('user' || (g / 3))::uuid, 'title', 'Post ' || g,
                                          'body', repeat('lorem ipsum ', 20), 'post_id', md5('post' || g)::uuid)
             END AS context
      FROM generate_series($1::bigint, $2::bigint) g,
      LATERAL (SELECT now() - interval '1 day' * $3::float8 * (1 - g::float8 / $4::float8) AS created) c) s
"#;

/// The history of the sagas seeded in `$1..$2`: six events each.
const SEED_EVENTS: &str = r#"
INSERT INTO saga_events (saga_id, at, kind, actor, data)
SELECT s.id, s.created_at + e * interval '20 ms',
       (ARRAY['saga_started', 'command_dispatched', 'step_succeeded', 'command_dispatched',
              'step_succeeded', 'saga_completed'])[e + 1],
       CASE WHEN e IN (2, 4) THEN 'participant' ELSE 'engine' END,
       jsonb_build_object('step', e / 2, 'attempt', 1, 'message_id', md5(s.id::text || e))
FROM sagas s, generate_series(0, 5) e
WHERE s.id >= $1 AND s.id < $2 AND NOT EXISTS (SELECT 1 FROM saga_events x WHERE x.saga_id = s.id)
"#;

/// Their business keys.
const SEED_KEYS: &str = r#"
INSERT INTO saga_keys (saga_id, name, value)
SELECT s.id, k.name, s.context ->> k.name
FROM sagas s, LATERAL (VALUES ('email'), ('user_id'), ('post_id')) AS k(name)
WHERE s.id >= $1 AND s.id < $2 AND s.context ? k.name
ON CONFLICT DO NOTHING
"#;

fn line(label: &str, mut times: Vec<f64>, extra: &str) {
    times.sort_by(f64::total_cmp);
    println!(
        "{label:<44} {:>8.1} {:>8.1} {:>8.1}  {extra}",
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        percentile(&times, 0.99)
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = saga_runtime::telemetry::init("scale", saga_runtime::telemetry::LogFormat::Human);
    if let Some(url) = &args.seed_into {
        let pool = PgPool::connect(url).await?;
        MIGRATOR.run(&pool).await?;
        return seed(&args, &pool).await;
    }
    let db = args.server.scratch("bench_scale").await?;
    let result = if args.partitioned {
        partitioned(&args, &db.url).await
    } else {
        run(&args, &db.url).await
    };
    db.finish(args.keep).await?;
    result
}

/// The first saga id at or after `t` (ids are UUIDv7: their first 48 bits are the time).
fn id_at(ms: i64) -> uuid::Uuid {
    uuid::Uuid::from_u128(u128::from(ms.max(0) as u64) << 80)
}

async fn sizes(pool: &PgPool, title: &str) -> anyhow::Result<()> {
    println!("\n{title}");
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>12}",
        "table", "rows", "table MB", "indexes MB", "dead rows"
    );
    for table in ["sagas", "saga_events", "saga_keys"] {
        let (rows, heap, indexes, dead): (i64, i64, i64, i64) = sqlx::query_as(&format!(
            "WITH parts AS (SELECT relid FROM pg_partition_tree('{table}') \
                            UNION SELECT '{table}'::regclass) \
             SELECT (SELECT count(*) FROM {table}), \
                    (SELECT sum(pg_table_size(relid))::int8 FROM parts), \
                    (SELECT sum(pg_indexes_size(relid))::int8 FROM parts), \
                    coalesce((SELECT sum(n_dead_tup)::int8 FROM pg_stat_user_tables \
                              WHERE relid IN (SELECT relid FROM parts)), 0)"
        ))
        .fetch_one(pool)
        .await?;
        println!(
            "{table:<14} {rows:>12} {:>12.1} {:>12.1} {dead:>12}",
            heap as f64 / 1e6,
            indexes as f64 / 1e6
        );
    }
    Ok(())
}

/// Starts the orchestrator on `url` (no Kafka work), retention as given.
async fn orchestrator(
    url: &str,
    retention_days: Option<f64>,
) -> anyhow::Result<(
    String,
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let mut settings = Settings {
        database: DatabaseSettings::with_url(url),
        ..Settings::default()
    };
    settings.grpc.listen = "127.0.0.1:0".into();
    settings.http.listen = "127.0.0.1:0".into();
    settings.kafka.create_topics = false;
    settings.relay.enabled = false;
    settings.replies.enabled = false;
    settings.timers.enabled = false;
    settings.jobs.enabled = false;
    settings.retention.enabled = retention_days.is_some();
    if let Some(days) = retention_days {
        settings.retention.max_age_days = days;
        settings.retention.pause_ms = 0;
        settings.retention.interval_ms = 1_000;
    }
    let app = Application::build(settings).await?;
    let (grpc, http) = (
        format!("http://{}", app.grpc_addr()),
        format!("http://{}", app.http_addr()),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((grpc, http, shutdown, task))
}

/// StartSaga at `rate`/s for `seconds`: the latencies (ms).
async fn writes(grpc: &str, rate: u32, seconds: u64, tag: &str) -> anyhow::Result<Vec<f64>> {
    let client = SagaOrchestratorClient::connect(grpc.to_owned()).await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut calls = tokio::task::JoinSet::new();
    let mut i = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        i += 1;
        let mut c = client.clone();
        let payload = format!(r#"{{"email":"w{tag}{i}@example.com","name":"Writer {i}"}}"#);
        calls.spawn(async move {
            let t = Instant::now();
            c.start_saga(StartSagaRequest {
                saga_type: "register_user".into(),
                payload_json: payload,
                idempotency_key: String::new(),
            })
            .await
            .map(|_| t.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut times = Vec::new();
    while let Some(done) = calls.join_next().await {
        times.push(done??);
    }
    Ok(times)
}

async fn run(args: &Args, url: &str) -> anyhow::Result<()> {
    let pool = PgPool::connect(url).await?;
    MIGRATOR.run(&pool).await?;
    println!(
        "Scale proof: {} finished sagas over {} days, on this machine (server and client co-located)",
        args.sagas, args.days
    );
    seed(args, &pool).await?;
    sizes(&pool, "Before retention").await?;
    measure(args, url, &pool).await
}

/// `args.sagas` finished sagas over the last `args.days` days, with their history and keys.
async fn seed(args: &Args, pool: &PgPool) -> anyhow::Result<()> {
    let seeding = Instant::now();
    let mut from = 1;
    while from <= args.sagas {
        let to = (from + CHUNK - 1).min(args.sagas);
        let mut tx = pool.begin().await?;
        sqlx::query(SEED_SAGAS)
            .bind(from)
            .bind(to)
            .bind(args.days)
            .bind(args.sagas as f64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        from = to + 1;
        eprint!("\rseeded {to} sagas ({:.0} s)", seeding.elapsed().as_secs_f64());
    }
    // History and keys by id ranges of a day (the ids are time-ordered).
    let now = chrono::Utc::now().timestamp_millis();
    let span = (args.days * 86_400_000.0) as i64 + 60_000;
    let slices = (args.days.ceil() as i64 * 4).max(1);
    for i in 0..slices {
        let lo = id_at(now - span + span * i / slices);
        let hi = id_at(now - span + span * (i + 1) / slices + if i + 1 == slices { 60_000 } else { 0 });
        sqlx::query(SEED_EVENTS).bind(lo).bind(hi).execute(pool).await?;
        sqlx::query(SEED_KEYS).bind(lo).bind(hi).execute(pool).await?;
        eprint!(
            "\rseeded history and keys {}/{slices} ({:.0} s)",
            i + 1,
            seeding.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    println!("seeded in {:.0} s", seeding.elapsed().as_secs_f64());
    Ok(())
}

async fn measure(args: &Args, url: &str, pool: &PgPool) -> anyhow::Result<()> {
    let pool = pool.clone();

    // Reads and writes without retention.
    let (grpc, http_base, shutdown, task) = orchestrator(url, None).await?;
    let http = reqwest::Client::new();
    let g = args.sagas / 2;
    let email = format!("u{}@example.com", g - g % 5);
    let user_id: String = sqlx::query_scalar("SELECT md5('user' || $1::text)::uuid::text")
        .bind(g / 3)
        .fetch_one(&pool)
        .await?;
    let queries = [
        ("dashboard: overview", "/api/overview".to_owned()),
        ("dashboard: list, newest 50", "/api/sagas".to_owned()),
        (
            "dashboard: list, compensated",
            "/api/sagas?state=compensated".to_owned(),
        ),
        (
            "dashboard: search, an e-mail (any key)",
            format!("/api/sagas?q={email}"),
        ),
        (
            "dashboard: search, user_id=… (named key)",
            format!("/api/sagas?q=user_id%3D{user_id}"),
        ),
    ];
    println!(
        "\n{:<44} {:>8} {:>8} {:>8}",
        "read (no retention running)", "p50 ms", "p95 ms", "p99 ms"
    );
    for (label, path) in &queries {
        let (t, rows) = time_get(&http, &format!("{http_base}{path}"), args.iterations).await?;
        line(label, t, &format!("{rows} row(s)"));
    }
    let mut client = SagaOrchestratorClient::connect(grpc.clone()).await?;
    let mut t = Vec::new();
    let mut found = 0;
    for _ in 0..args.iterations {
        let start = Instant::now();
        let r = client
            .list_sagas(ListSagasRequest {
                filter: Some(SagaFilter {
                    keys: vec![KeyMatch {
                        name: "user_id".into(),
                        value: user_id.clone(),
                        prefix: false,
                    }],
                    ..SagaFilter::default()
                }),
                ..ListSagasRequest::default()
            })
            .await?
            .into_inner();
        t.push(start.elapsed().as_secs_f64() * 1000.0);
        found = r.sagas.len();
    }
    line("gRPC ListSagas, key user_id", t, &format!("{found} row(s)"));
    let quiet = writes(&grpc, args.write_rate, 20, "a").await?;
    line(
        &format!("StartSaga at {}/s, no retention", args.write_rate),
        quiet,
        "",
    );
    shutdown.cancel();
    let _ = task.await;

    // Retention: everything older than half the span goes, while writes go on.
    let horizon = args.days / 2.0;
    let expired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sagas WHERE updated_at < now() - $1 * interval '1 day'")
            .bind(horizon)
            .fetch_one(&pool)
            .await?;
    let (grpc, _http, shutdown, task) = orchestrator(url, Some(horizon)).await?;
    let removing = Instant::now();
    let busy = tokio::spawn({
        let grpc = grpc.clone();
        let rate = args.write_rate;
        async move { writes(&grpc, rate, 20, "b").await }
    });
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sagas WHERE updated_at < now() - $1 * interval '1 day' AND state IN ('completed', 'compensated')",
        )
        .bind(horizon)
        .fetch_one(&pool)
        .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = removing.elapsed().as_secs_f64();
    let during = busy.await??;
    println!(
        "\nretention removed {expired} sagas (with {} history rows and their keys) in {took:.0} s: {:.0} sagas/s",
        expired * 6,
        expired as f64 / took
    );
    line(
        &format!("StartSaga at {}/s, retention removing", args.write_rate),
        during,
        "(the first 20 s)",
    );
    shutdown.cancel();
    let _ = task.await;
    sizes(&pool, "After retention (before autovacuum has visited)").await?;
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    sizes(
        &pool,
        "After VACUUM (the space is free for new rows, the files keep their size)",
    )
    .await?;

    // New sagas fill the space retention freed: the tables hardly grow.
    let before: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('sagas') + pg_total_relation_size('saga_events') + pg_total_relation_size('saga_keys')")
        .fetch_one(&pool)
        .await?;
    let refill = expired.min(args.sagas / 2);
    let base = args.sagas + 1;
    let mut from = base;
    while from < base + refill {
        let to = (from + CHUNK - 1).min(base + refill - 1);
        sqlx::query(SEED_SAGAS)
            .bind(from)
            .bind(to)
            .bind(0.01)
            .bind((base + refill) as f64)
            .execute(&pool)
            .await?;
        from = to + 1;
    }
    let recent = id_at(chrono::Utc::now().timestamp_millis() - 3_600_000);
    sqlx::query(SEED_EVENTS)
        .bind(recent)
        .bind(uuid::Uuid::max())
        .execute(&pool)
        .await?;
    sqlx::query(SEED_KEYS)
        .bind(recent)
        .bind(uuid::Uuid::max())
        .execute(&pool)
        .await?;
    let after: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('sagas') + pg_total_relation_size('saga_events') + pg_total_relation_size('saga_keys')")
        .fetch_one(&pool)
        .await?;
    println!(
        "\n{refill} new sagas (with history and keys) into the freed space: the three tables went from {:.1} MB to {:.1} MB ({:+.1} %)",
        before as f64 / 1e6,
        after as f64 / 1e6,
        (after - before) as f64 * 100.0 / before as f64
    );
    Ok(())
}

/// The partitioned alternative: daily partitions, seeded like the real tables, then the older
/// half removed by detaching and dropping whole partitions while rows are written at the write
/// rate. (What the real retention would also need here — keeping held, failed and running sagas
/// and per-type ages — is not done: this measures the best case of dropping.)
async fn partitioned(args: &Args, url: &str) -> anyhow::Result<()> {
    let pool = PgPool::connect(url).await?;
    MIGRATOR.run(&pool).await?;
    sqlx::raw_sql(PARTITION).execute(&pool).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000i64;
    let days = args.days.ceil() as i64 + 1;
    // Day d covers [now - (days - d) days, now - (days - d - 1) days); the last one reaches a day
    // into the future, for the writes.
    for d in 0..=days {
        let (lo, hi) = (now - (days - d) * day, now - (days - d - 1) * day);
        for t in TABLES {
            sqlx::query(&format!(
                "CREATE TABLE {t}_d{d} PARTITION OF {t} FOR VALUES FROM ('{}') TO ('{}')",
                id_at(lo),
                id_at(hi)
            ))
            .execute(&pool)
            .await?;
        }
    }
    println!(
        "Partitioned alternative: {} finished sagas over {} days in {} daily partitions per table",
        args.sagas,
        args.days,
        days + 1
    );
    seed(args, &pool).await?;
    sizes(&pool, "Before removal").await?;
    let quiet = inserts(&pool, args.write_rate, 20, 0).await?;
    line(
        &format!("insert a saga at {}/s, no removal", args.write_rate),
        quiet,
        "",
    );

    // The older half: whole days older than args.days / 2.
    let horizon = now - (args.days / 2.0 * day as f64) as i64;
    let old: Vec<i64> = (0..=days)
        .filter(|d| now - (days - d - 1) * day <= horizon)
        .collect();
    let expired: i64 = sqlx::query_scalar("SELECT count(*) FROM sagas WHERE id < $1")
        .bind(id_at(now - (days - old.len() as i64) * day))
        .fetch_one(&pool)
        .await?;
    let busy = tokio::spawn({
        let pool = pool.clone();
        let rate = args.write_rate;
        async move { inserts(&pool, rate, 20, 1_000_000_000).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dropping = Instant::now();
    for d in &old {
        for t in TABLES {
            sqlx::query(&format!("ALTER TABLE {t} DETACH PARTITION {t}_d{d} CONCURRENTLY"))
                .execute(&pool)
                .await?;
            sqlx::query(&format!("DROP TABLE {t}_d{d}"))
                .execute(&pool)
                .await?;
        }
    }
    let took = dropping.elapsed().as_secs_f64();
    let during = busy.await??;
    println!(
        "\ndropping {} daily partitions per table removed {expired} sagas (with {} history rows and their keys) in {took:.1} s",
        old.len(),
        expired * 6
    );
    line(
        &format!("insert a saga at {}/s, partitions dropped", args.write_rate),
        during,
        "(20 s around the drops)",
    );
    sizes(&pool, "After dropping (no VACUUM needed: the files are gone)").await?;
    Ok(())
}

/// One saga row inserted per call (the write that meets the partitioned parent), at `rate`/s for
/// `seconds`, each in its own transaction: the latencies (ms). `base` keeps the generated ids
/// apart between calls.
async fn inserts(pool: &PgPool, rate: u32, seconds: u64, base: i64) -> anyhow::Result<Vec<f64>> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut calls = tokio::task::JoinSet::new();
    let mut i = base + 2_000_000_000;
    while Instant::now() < end {
        tick.tick().await;
        i += 1;
        let pool = pool.clone();
        calls.spawn(async move {
            let t = Instant::now();
            let mut tx = pool.begin().await?;
            // A saga created now: 0.0 days of spread.
            sqlx::query(SEED_SAGAS)
                .bind(i)
                .bind(i)
                .bind(0.0)
                .bind(i as f64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            anyhow::Ok(t.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut times = Vec::new();
    while let Some(done) = calls.join_next().await {
        times.push(done??);
    }
    Ok(times)
}
