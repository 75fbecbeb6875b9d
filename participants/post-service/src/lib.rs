//! The post service: owns authors (a replica of users) and posts in its own database and takes part
//! in the `register_user` and `publish_post` sagas through the participant kit.
//!
//! Commands: `CreateAuthor` / `DeleteAuthor`, `CreatePost` / `DeletePost`.
//! Business failures: pen name already taken, unknown author, invalid title (empty or over 200
//! characters).

use saga_participant::{
    Command, Domain, DomainError, EffectTable, FactSet, ParticipantSettings, Program, ServiceDefaults,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgConnection;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/post");

/// The `post-service` binary.
pub static PROGRAM: Program<PostRules, Posts> = Program {
    name: "post-service",
    migrator: &MIGRATOR,
    domain: |_| Posts,
};

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
    /// succeeded `CreatePost` that was not undone: the post still exists. Authors and posts no
    /// succeeded `CreateAuthor` / `CreatePost` in the inbox names: made outside any saga.
    fn effects(&self) -> &'static [EffectTable] {
        &EFFECTS
    }

    fn fact_sets(&self) -> &'static [FactSet] {
        &FACT_SETS
    }
}

/// The rows post-service's actions create.
const EFFECTS: [EffectTable; 2] = [
    EffectTable {
        kind: "author",
        table: "authors",
        command: "CreateAuthor",
        reply_field: "author_id",
        noun: "author replica",
        database: "posts database",
    },
    EffectTable {
        kind: "post",
        table: "posts",
        command: "CreatePost",
        reply_field: "post_id",
        noun: "post",
        database: "posts database",
    },
];

/// `authors`: author id (the user's id) → name; `post_counts`: author id → the number of posts
/// the posts database holds for it ("0" for an author without posts). Every post counts: a
/// `publish_post` saga that is not completed deletes its post when it compensates, so once no
/// saga is in flight they equal user-service's `post_counts`.
pub const FACT_SETS: [FactSet; 2] = [
    FactSet {
        name: "authors",
        from: "authors a",
        key: "a.id",
        value: "a.name",
    },
    FactSet {
        name: "post_counts",
        from: "authors a",
        key: "a.id",
        value: "(SELECT count(*) FROM posts p WHERE p.author_id = a.id)",
    },
];

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
