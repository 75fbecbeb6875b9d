//! `post-service [migrate]`: configuration from `post-service.toml` (optional) and `APP_…` variables. With
//! `migrate`, it applies the database migrations and exits.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    post_service::PROGRAM.main().await
}
