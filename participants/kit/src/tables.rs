//! What the audit reads of a participant's own tables, declared rather than written: the rows its
//! actions create ([`EffectTable`], read in both of the audit's directions) and the fact sets it
//! publishes for the cross-checks ([`FactSet`]). A service lists them in
//! [`Domain::effects`](crate::Domain::effects) and [`Domain::fact_sets`](crate::Domain::fact_sets);
//! the trait's default hooks run the queries below.
//!
//! Table names and SQL expressions here are written in the service's code (`&'static str`), never
//! taken from a request, so they are put into the statements as they are.

use saga_proto::ledger::{DomainFinding, Fact, UnclaimedCursor, UnclaimedEffect};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{AuditedEntry, Unclaimed, UnclaimedWindow};

/// A table whose rows are the effects of one action: each row was created by a succeeded
/// `command` whose recorded reply names the row's `id` in `reply_field`. The table has a `uuid`
/// column `id` and a `created_at` column.
///
/// The checks are named after `kind`: `{kind}_missing` (a row an action still claims is gone),
/// `{reply_field}_missing` (the recorded reply names no row) and `{kind}_unclaimed` (a row no
/// action claims — made outside any saga).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectTable {
    /// The effect's name in check names, e.g. `user`.
    pub kind: &'static str,
    /// e.g. `users`.
    pub table: &'static str,
    /// The action that creates a row, e.g. `CreateUser`.
    pub command: &'static str,
    /// The field of that action's reply holding the row's id, e.g. `user_id`.
    pub reply_field: &'static str,
    /// What a row is, in messages: `user`, `author replica`.
    pub noun: &'static str,
    /// Where the rows are, in messages: `users database`.
    pub database: &'static str,
}

impl EffectTable {
    fn unclaimed_check(&self) -> String {
        format!("{}_unclaimed", self.kind)
    }
}

/// The audit's first direction: every succeeded, not undone action of one of `tables` whose row
/// is gone (or whose recorded reply names no row) is a finding. Findings come table by table, in
/// the order of `entries` within a table.
pub async fn missing_effects(
    conn: &mut PgConnection,
    entries: &[AuditedEntry<'_>],
    tables: &[EffectTable],
) -> Result<Vec<DomainFinding>, sqlx::Error> {
    let mut findings = Vec::new();
    for t in tables {
        let claimed: Vec<(&AuditedEntry<'_>, Option<Uuid>)> = entries
            .iter()
            .filter(|e| e.holds(t.command))
            .map(|e| (e, e.reply_uuid(t.reply_field)))
            .collect();
        if claimed.is_empty() {
            continue;
        }
        let ids: Vec<Uuid> = claimed.iter().filter_map(|(_, id)| *id).collect();
        let existing: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT id FROM {table} WHERE id = ANY($1)",
            table = t.table
        ))
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        for (e, id) in claimed {
            match id {
                None => findings.push(e.finding(
                    &format!("{}_missing", t.reply_field),
                    format!("the recorded {} reply names no {}", t.command, t.reply_field),
                )),
                Some(id) if !existing.contains(&id) => findings.push(e.finding(
                    &format!("{}_missing", t.kind),
                    format!(
                        "{} {id} created by this saga no longer exists in the {}",
                        t.noun, t.database
                    ),
                )),
                Some(_) => {}
            }
        }
    }
    Ok(findings)
}

/// The audit's other direction, one page: rows of `tables` created in the window that no
/// succeeded action in the inbox claims, in (check, id) order (check names in byte order), after
/// `window.after`, at most `window.limit`.
pub async fn unclaimed_effects(
    conn: &mut PgConnection,
    window: UnclaimedWindow<'_>,
    tables: &[EffectTable],
) -> Result<Vec<Unclaimed>, sqlx::Error> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let effects = tables
        .iter()
        .map(|t| {
            format!(
                "SELECT '{check}' AS kind, t.id FROM {table} t \
                 WHERE t.created_at >= $1 AND ($2::timestamptz IS NULL OR t.created_at < $2) \
                 AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.phase = 'action' AND i.outcome = 'success' \
                   AND i.command_type = '{command}' AND i.reply->>'{field}' = t.id::text)",
                check = t.unclaimed_check(),
                table = t.table,
                command = t.command,
                field = t.reply_field,
            )
        })
        .collect::<Vec<_>>()
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
    rows.into_iter()
        .map(|(check, id)| {
            let t = tables
                .iter()
                .find(|t| t.unclaimed_check() == check)
                .ok_or_else(|| sqlx::Error::Protocol(format!("unexpected unclaimed check `{check}`")))?;
            Ok(Unclaimed {
                effect: UnclaimedEffect {
                    check: check.clone(),
                    entity: format!("{} {id}", t.noun),
                    message: format!(
                        "{} {id} is in the {}, but no {} of any saga created it",
                        t.noun, t.database, t.command
                    ),
                },
                at: UnclaimedCursor { check, id },
            })
        })
        .collect()
}

/// A fact set kept in one table: `key` and `value` are SQL expressions over `from`, e.g.
/// `FactSet { name: "authors", from: "authors a", key: "a.id", value: "a.name" }`.
///
/// Keys are compared and ordered as text in byte order (`COLLATE "C"`, Rust's `str` order). Give
/// the table an index on that expression (`CREATE INDEX … ((id::text) COLLATE "C")`, as
/// `migrations/user/0004` does) or every page sorts the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FactSet {
    /// The set's name in `GET /audit/facts/{set}`.
    pub name: &'static str,
    pub from: &'static str,
    pub key: &'static str,
    pub value: &'static str,
}

impl FactSet {
    /// One page: at most `limit` facts with keys above `after`, in byte order of the keys.
    pub async fn page(
        &self,
        conn: &mut PgConnection,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Fact>, sqlx::Error> {
        let Self { from, key, value, .. } = self;
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT {key}::text, ({value})::text FROM {from} \
             WHERE ($1::text IS NULL OR {key}::text COLLATE \"C\" > $1::text COLLATE \"C\") \
             ORDER BY {key}::text COLLATE \"C\" LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?;
        Ok(rows.into_iter().map(|(key, value)| Fact { key, value }).collect())
    }
}
