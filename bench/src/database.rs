//! `--database-server`: the PostgreSQL server a tool finds or creates its databases on.

/// The PostgreSQL server, as a URL without a database name; flatten it into a tool's arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseServer {
    /// The PostgreSQL server (a URL without a database name).
    #[arg(
        long = "database-server",
        env = "SAGA_DATABASE_SERVER",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    url: String,
}

impl DatabaseServer {
    /// The URL of database `name` on this server.
    pub fn database(&self, name: &str) -> String {
        format!("{}/{name}", self.url.trim_end_matches('/'))
    }
}
