//! The post service: owns authors (a replica of users) and posts in its own database and takes part
//! in the `register_user` and `publish_post` sagas through the participant kit.
//!
//! Commands: `CreateAuthor` / `DeleteAuthor`, `CreatePost` / `DeletePost`.
//! Business failures: pen name already taken, unknown author, invalid title (empty or over 200
//! characters).

use saga_participant::audit::facts_page;
use saga_participant::{
    AuditedEntry, Command, Domain, DomainError, ParticipantApp, ParticipantSettings, ServiceDefaults,
    Unclaimed, UnclaimedWindow,
};
use saga_proto::ledger::{DomainFinding, Fact, UnclaimedCursor, UnclaimedEffect};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/post");

/// Longest accepted post title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// The post service's business settings (`APP_RULES__…`); none yet.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostRules {}

impl ServiceDefaults for PostRules {
    const DATABASE_URL: &'static str = "postgres://postgres@127.0.0.1:5432/saga_posts";
    const COMMANDS_TOPIC: &'static str = "post.commands";
    const GROUP: &'static str = "post-service";
    const HTTP_LISTEN: &'static str = "127.0.0.1:8082";
}

pub type Settings = ParticipantSettings<PostRules>;

pub struct Posts;

const COMMANDS: [&str; 4] = ["CreateAuthor", "DeleteAuthor", "CreatePost", "DeletePost"];

impl Domain for Posts {
    fn name(&self) -> &'static str {
        "post-service"
    }

    fn handles(&self, command_type: &str) -> bool {
        COMMANDS.contains(&command_type)
    }

    async fn apply(&self, tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
        match cmd.command_type.as_str() {
            "CreateAuthor" => create_author(tx, cmd).await,
            "DeleteAuthor" => delete_author(tx, cmd).await,
            "CreatePost" => create_post(tx, cmd).await,
            "DeletePost" => delete_post(tx, cmd).await,
            other => Err(DomainError::Rejected(format!(
                "post-service does not handle `{other}`"
            ))),
        }
    }

    /// A succeeded `CreateAuthor` that was not undone: the author replica still exists; a
    /// succeeded `CreatePost` that was not undone: the post still exists.
    async fn check(
        &self,
        conn: &mut PgConnection,
        entries: &[AuditedEntry<'_>],
    ) -> Result<Vec<DomainFinding>, sqlx::Error> {
        let mut findings = Vec::new();
        for (command, field, table, what) in [
            ("CreateAuthor", "author_id", "authors", "author replica"),
            ("CreatePost", "post_id", "posts", "post"),
        ] {
            let claimed: Vec<(&AuditedEntry<'_>, Option<Uuid>)> = entries
                .iter()
                .filter(|e| e.holds(command))
                .map(|e| (e, reply_id(e, field)))
                .collect();
            let ids: Vec<Uuid> = claimed.iter().filter_map(|(_, id)| *id).collect();
            // `table` is one of the two literals above.
            let existing: Vec<Uuid> =
                sqlx::query_scalar(&format!("SELECT id FROM {table} WHERE id = ANY($1)"))
                    .bind(&ids)
                    .fetch_all(&mut *conn)
                    .await?;
            for (e, id) in claimed {
                match id {
                    None => findings.push(e.finding(
                        &format!("{field}_missing"),
                        format!("the recorded {command} reply names no {field}"),
                    )),
                    Some(id) if !existing.contains(&id) => findings.push(e.finding(
                        &format!("{}_missing", table.trim_end_matches('s')),
                        format!("{what} {id} created by this saga no longer exists in the posts database"),
                    )),
                    Some(_) => {}
                }
            }
        }
        Ok(findings)
    }

    /// Authors and posts created in the window that no succeeded `CreateAuthor` / `CreatePost`
    /// in the inbox names: made outside any saga. In (check, id) order.
    async fn unclaimed(
        &self,
        conn: &mut PgConnection,
        window: UnclaimedWindow<'_>,
    ) -> Result<Vec<Unclaimed>, sqlx::Error> {
        let effects = [
            ("authors", "CreateAuthor", "author_id"),
            ("posts", "CreatePost", "post_id"),
        ]
        .map(|(table, command, field)| {
            // `table`, `command` and `field` are the literals above.
            format!(
                "SELECT '{check}' AS kind, t.id FROM {table} t \
                 WHERE t.created_at >= $1 AND ($2::timestamptz IS NULL OR t.created_at < $2) \
                 AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.phase = 'action' AND i.outcome = 'success' \
                   AND i.command_type = '{command}' AND i.reply->>'{field}' = t.id::text)",
                check = unclaimed_check(table),
            )
        })
        .join(" UNION ALL ");
        let rows: Vec<(String, Uuid)> = sqlx::query_as(&format!(
            "SELECT kind, id FROM ({effects}) u \
             WHERE ($3::text IS NULL OR (u.kind COLLATE \"C\", u.id) > ($3::text COLLATE \"C\", $4::uuid)) \
             ORDER BY u.kind COLLATE \"C\", u.id LIMIT $5"
        ))
        .bind(window.since)
        .bind(window.until)
        .bind(window.after.map(|a| a.check.as_str()))
        .bind(window.after.map(|a| a.id))
        .bind(window.limit)
        .fetch_all(&mut *conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(check, id)| {
                let (what, command) = if check == unclaimed_check("authors") {
                    ("author replica", "CreateAuthor")
                } else {
                    ("post", "CreatePost")
                };
                Unclaimed {
                    effect: UnclaimedEffect {
                        check: check.clone(),
                        entity: format!("{what} {id}"),
                        message: format!(
                            "{what} {id} is in the posts database, but no {command} of any saga created it"
                        ),
                    },
                    at: UnclaimedCursor { check, id },
                }
            })
            .collect())
    }

    fn fact_sets(&self) -> &'static [&'static str] {
        &FACT_SETS
    }

    /// `authors`: author id (the user's id) → name; `post_counts`: author id → the number of
    /// posts the posts database holds for it ("0" for an author without posts). Every post
    /// counts: a `publish_post` saga that is not completed deletes its post when it compensates,
    /// so once no saga is in flight they equal user-service's `post_counts`.
    async fn facts(
        &self,
        conn: &mut PgConnection,
        set: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Option<Vec<Fact>>, sqlx::Error> {
        let value = match set {
            "authors" => "a.name",
            "post_counts" => "(SELECT count(*) FROM posts p WHERE p.author_id = a.id)",
            _ => return Ok(None),
        };
        facts_page(conn, "authors a", "a.id", value, after, limit)
            .await
            .map(Some)
    }
}

/// The fact sets post-service publishes.
pub const FACT_SETS: [&str; 2] = ["authors", "post_counts"];

/// The unclaimed-effect check of a table: `author_unclaimed`, `post_unclaimed`.
fn unclaimed_check(table: &str) -> String {
    format!("{}_unclaimed", table.trim_end_matches('s'))
}

/// A UUID field of the recorded reply.
fn reply_id(e: &AuditedEntry<'_>, field: &str) -> Option<Uuid> {
    e.entry
        .reply
        .as_ref()?
        .get(field)?
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// The author replica of a registered user.
async fn create_author(tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
    let id = cmd.uuid("user_id")?;
    let name = cmd.text("name")?.trim();
    let inserted = sqlx::query("INSERT INTO authors (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(name)
        .execute(tx)
        .await;
    match inserted {
        Ok(_) => Ok(json!({ "author_id": id })),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("authors_name") => Err(
            DomainError::Rejected(format!("pen name `{name}` is already taken by another author")),
        ),
        Err(e) => Err(e.into()),
    }
}

/// Undoes `CreateAuthor`; an author that is already gone is fine.
async fn delete_author(tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
    let id = cmd.uuid("user_id")?;
    let deleted = sqlx::query("DELETE FROM authors WHERE id = $1")
        .bind(id)
        .execute(tx)
        .await?;
    Ok(json!({ "deleted": deleted.rows_affected() > 0 }))
}

/// Checks a title against the post service's rules.
pub fn check_title(title: &str) -> Result<&str, String> {
    let title = title.trim();
    let chars = title.chars().count();
    if chars == 0 {
        return Err("invalid title: it must not be empty".into());
    }
    if chars > MAX_TITLE_CHARS {
        return Err(format!(
            "invalid title: {chars} characters, at most {MAX_TITLE_CHARS} allowed"
        ));
    }
    Ok(title)
}

async fn create_post(tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
    let id = cmd.uuid("post_id")?;
    let author = cmd.uuid("user_id")?;
    let title = check_title(cmd.text("title")?).map_err(DomainError::Rejected)?;
    let body = cmd.optional_text("body")?.unwrap_or_default();
    let author_exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM authors WHERE id = $1)")
        .bind(author)
        .fetch_one(&mut *tx)
        .await?;
    if !author_exists {
        return Err(DomainError::Rejected(format!("unknown author {author}")));
    }
    sqlx::query("INSERT INTO posts (id, author_id, title, body) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(author)
        .bind(title)
        .bind(body)
        .execute(tx)
        .await?;
    Ok(json!({ "post_id": id }))
}

/// Undoes `CreatePost`; a post that is already gone is fine.
async fn delete_post(tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
    let id = cmd.uuid("post_id")?;
    let deleted = sqlx::query("DELETE FROM posts WHERE id = $1")
        .bind(id)
        .execute(tx)
        .await?;
    Ok(json!({ "deleted": deleted.rows_affected() > 0 }))
}

/// The whole program: logs and span export, the service until SIGINT/SIGTERM, then a bounded flush
/// of the spans still buffered.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let telemetry = saga_runtime::telemetry::init("post-service", settings.log_format);
    let result = run(settings, saga_runtime::shutdown::on_signals()).await;
    telemetry.shutdown(std::time::Duration::from_secs(5));
    result
}

/// Builds and runs the service until `shutdown` (the end-to-end tests run it in-process).
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = ParticipantApp::build(&settings, Posts, &MIGRATOR).await?;
    tracing::info!("post-service ready");
    app.run_until_stopped(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_follow_the_rules() {
        assert_eq!(check_title("  Hello  "), Ok("Hello"));
        assert_eq!(
            check_title("   "),
            Err("invalid title: it must not be empty".into())
        );
        assert!(check_title(&"é".repeat(200)).is_ok(), "characters, not bytes");
        assert_eq!(
            check_title(&"x".repeat(201)),
            Err("invalid title: 201 characters, at most 200 allowed".into())
        );
    }
}
