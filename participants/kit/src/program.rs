//! A participant service as a program, `<name> [migrate]`: configuration, logs and span export,
//! the service until SIGINT/SIGTERM, then a bounded flush of the spans still buffered. A service
//! declares its [`Program`] once and its `main` calls [`Program::main`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

use crate::app::{ParticipantApp, ParticipantSettings, ServiceDefaults, migrate};
use crate::domain::Domain;

/// How long the spans still buffered at exit may take to flush.
const TELEMETRY_FLUSH: Duration = Duration::from_secs(5);

/// What the kit needs to run a participant service: its name, its migrations and its domain.
/// `R` is the service's business settings (`APP_RULES__…`), `D` its domain.
pub struct Program<R, D> {
    /// The program's name: it reads `<name>.toml`, names its logs and spans, and its usage line.
    pub name: &'static str,
    pub migrator: &'static Migrator,
    /// Makes the domain from the business settings.
    pub domain: fn(R) -> D,
}

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invocation {
    /// No argument: run the service.
    Serve,
    /// `migrate`: apply the database migrations and exit.
    Migrate,
}

impl Invocation {
    /// Reads the first argument after the program's own; an unknown one is an error with the
    /// usage line.
    fn parse(program: &str, first: Option<&str>) -> anyhow::Result<Self> {
        match first {
            None => Ok(Self::Serve),
            Some("migrate") => Ok(Self::Migrate),
            Some(other) => anyhow::bail!("unknown command `{other}` (usage: {program} [migrate])"),
        }
    }
}

impl<R, D> Program<R, D>
where
    R: ServiceDefaults + Default + Clone + DeserializeOwned,
    D: Domain,
{
    /// The whole binary: configuration from `<name>.toml` (optional) and `APP_…` variables, then
    /// the service ([`Program::serve`]), or with `migrate`, the migrations applied and exit.
    pub async fn main(&self) -> anyhow::Result<()> {
        let settings: ParticipantSettings<R> = saga_runtime::config::load(&format!("{}.toml", self.name))?;
        match Invocation::parse(self.name, std::env::args().nth(1).as_deref())? {
            Invocation::Serve => self.serve(settings).await,
            Invocation::Migrate => {
                let _telemetry = saga_runtime::telemetry::init(self.name, settings.log_format);
                migrate(&settings, self.migrator).await
            }
        }
    }

    /// Logs and span export, the service until SIGINT/SIGTERM, then a bounded flush of the spans
    /// still buffered.
    pub async fn serve(&self, settings: ParticipantSettings<R>) -> anyhow::Result<()> {
        let telemetry = saga_runtime::telemetry::init(self.name, settings.log_format);
        let result = self.run(settings, saga_runtime::shutdown::on_signals()).await;
        telemetry.shutdown(TELEMETRY_FLUSH);
        result
    }

    /// Builds and runs the service until `shutdown`.
    pub async fn run(
        &self,
        settings: ParticipantSettings<R>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let domain = (self.domain)(settings.rules.clone());
        let app = ParticipantApp::build(&settings, domain, self.migrator).await?;
        tracing::info!("{} ready", self.name);
        app.run_until_stopped(shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_serves_migrates_or_says_its_usage() {
        assert_eq!(
            Invocation::parse("user-service", None).expect("valid"),
            Invocation::Serve
        );
        assert_eq!(
            Invocation::parse("user-service", Some("migrate")).expect("valid"),
            Invocation::Migrate
        );
        assert_eq!(
            Invocation::parse("post-service", Some("serve"))
                .expect_err("refused")
                .to_string(),
            "unknown command `serve` (usage: post-service [migrate])"
        );
    }
}
