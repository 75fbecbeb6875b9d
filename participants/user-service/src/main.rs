//! `user-service [migrate]`: configuration from `user-service.toml` (optional) and `APP_…` variables. With
//! `migrate`, it applies the database migrations and exits.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: user_service::Settings = saga_runtime::config::load("user-service.toml")?;
    match std::env::args().nth(1).as_deref() {
        None => user_service::serve(settings).await,
        Some("migrate") => {
            let _telemetry = saga_runtime::telemetry::init("user-service", settings.log_format);
            saga_participant::migrate(&settings, &user_service::MIGRATOR).await
        }
        Some(other) => anyhow::bail!("unknown command `{other}` (usage: user-service [migrate])"),
    }
}
