//! The saga definitions this orchestrator runs, loaded from TOML (`orchestrator/sagas.toml` is
//! built in; `catalog_path` points at another file).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use saga_engine::{DefinitionError, SagaDefinition};
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
    #[error(
        "{0} v{1}: step `{2}` starts a child saga; child sagas are defined and decided by the engine \
         but this orchestrator does not run them yet"
    )]
    ChildNotRun(String, u32, String),
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
            if let Some((step, _)) = def.children().next() {
                return Err(CatalogError::ChildNotRun(
                    def.name.clone(),
                    def.version,
                    step.name.clone(),
                ));
            }
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
        Ok(Self { versions, latest })
    }

    /// The version new sagas of this type start on.
    pub(crate) fn latest(&self, name: &str) -> Option<&Arc<SagaDefinition>> {
        self.latest.get(name)
    }

    /// The exact version a running saga uses.
    pub(crate) fn get(&self, name: &str, version: u32) -> Option<&Arc<SagaDefinition>> {
        self.versions.get(&(name.to_owned(), version))
    }

    /// Saga type names, sorted.
    /// Every definition, every version.
    pub(crate) fn definitions(&self) -> impl Iterator<Item = &Arc<SagaDefinition>> {
        self.versions.values()
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.latest.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Every participant command topic any definition sends to (logical names).
    pub(crate) fn participant_topics(&self) -> BTreeSet<&str> {
        self.versions
            .values()
            .flat_map(|d| d.steps.iter().map(|s| s.participant.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_step_is_refused_with_the_reason_until_the_shell_runs_children() {
        let text = r#"
            [[saga]]
            name = "onboard"
            version = 1
            [[saga.steps]]
            name = "account"
            child = { saga = "register_user" }
        "#;
        let e = Catalog::from_toml(text).expect_err("refused").to_string();
        assert!(
            e.contains("onboard v1: step `account` starts a child saga"),
            "{e}"
        );
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
        assert_eq!(c.names(), vec!["publish_post", "register_user"]);
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
