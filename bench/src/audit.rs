//! The consistency audit: reads the orchestrator, users and posts databases (separately — nothing
//! joins across them) and checks the invariants of DESIGN.md.
//!
//! 1. Every saga is terminal (completed, compensated, or failed-and-parked).
//! 2. Completed `register_user` ⇒ the user and its author replica exist with the same name;
//!    compensated ⇒ neither exists.
//! 3. Completed `publish_post` ⇒ the post exists, by that user, and its quota slot is confirmed;
//!    compensated ⇒ no post and no slot held.
//! 4. No effect applied twice: each user's `post_count` equals their posts, no slot stays reserved.
//! 5. Users and authors agree: the same ids with the same names.
//!
//! 4 and 5 only hold when no saga is in flight; they are checked only then.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The three databases, each with its own pool.
#[derive(Clone)]
pub struct Databases {
    pub orchestrator: PgPool,
    pub users: PgPool,
    pub posts: PgPool,
}

#[derive(Debug, Default, Clone)]
pub struct AuditReport {
    /// (saga type, state) → count.
    pub sagas: BTreeMap<(String, String), i64>,
    pub in_flight: i64,
    pub users: usize,
    pub authors: usize,
    pub posts: usize,
    /// Redelivered or retried commands the participants answered from their inbox.
    pub repeats_answered: i64,
    pub violations: Vec<String>,
}

impl AuditReport {
    pub fn consistent(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn count(&self, saga_type: &str, state: &str) -> i64 {
        self.sagas
            .get(&(saga_type.to_owned(), state.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

struct User {
    name: String,
    post_count: i64,
    reserved_posts: i64,
}

fn id_in(context: &Value, field: &str) -> Option<Uuid> {
    context
        .get(field)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

pub async fn audit(dbs: &Databases) -> anyhow::Result<AuditReport> {
    let mut r = AuditReport::default();
    let sagas: Vec<(Uuid, String, String, Value)> =
        sqlx::query_as("SELECT id, saga_type, state, context FROM sagas")
            .fetch_all(&dbs.orchestrator)
            .await?;
    let users: HashMap<Uuid, User> = sqlx::query_as::<_, (Uuid, String, i32, i32)>(
        "SELECT id, name, post_count, reserved_posts FROM users",
    )
    .fetch_all(&dbs.users)
    .await?
    .into_iter()
    .map(|(id, name, c, res)| {
        (
            id,
            User {
                name,
                post_count: c.into(),
                reserved_posts: res.into(),
            },
        )
    })
    .collect();
    let reservations: HashMap<Uuid, (Uuid, Uuid, String)> = sqlx::query_as::<_, (Uuid, Uuid, Uuid, String)>(
        "SELECT saga_id, user_id, post_id, state FROM post_reservations",
    )
    .fetch_all(&dbs.users)
    .await?
    .into_iter()
    .map(|(saga, user, post, state)| (saga, (user, post, state)))
    .collect();
    let authors: HashMap<Uuid, String> = sqlx::query_as("SELECT id, name FROM authors")
        .fetch_all(&dbs.posts)
        .await?
        .into_iter()
        .collect();
    let posts: HashMap<Uuid, Uuid> = sqlx::query_as("SELECT id, author_id FROM posts")
        .fetch_all(&dbs.posts)
        .await?
        .into_iter()
        .collect();
    let mut repeats = 0i64;
    for pool in [&dbs.users, &dbs.posts] {
        let n: Option<i64> = sqlx::query_scalar("SELECT sum(duplicates)::bigint FROM inbox")
            .fetch_one(pool)
            .await?;
        repeats += n.unwrap_or(0);
    }
    r.users = users.len();
    r.authors = authors.len();
    r.posts = posts.len();
    r.repeats_answered = repeats;

    for (id, saga_type, state, context) in &sagas {
        *r.sagas.entry((saga_type.clone(), state.clone())).or_default() += 1;
        let v = &mut r.violations;
        match (saga_type.as_str(), state.as_str()) {
            (_, "running" | "compensating") => r.in_flight += 1,
            ("register_user", "completed") => {
                let Some(user) = id_in(context, "user_id") else {
                    v.push(format!("saga {id}: no user_id in its context"));
                    continue;
                };
                match (users.get(&user), authors.get(&user)) {
                    (Some(u), Some(a)) if &u.name == a => {}
                    (Some(u), Some(a)) => {
                        v.push(format!("user {user}: named `{}` but its author `{a}`", u.name))
                    }
                    (None, _) => v.push(format!("completed register_user {id}: user {user} missing")),
                    (_, None) => v.push(format!("completed register_user {id}: author {user} missing")),
                }
            }
            ("register_user", "compensated") => {
                if let Some(user) = id_in(context, "user_id") {
                    if users.contains_key(&user) {
                        v.push(format!(
                            "compensated register_user {id}: user {user} still exists"
                        ));
                    }
                    if authors.contains_key(&user) {
                        v.push(format!(
                            "compensated register_user {id}: author {user} still exists"
                        ));
                    }
                }
            }
            ("publish_post", "completed") => {
                let (Some(user), Some(post)) = (id_in(context, "user_id"), id_in(context, "post_id")) else {
                    v.push(format!("saga {id}: no user_id/post_id in its context"));
                    continue;
                };
                if posts.get(&post) != Some(&user) {
                    v.push(format!(
                        "completed publish_post {id}: post {post} by {user} missing"
                    ));
                }
                match reservations.get(id) {
                    Some((_, _, s)) if s == "confirmed" => {}
                    other => v.push(format!(
                        "completed publish_post {id}: quota slot is {other:?}, not confirmed"
                    )),
                }
            }
            ("publish_post", "compensated") => {
                if let Some(post) = id_in(context, "post_id")
                    && posts.contains_key(&post)
                {
                    v.push(format!("compensated publish_post {id}: post {post} still exists"));
                }
                if reservations.contains_key(id) {
                    v.push(format!(
                        "compensated publish_post {id}: its quota slot was not released"
                    ));
                }
            }
            _ => {}
        }
    }

    if r.in_flight > 0 {
        r.violations
            .push(format!("{} sagas are not terminal", r.in_flight));
        return Ok(r);
    }
    let mut per_author: HashMap<Uuid, i64> = HashMap::new();
    for author in posts.values() {
        *per_author.entry(*author).or_default() += 1;
    }
    for (id, u) in &users {
        let counted = per_author.get(id).copied().unwrap_or(0);
        if u.post_count != counted {
            r.violations.push(format!(
                "user {id}: post_count {} but {counted} posts",
                u.post_count
            ));
        }
        if u.reserved_posts != 0 {
            r.violations.push(format!(
                "user {id}: {} post slots still reserved",
                u.reserved_posts
            ));
        }
        match authors.get(id) {
            Some(name) if name == &u.name => {}
            Some(name) => r
                .violations
                .push(format!("user {id} `{}` has author name `{name}`", u.name)),
            None => r.violations.push(format!("user {id} has no author replica")),
        }
    }
    let user_ids: HashSet<&Uuid> = users.keys().collect();
    for id in authors.keys().filter(|a| !user_ids.contains(a)) {
        r.violations.push(format!("author {id} has no user"));
    }
    let held = reservations.values().filter(|(_, _, s)| s == "reserved").count();
    if held > 0 {
        r.violations
            .push(format!("{held} quota reservations are still held"));
    }
    Ok(r)
}
