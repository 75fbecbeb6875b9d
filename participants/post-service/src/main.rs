//! `post-service [migrate]`: configuration from `post-service.toml` (optional) and `APP_…` variables. With
//! `migrate`, it applies the database migrations and exits.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: post_service::Settings = saga_runtime::config::load("post-service.toml")?;
    match std::env::args().nth(1).as_deref() {
        None => post_service::serve(settings).await,
        Some("migrate") => {
            let _telemetry = saga_runtime::telemetry::init("post-service", settings.log_format);
            saga_participant::migrate(&settings, &post_service::MIGRATOR).await
        }
        Some(other) => anyhow::bail!("unknown command `{other}` (usage: post-service [migrate])"),
    }
}
