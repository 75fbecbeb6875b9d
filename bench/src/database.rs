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

/// A database a benchmark creates for itself ([`DatabaseServer::scratch`]) and drops after
/// ([`Scratch::finish`]).
pub struct Scratch {
    admin: sqlx::PgConnection,
    name: String,
    /// Its URL.
    pub url: String,
}

impl DatabaseServer {
    /// A new, empty database named `<prefix>_<random>`.
    pub async fn scratch(&self, prefix: &str) -> anyhow::Result<Scratch> {
        use anyhow::Context;
        use sqlx::Connection;
        let name = format!("{prefix}_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let mut admin = sqlx::PgConnection::connect(&self.database("postgres"))
            .await
            .context("PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        Ok(Scratch {
            admin,
            url: self.database(&name),
            name,
        })
    }
}

impl Scratch {
    /// Drops the database, or with `keep` prints its name and leaves it.
    pub async fn finish(mut self, keep: bool) -> anyhow::Result<()> {
        if keep {
            println!("kept database {}", self.name);
        } else {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
                .execute(&mut self.admin)
                .await?;
        }
        Ok(())
    }
}
