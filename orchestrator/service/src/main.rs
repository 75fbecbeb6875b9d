//! `orchestrator [migrate]`: configuration from `orchestrator.toml` (optional) and `APP_…`
//! variables. With `migrate`, it applies the database migrations and exits.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = saga_orchestrator::Settings::load()?;
    match std::env::args().nth(1).as_deref() {
        None => saga_orchestrator::serve(settings).await,
        Some("migrate") => saga_orchestrator::migrate(settings).await,
        Some(other) => anyhow::bail!("unknown command `{other}` (usage: orchestrator [migrate])"),
    }
}
