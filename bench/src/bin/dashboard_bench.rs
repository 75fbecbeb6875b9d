//! Dashboard at scale: seeds a fresh orchestrator database with 100,000 sagas (by SQL, in a few
//! seconds), starts the real orchestrator HTTP server on it, and times every query the dashboard
//! makes — and, when chromedriver is installed, the list page rendered in headless Chromium.
//!
//!   cargo run --release -p saga-bench --bin dashboard_bench -- [--sagas 100000] [--iterations 30]

use std::time::{Duration, Instant};

use clap::Parser;
use saga_bench::database::DatabaseServer;
use saga_bench::timing::{percentile, time_get};
use saga_orchestrator::Settings;
use saga_orchestrator::{Application, MIGRATOR};
use saga_runtime::db::DatabaseSettings;

use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// A database is created on this server and dropped afterwards.
    #[command(flatten)]
    server: DatabaseServer,
    #[arg(long, default_value_t = 100_000)]
    sagas: i64,
    #[arg(long, default_value_t = 30)]
    iterations: usize,
    /// Skip the headless-browser measurement.
    #[arg(long)]
    no_browser: bool,
    /// Keep the seeded database (its name is printed) instead of dropping it.
    #[arg(long)]
    keep: bool,
}

/// 60% register_user, 40% publish_post; 70% completed, 20% compensated, 5% failed, 3% running,
/// 2% compensating; created over the last two hours; UUIDv7 ids that match their creation time.
const SEED: &str = r#"
INSERT INTO sagas (id, saga_type, definition_version, state, version, idempotency_key, context, steps,
                   current_step, failure_reason, wake_at, created_at, updated_at)
SELECT (lpad(to_hex((extract(epoch FROM t.created) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text || 'v7'), 1, 15))::uuid,
       t.typ, 1, t.state, 3,
       CASE WHEN g % 10 = 0 THEN 'bench-key-' || g END,
       jsonb_build_object('email', 'u' || g || '@example.com', 'name', 'User ' || g),
       (SELECT jsonb_agg(jsonb_build_object(
                  'action', jsonb_build_object('status', 'succeeded', 'attempt', 1,
                                               'started_at', t.created + (s * 40) * interval '1 ms',
                                               'finished_at', t.created + (s * 40 + 25 + g % 30) * interval '1 ms'),
                  'compensation', jsonb_build_object('status', 'pending', 'attempt', 0)))
          FROM generate_series(0, CASE WHEN t.typ = 'register_user' THEN 1 ELSE 2 END) s),
       CASE t.state WHEN 'completed' THEN NULL
                    WHEN 'running' THEN CASE WHEN t.typ = 'register_user' THEN 'create_author' ELSE 'create_post' END
                    ELSE CASE WHEN t.typ = 'register_user' THEN 'create_user' ELSE 'create_post' END END,
       CASE t.state WHEN 'compensated' THEN 'step `create_post` was rejected: invalid title'
                    WHEN 'failed' THEN 'compensation of step `create_user` gave up after 26 attempts in 60 min 4 s (last: no reply within the 5000 ms deadline); needs an operator' END,
       CASE WHEN t.state IN ('running', 'compensating') THEN t.created + interval '5 seconds' END,
       t.created,
       CASE WHEN t.state IN ('running', 'compensating') THEN t.created ELSE t.created + interval '120 ms' END
FROM generate_series(1, $1::bigint) g,
LATERAL (SELECT now() - interval '2 hours' * (((g * 7919) % 100000) / 100000.0) AS created,
                CASE WHEN g % 5 < 3 THEN 'register_user' ELSE 'publish_post' END AS typ,
                CASE WHEN g % 100 < 70 THEN 'completed' WHEN g % 100 < 90 THEN 'compensated'
                     WHEN g % 100 < 95 THEN 'failed' WHEN g % 100 < 98 THEN 'running'
                     ELSE 'compensating' END AS state) t
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = args.server.scratch("bench_dashboard").await?;
    let result = run(&args, &db.url).await;
    db.finish(args.keep).await?;
    result
}

async fn run(args: &Args, url: &str) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(url).await?;
    MIGRATOR.run(&pool).await?;
    let seeding = Instant::now();
    sqlx::query(SEED).bind(args.sagas).execute(&pool).await?;
    // Steady state: autovacuum has visited the table (index-only scans need its visibility map).
    sqlx::query("VACUUM ANALYZE sagas").execute(&pool).await?;
    let seeded = seeding.elapsed();

    // The real orchestrator, its loops off: only the HTTP server (dashboard) matters here.
    let defaults = Settings::default();
    let mut settings = Settings {
        database: DatabaseSettings::with_url(url),
        ..defaults
    };
    settings.grpc.listen = "127.0.0.1:0".into();
    settings.http.listen = "127.0.0.1:0".into();
    settings.kafka.create_topics = false;
    settings.relay.enabled = false;
    settings.replies.enabled = false;
    settings.timers.enabled = false;
    let app = Application::build(settings).await?;
    let base = format!("http://{}", app.http_addr());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let http = reqwest::Client::new();
    let sample: (uuid::Uuid,) = sqlx::query_as("SELECT id FROM sagas ORDER BY id DESC OFFSET 5000 LIMIT 1")
        .fetch_one(&pool)
        .await?;
    let deep: (uuid::Uuid,) = sqlx::query_as("SELECT id FROM sagas ORDER BY id DESC OFFSET 90000 LIMIT 1")
        .fetch_one(&pool)
        .await?;
    let since = (chrono::Utc::now() - chrono::TimeDelta::minutes(30)).to_rfc3339();
    let prefix = &sample.0.to_string()[..13];
    let queries = [
        ("list: newest 50", "/api/sagas".to_owned()),
        ("list: state=failed", "/api/sagas?state=failed".to_owned()),
        (
            "list: type + state=compensated",
            "/api/sagas?type=publish_post&state=compensated".to_owned(),
        ),
        ("list: step=create_post", "/api/sagas?step=create_post".to_owned()),
        (
            "list: created in the last 30 min",
            format!("/api/sagas?since={}", urlencode(&since)),
        ),
        ("list: oldest first", "/api/sagas?order=oldest".to_owned()),
        (
            "list: page 1,800 (cursor)",
            format!("/api/sagas?cursor={}", deep.0),
        ),
        ("search: id prefix", format!("/api/sagas?q={prefix}")),
        (
            "search: idempotency key",
            "/api/sagas?q=bench-key-5000".to_owned(),
        ),
        ("saga detail", format!("/api/sagas/{}", sample.0)),
        ("overview", "/api/overview".to_owned()),
    ];
    println!(
        "Dashboard benchmark: {} sagas (seeded in {:.1} s), {} requests per query, server and client on this machine",
        args.sagas,
        seeded.as_secs_f64(),
        args.iterations
    );
    println!(
        "{:<36} {:>8} {:>8} {:>8} {:>6}",
        "query", "p50 ms", "p99 ms", "max ms", "rows"
    );
    for (label, path) in &queries {
        let (t, rows) = time_get(&http, &format!("{base}{path}"), args.iterations).await?;
        println!(
            "{label:<36} {:>8.1} {:>8.1} {:>8.1} {rows:>6}",
            percentile(&t, 0.5),
            percentile(&t, 0.99),
            t.last().copied().unwrap_or(0.0)
        );
    }

    if !args.no_browser {
        let pages = [
            (
                "browser: list page, load → drawn",
                "#/sagas?state=compensated",
                "document.querySelectorAll('#saga-list tr[data-saga]').length === 50",
            ),
            (
                "browser: overview, load → drawn",
                "#/",
                "!!document.querySelector('#state-cards')",
            ),
        ];
        for (label, route, drawn) in pages {
            match browser_render(&base, route, drawn, args.iterations.min(10)).await {
                Ok(t) => println!(
                    "{label:<36} {:>8.1} {:>8.1} {:>8.1}",
                    percentile(&t, 0.5),
                    percentile(&t, 0.99),
                    t.last().copied().unwrap_or(0.0)
                ),
                Err(e) => println!("browser measurement skipped: {e}"),
            }
        }
    }
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// Navigation start → the page drawn (the page's `rendered` performance mark), in a fresh page
/// load each time.
async fn browser_render(base: &str, route: &str, drawn: &str, iterations: usize) -> anyhow::Result<Vec<f64>> {
    let chromedriver = std::process::Command::new("which").arg("chromedriver").output()?;
    anyhow::ensure!(chromedriver.status.success(), "chromedriver is not installed");
    let browser = saga_bench::browser::Browser::start().await;
    let mut times = Vec::new();
    for i in 0..=iterations {
        browser.goto(&format!("{base}/?run={i}{route}")).await;
        browser.until("the page", drawn).await;
        let ms = browser
            .js("return performance.getEntriesByName('rendered').slice(-1)[0].startTime;")
            .await
            .as_f64()
            .unwrap_or(f64::NAN);
        if i > 0 {
            times.push(ms); // the first load warms the browser up and is not counted
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}
