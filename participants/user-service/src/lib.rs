//! The user service: owns users (unique e-mail, post quota) in its own database and takes part in
//! the `register_user` and `publish_post` sagas through the participant kit.
//!
//! Commands: `CreateUser` / `DeleteUser`, `ReservePostQuota` / `ReleasePostQuota`, `ConfirmPost`.
//! Business failures: e-mail already registered, unknown or disabled user, post quota exhausted,
//! user disabled before the post was confirmed.

use saga_participant::tables::missing_effects;
use saga_participant::{
    AuditedEntry, Command, Domain, DomainError, EffectTable, FactSet, ParticipantSettings, Program,
    ServiceDefaults,
};
use saga_proto::ledger::DomainFinding;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/user");

/// The `user-service` binary.
pub static PROGRAM: Program<UserRules, Users> = Program {
    name: "user-service",
    migrator: &MIGRATOR,
    domain: Users::new,
};

/// The user service's business settings (`APP_RULES__…`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserRules {
    /// How many posts a new user may publish.
    pub default_post_quota: i32,
}

impl Default for UserRules {
    fn default() -> Self {
        Self {
            default_post_quota: 3,
        }
    }
}

impl ServiceDefaults for UserRules {
    const DATABASE_URL: &'static str = "postgres://postgres@127.0.0.1:5432/saga_users";
    const COMMANDS_TOPIC: &'static str = "user.commands";
    const GROUP: &'static str = "user-service";
    const HTTP_LISTEN: &'static str = "127.0.0.1:8081";
}

pub type Settings = ParticipantSettings<UserRules>;

pub struct Users {
    rules: UserRules,
}

impl Users {
    pub fn new(rules: UserRules) -> Self {
        Self { rules }
    }
}

const COMMANDS: [&str; 5] = [
    "CreateUser",
    "DeleteUser",
    "ReservePostQuota",
    "ReleasePostQuota",
    "ConfirmPost",
];

impl Domain for Users {
    fn name(&self) -> &'static str {
        "user-service"
    }

    fn handles(&self, command_type: &str) -> bool {
        COMMANDS.contains(&command_type)
    }

    async fn apply(&self, tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
        match cmd.command_type.as_str() {
            "CreateUser" => self.create_user(tx, cmd).await,
            "DeleteUser" => delete_user(tx, cmd).await,
            "ReservePostQuota" => reserve_quota(tx, cmd).await,
            "ReleasePostQuota" => release_quota(tx, cmd).await,
            "ConfirmPost" => confirm_post(tx, cmd).await,
            other => Err(DomainError::Rejected(format!(
                "user-service does not handle `{other}`"
            ))),
        }
    }

    /// A user a succeeded `CreateUser` created, and that was not undone, still exists; a user no
    /// succeeded `CreateUser` in the inbox names was made outside any saga.
    fn effects(&self) -> &'static [EffectTable] {
        &EFFECTS
    }

    /// The users of [`Domain::effects`]; a succeeded `ConfirmPost` (the pivot): its confirmed
    /// reservation is still there; a succeeded `ReservePostQuota`: its reservation is still
    /// there, or — once `ReleasePostQuota` undid it — no longer holds a slot.
    async fn check(
        &self,
        conn: &mut PgConnection,
        entries: &[AuditedEntry<'_>],
    ) -> Result<Vec<DomainFinding>, sqlx::Error> {
        let mut findings = missing_effects(conn, entries, self.effects()).await?;
        findings.extend(check_confirmed(conn, entries).await?);
        findings.extend(check_reservations(conn, entries).await?);
        Ok(findings)
    }

    fn fact_sets(&self) -> &'static [FactSet] {
        &FACT_SETS
    }
}

/// The rows user-service's actions create.
const EFFECTS: [EffectTable; 1] = [EffectTable {
    kind: "user",
    table: "users",
    command: "CreateUser",
    reply_field: "user_id",
    noun: "user",
    database: "users database",
}];

/// `users`: user id → name; `post_counts`: user id → the number of posts counted for the user
/// (confirmed by `ConfirmPost`). For the cross-checks against post-service's `authors` and
/// `post_counts`.
pub const FACT_SETS: [FactSet; 2] = [
    FactSet {
        name: "users",
        from: "users",
        key: "id",
        value: "name",
    },
    FactSet {
        name: "post_counts",
        from: "users",
        key: "id",
        value: "post_count",
    },
];

/// A succeeded `ConfirmPost` (the pivot): the post it confirmed is still counted.
async fn check_confirmed(
    conn: &mut PgConnection,
    entries: &[AuditedEntry<'_>],
) -> Result<Vec<DomainFinding>, sqlx::Error> {
    let confirmed: Vec<&AuditedEntry<'_>> = entries.iter().filter(|e| e.holds("ConfirmPost")).collect();
    let sagas: Vec<Uuid> = confirmed.iter().map(|e| e.entry.saga_id).collect();
    let present: Vec<Uuid> = sqlx::query_scalar(
        "SELECT saga_id FROM post_reservations WHERE saga_id = ANY($1) AND state = 'confirmed'",
    )
    .bind(&sagas)
    .fetch_all(&mut *conn)
    .await?;
    Ok(confirmed
        .into_iter()
        .filter(|e| !present.contains(&e.entry.saga_id))
        .map(|e| {
            e.finding(
                "confirmed_post_missing",
                "the post this saga confirmed is no longer counted (no confirmed reservation)".into(),
            )
        })
        .collect())
}

impl Users {
    async fn create_user(&self, tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
        let id = cmd.uuid("user_id")?;
        let email = cmd.text("email")?;
        let name = cmd.text("name")?.trim();
        if name.is_empty() {
            return Err(DomainError::Rejected("name must not be empty".into()));
        }
        let inserted = sqlx::query("INSERT INTO users (id, email, name, post_quota) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(email)
            .bind(name)
            .bind(self.rules.default_post_quota)
            .execute(tx)
            .await;
        match inserted {
            Ok(_) => Ok(json!({ "user_id": id })),
            Err(sqlx::Error::Database(e)) if e.constraint() == Some("users_email") => Err(
                DomainError::Rejected(format!("e-mail {email} is already registered")),
            ),
            Err(e) => Err(e.into()),
        }
    }
}

/// Undoes `CreateUser`; deleting a user that is already gone succeeds.
async fn delete_user(tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
    let id = cmd.uuid("user_id")?;
    let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(tx)
        .await?;
    Ok(json!({ "deleted": deleted.rows_affected() > 0 }))
}

/// A succeeded `ReservePostQuota` holds a slot until the saga confirms the post (the reservation
/// becomes `confirmed`) or releases it (`ReleasePostQuota` deletes it): a held reservation that
/// is gone, or a released one still holding a slot, is drift.
async fn check_reservations(
    conn: &mut PgConnection,
    entries: &[AuditedEntry<'_>],
) -> Result<Vec<DomainFinding>, sqlx::Error> {
    let reserved: Vec<&AuditedEntry<'_>> = entries
        .iter()
        .filter(|e| {
            e.entry.phase == saga_proto::Phase::Action
                && e.entry.command_type == "ReservePostQuota"
                && e.entry.outcome == saga_proto::ledger::LedgerOutcome::Succeeded
        })
        .collect();
    if reserved.is_empty() {
        return Ok(Vec::new());
    }
    let sagas: Vec<Uuid> = reserved.iter().map(|e| e.entry.saga_id).collect();
    let states: std::collections::HashMap<Uuid, String> =
        sqlx::query_as("SELECT saga_id, state FROM post_reservations WHERE saga_id = ANY($1)")
            .bind(&sagas)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    let mut findings = Vec::new();
    for e in reserved {
        match (e.undone, states.get(&e.entry.saga_id).map(String::as_str)) {
            (false, None) => findings.push(e.finding(
                "reservation_missing",
                "the post quota slot this saga reserved is gone (no reservation)".into(),
            )),
            (true, Some("reserved")) => findings.push(e.finding(
                "released_slot_still_reserved",
                "this saga released its post quota slot, but the slot is still reserved".into(),
            )),
            _ => {}
        }
    }
    Ok(findings)
}

/// Holds one post slot for this saga, if the user has one left.
async fn reserve_quota(tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
    let user = cmd.uuid("user_id")?;
    let post = cmd.uuid("post_id")?;
    let taken: Option<i32> = sqlx::query_scalar(
        "UPDATE users SET reserved_posts = reserved_posts + 1 \
         WHERE id = $1 AND status = 'active' AND post_count + reserved_posts < post_quota RETURNING post_quota",
    )
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    if taken.is_none() {
        let found: Option<(String, i32)> =
            sqlx::query_as("SELECT status, post_quota FROM users WHERE id = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        let reason = match found {
            None => format!("no user {user}"),
            Some((status, _)) if status != "active" => format!("user {user} is {status}"),
            Some((_, quota)) => format!("post quota of {quota} is exhausted"),
        };
        return Err(DomainError::Rejected(reason));
    }
    sqlx::query(
        "INSERT INTO post_reservations (saga_id, user_id, post_id, state) VALUES ($1, $2, $3, 'reserved')",
    )
    .bind(cmd.saga_id)
    .bind(user)
    .bind(post)
    .execute(tx)
    .await?;
    Ok(json!({}))
}

/// Undoes `ReservePostQuota`: gives this saga's slot back, if it still holds one.
async fn release_quota(tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
    let released: Option<Uuid> = sqlx::query_scalar(
        "DELETE FROM post_reservations WHERE saga_id = $1 AND state = 'reserved' RETURNING user_id",
    )
    .bind(cmd.saga_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(user) = released {
        sqlx::query("UPDATE users SET reserved_posts = reserved_posts - 1 WHERE id = $1")
            .bind(user)
            .execute(tx)
            .await?;
    }
    Ok(json!({ "released": released.is_some() }))
}

/// The pivot of `publish_post`: the reserved slot becomes a counted post. A user disabled while
/// the post was being created cannot publish it.
async fn confirm_post(tx: &mut PgConnection, cmd: &Command) -> Result<Value, DomainError> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT u.status FROM post_reservations r JOIN users u ON u.id = r.user_id WHERE r.saga_id = $1",
    )
    .bind(cmd.saga_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(status) = status.filter(|s| s != "active") {
        return Err(DomainError::Rejected(format!(
            "the user is {status} and cannot publish"
        )));
    }
    let user: Option<Uuid> = sqlx::query_scalar(
        "UPDATE post_reservations SET state = 'confirmed' WHERE saga_id = $1 AND state = 'reserved' RETURNING user_id",
    )
    .bind(cmd.saga_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(user) = user else {
        return Err(DomainError::Rejected(
            "this saga holds no post quota reservation".into(),
        ));
    };
    let count: i32 = sqlx::query_scalar(
        "UPDATE users SET reserved_posts = reserved_posts - 1, post_count = post_count + 1 WHERE id = $1 \
         RETURNING post_count",
    )
    .bind(user)
    .fetch_one(tx)
    .await?;
    Ok(json!({ "post_count": count }))
}
