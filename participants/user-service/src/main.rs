//! `user-service [migrate]`: configuration from `user-service.toml` (optional) and `APP_…` variables. With
//! `migrate`, it applies the database migrations and exits.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    user_service::PROGRAM.main().await
}
