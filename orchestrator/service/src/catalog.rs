//! The saga definitions this orchestrator runs, loaded from TOML (`orchestrator/sagas.toml` is
//! built in; `catalog_path` points at another file).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use saga_engine::{DefinitionError, SagaDefinition, StepKind};
use saga_proto::ledger::Reach;
use serde::Deserialize;

const BUILTIN: &str = include_str!("../../sagas.toml");

#[derive(Debug, thiserror::Error)]
pub(crate) enum CatalogError {
    #[error("cannot read saga catalog {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("saga catalog is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error(transparent)]
    Invalid(#[from] DefinitionError),
    #[error("saga catalog defines {0} v{1} twice")]
    Duplicate(String, u32),
    #[error("saga catalog is empty")]
    Empty,
    #[error("{0} v{1}: step `{2}`: {3}")]
    Child(String, u32, String, String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    saga: Vec<SagaDefinition>,
}

/// Every known version of every saga type.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    versions: HashMap<(String, u32), Arc<SagaDefinition>>,
    latest: HashMap<String, Arc<SagaDefinition>>,
}

impl Catalog {
    pub(crate) fn builtin() -> Result<Self, CatalogError> {
        Self::from_toml(BUILTIN)
    }

    pub(crate) fn from_file(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub(crate) fn from_toml(text: &str) -> Result<Self, CatalogError> {
        let file: File = toml::from_str(text)?;
        if file.saga.is_empty() {
            return Err(CatalogError::Empty);
        }
        let mut versions = HashMap::new();
        let mut latest: HashMap<String, Arc<SagaDefinition>> = HashMap::new();
        for def in file.saga {
            def.validate()?;
            let def = Arc::new(def);
            let key = (def.name.clone(), def.version);
            if versions.insert(key, def.clone()).is_some() {
                return Err(CatalogError::Duplicate(def.name.clone(), def.version));
            }
            let newer = latest.get(&def.name).is_none_or(|cur| cur.version < def.version);
            if newer {
                latest.insert(def.name.clone(), def);
            }
        }
        let catalog = Self { versions, latest };
        catalog.check_children()?;
        Ok(catalog)
    }

    /// A child step names a saga type the catalog has, whose newest version (the one a child
    /// starts on) can be compensated (no pivot), whose input the step fills (every field it maps
    /// exists, every required one is mapped), and that does not start its parent again (no cycle).
    fn check_children(&self) -> Result<(), CatalogError> {
        for def in self.versions.values() {
            for (step, child) in def.children() {
                let fail = |why: String| {
                    Err(CatalogError::Child(
                        def.name.clone(),
                        def.version,
                        step.name.clone(),
                        why,
                    ))
                };
                let Some(target) = self.latest(&child.saga) else {
                    return fail(format!("child saga type `{}` is not in the catalog", child.saga));
                };
                if let Some(pivot) = target.steps.iter().find(|s| s.is_pivot()) {
                    return fail(format!(
                        "child saga {} v{} has a pivot (`{}`), so compensating this step could not undo it",
                        target.name, target.version, pivot.name
                    ));
                }
                if let Some(field) = child
                    .input
                    .keys()
                    .find(|f| !target.input.iter().any(|i| &i.name == *f))
                {
                    return fail(format!(
                        "`{field}` is not an input of {} v{}",
                        target.name, target.version
                    ));
                }
                if let Some(missing) = target
                    .input
                    .iter()
                    .find(|i| i.required && !child.input.contains_key(&i.name))
                {
                    return fail(format!(
                        "required input `{}` of {} v{} is not given",
                        missing.name, target.name, target.version
                    ));
                }
                if self.starts(&target.name, &def.name, 0) {
                    return fail(format!(
                        "child saga `{}` starts `{}` again: a cycle",
                        target.name, def.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether a saga of type `from` (newest version) starts `to`, directly or through children.
    fn starts(&self, from: &str, to: &str, depth: usize) -> bool {
        let Some(def) = self.latest(from) else {
            return false;
        };
        depth < 16
            && def
                .children()
                .any(|(_, c)| c.saga == to || self.starts(&c.saga, to, depth + 1))
    }

    /// How long a saga of type `name` (newest version, the one children start on) can live;
    /// see [`SagaDefinition::lifetime_ms`]. Children are acyclic (checked at load); `depth` is a
    /// second guard.
    fn lifetime_ms(&self, def: &SagaDefinition, depth: usize) -> u64 {
        def.lifetime_ms(&|child| match self.latest(child) {
            Some(c) if depth < 16 => self.lifetime_ms(c, depth + 1),
            _ => u64::MAX,
        })
    }

    /// How long after a saga starts the orchestrator may still send commands to `participant`
    /// without an operator: the longest lifetime of any version with a step there.
    pub(crate) fn reach(&self, participant: &str) -> Reach {
        let longest = self
            .all()
            .filter(|d| d.commands(participant))
            .map(|d| (self.lifetime_ms(d, 0), d))
            .max_by(|(a, x), (b, y)| {
                a.cmp(b)
                    .then_with(|| (&y.name, y.version).cmp(&(&x.name, x.version)))
            });
        Reach {
            participant: participant.to_owned(),
            reach_ms: longest.map_or(0, |(ms, _)| ms),
            saga: longest.map(|(_, d)| d.name.clone()),
            version: longest.map(|(_, d)| d.version),
        }
    }

    /// Every version of every saga type, in no particular order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &SagaDefinition> {
        self.versions.values().map(AsRef::as_ref)
    }

    /// The version new sagas of this type start on.
    pub(crate) fn latest(&self, name: &str) -> Option<&Arc<SagaDefinition>> {
        self.latest.get(name)
    }

    /// The exact version a running saga uses.
    pub(crate) fn get(&self, name: &str, version: u32) -> Option<&Arc<SagaDefinition>> {
        self.versions.get(&(name.to_owned(), version))
    }

    /// Every definition, every version.
    pub(crate) fn definitions(&self) -> impl Iterator<Item = &Arc<SagaDefinition>> {
        self.versions.values()
    }

    /// The search keys of every version of `saga_type`, or of every type.
    pub(crate) fn search_keys(&self, saga_type: Option<&str>) -> BTreeSet<&str> {
        self.versions
            .values()
            .filter(|d| saga_type.is_none_or(|t| d.name == t))
            .flat_map(|d| d.search_keys.iter().map(String::as_str))
            .collect()
    }

    /// Saga type names, sorted.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.latest.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Every participant command topic any definition sends to (logical names).
    pub(crate) fn participant_topics(&self) -> BTreeSet<&str> {
        self.versions
            .values()
            .flat_map(|d| d.steps.iter().filter(|s| s.kind() == StepKind::Participant))
            .map(|s| s.participant.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_participants_reach_is_the_longest_lifetime_of_a_saga_that_commands_it_children_included() {
        let text = r#"
            [[saga]]
            name = "kid"
            version = 1
            [[saga.steps]]
            name = "k"
            participant = "x.commands"
            action = "K"
            compensation = "UndoK"
            deadline_ms = 1000
            retry = { give_up_after_ms = 1000, initial_backoff_ms = 10, max_backoff_ms = 100 }
            compensation_retry = { give_up_after_ms = 1000, initial_backoff_ms = 10, max_backoff_ms = 100 }
            [[saga]]
            name = "parent"
            version = 1
            [[saga.steps]]
            name = "p"
            participant = "y.commands"
            action = "P"
            deadline_ms = 1000
            retry = { give_up_after_ms = 1000, initial_backoff_ms = 10, max_backoff_ms = 100 }
            [[saga.steps]]
            name = "kid"
            child = { saga = "kid" }
        "#;
        let catalog = Catalog::from_toml(text).expect("valid");
        // kid: 2 s forward, 2 s back; parent: 2 s, then the child's 4 s forward and 4 s back.
        let x = catalog.reach("x.commands");
        assert_eq!(
            (x.reach_ms, x.saga.as_deref(), x.version),
            (4_000, Some("kid"), Some(1))
        );
        let y = catalog.reach("y.commands");
        assert_eq!(
            (y.reach_ms, y.saga.as_deref()),
            (2_000 + 4_000 + 4_000, Some("parent"))
        );
        let none = catalog.reach("z.commands");
        assert_eq!((none.reach_ms, none.saga), (0, None));
        // The demo's: register_user's two 5-minute steps and two one-hour compensations at most.
        let builtin = Catalog::builtin().expect("valid");
        assert!(builtin.reach("user.commands").reach_ms >= 2 * 305_000 + 2 * 3_605_000);
    }

    #[test]
    fn a_child_step_must_name_a_compensable_saga_fill_its_input_and_not_cycle() {
        let kid = r#"
            [[saga]]
            name = "kid"
            version = 1
            input = [{ name = "email", kind = "email" }, { name = "note", kind = "string", required = false }]
            [[saga.steps]]
            name = "go"
            wait = { signal = "go", timeout_ms = 1000 }
        "#;
        let parent = |child: &str| {
            format!(
                "{kid}\n[[saga]]\nname = \"onboard\"\nversion = 1\ninput = [{{ name = \"email\", kind = \"email\" }}]\n\
                 [[saga.steps]]\nname = \"account\"\nchild = {child}\n"
            )
        };
        assert!(Catalog::from_toml(&parent(r#"{ saga = "kid", input = { email = "email" } }"#)).is_ok());
        let refused = |child: &str| {
            Catalog::from_toml(&parent(child))
                .expect_err("refused")
                .to_string()
        };
        let e = refused(r#"{ saga = "nobody", input = { email = "email" } }"#);
        assert!(
            e.contains("onboard v1: step `account`: child saga type `nobody` is not in the catalog"),
            "{e}"
        );
        let e = refused(r#"{ saga = "kid" }"#);
        assert!(e.contains("required input `email` of kid v1 is not given"), "{e}");
        let e = refused(r#"{ saga = "kid", input = { email = "email", age = "1" } }"#);
        assert!(e.contains("`age` is not an input of kid v1"), "{e}");
        let e = Catalog::from_toml(&format!(
            "{BUILTIN}\n[[saga]]\nname = \"p\"\nversion = 1\n[[saga.steps]]\nname = \"c\"\n\
             child = {{ saga = \"publish_post\", input = {{ user_id = \"'0190f5a2-7c1e-7d3a-9b1f-2c3d4e5f6a7b'\", title = \"'t'\" }} }}\n"
        ))
        .expect_err("publish_post has a pivot")
        .to_string();
        assert!(e.contains("has a pivot"), "{e}");
        let cycle = "[[saga]]\nname = \"a\"\nversion = 1\n[[saga.steps]]\nname = \"s\"\nchild = { saga = \"b\" }\n\
                     [[saga]]\nname = \"b\"\nversion = 1\n[[saga.steps]]\nname = \"s\"\nchild = { saga = \"a\" }\n";
        let e = Catalog::from_toml(cycle).expect_err("a cycle").to_string();
        assert!(e.contains("a cycle"), "{e}");
    }

    #[test]
    fn a_condition_on_an_unknown_field_is_refused_at_load_naming_saga_version_and_step() {
        let text = r#"
            [[saga]]
            name = "pay"
            version = 3
            input = [{ name = "amount", kind = "integer" }]
            [[saga.steps]]
            name = "charge"
            participant = "pay.commands"
            action = "Charge"
            deadline_ms = 1000
            when = "amount > limit"
        "#;
        let e = Catalog::from_toml(text).expect_err("refused").to_string();
        assert!(
            e.contains("pay v3: step `charge` when:") && e.contains("`limit`"),
            "{e}"
        );
    }

    #[test]
    fn builtin_catalog_has_the_demo_sagas() {
        let c = Catalog::builtin().expect("built-in catalog is valid");
        assert_eq!(
            c.names(),
            vec![
                "moderated_post",
                "onboard_author",
                "publish_post",
                "register_user"
            ]
        );
        let moderated = c.latest("moderated_post").expect("moderated_post");
        assert_eq!(
            moderated.stages(),
            vec![0..2, 2..3, 3..4],
            "quota and draft in parallel"
        );
        let publish = c.latest("publish_post").expect("publish_post");
        assert!(publish.is_pivot(2), "confirm_post is the pivot");
        assert!(!publish.is_pivot(0) && !publish.is_pivot(1));
        assert_eq!(
            c.participant_topics().into_iter().collect::<Vec<_>>(),
            vec!["post.commands", "user.commands"]
        );
    }

    #[test]
    fn latest_version_wins_and_old_versions_stay_reachable() {
        let step = "[[saga.steps]]\nname = \"s\"\nparticipant = \"p\"\naction = \"A\"\ndeadline_ms = 10\n";
        let text =
            format!("[[saga]]\nname = \"x\"\nversion = 1\n{step}[[saga]]\nname = \"x\"\nversion = 2\n{step}");
        let c = Catalog::from_toml(&text).expect("valid");
        assert_eq!(c.latest("x").map(|d| d.version), Some(2));
        assert!(c.get("x", 1).is_some());
        assert!(matches!(
            Catalog::from_toml(&text.replace("version = 2", "version = 1")),
            Err(CatalogError::Duplicate(..))
        ));
        assert!(matches!(
            Catalog::from_toml("saga = []"),
            Err(CatalogError::Empty)
        ));
        assert!(matches!(
            Catalog::from_toml(&text.replace("deadline_ms = 10", "deadline_ms = 0")),
            Err(CatalogError::Invalid(_))
        ));
    }
}
