//! Who may do what. Credentials are named bearer tokens from configuration (secrets, from the
//! environment in production: `APP_AUTH__OPERATORS__ALICE=<token>`). Operators may read and act;
//! readers may only read; reads are open unless `protect_reads` is set. Tokens are compared in
//! constant time, against every configured token, so timing tells nothing about which was close.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Shortest accepted token: anything shorter is guessable.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Operator name → token. Operators may replay, retry and abort, and read.
    pub operators: BTreeMap<String, SecretString>,
    /// Reader name → token. Readers may only read.
    pub readers: BTreeMap<String, SecretString>,
    /// Whether GetSaga, ListSagas and the Watch streams need a credential.
    pub protect_reads: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    Reader,
    Operator,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
#[error("auth: {0}")]
pub(crate) struct AuthConfigError(String);

pub(crate) struct Authenticator {
    credentials: Vec<(Caller, SecretString)>,
    protect_reads: bool,
}

impl Authenticator {
    pub(crate) fn new(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        let mut credentials = Vec::new();
        for (role, map) in [
            (Role::Operator, &settings.operators),
            (Role::Reader, &settings.readers),
        ] {
            for (name, token) in map {
                if token.expose_secret().len() < MIN_TOKEN_LEN {
                    return Err(AuthConfigError(format!(
                        "the token of `{name}` is shorter than {MIN_TOKEN_LEN} characters"
                    )));
                }
                credentials.push((
                    Caller {
                        name: name.clone(),
                        role,
                    },
                    token.clone(),
                ));
            }
        }
        Ok(Self {
            credentials,
            protect_reads: settings.protect_reads,
        })
    }

    /// The caller named by an `authorization` header value; `None` when there is none.
    fn identify(&self, authorization: Option<&str>) -> Result<Option<Caller>, Denied> {
        let Some(value) = authorization else {
            return Ok(None);
        };
        let token = value
            .strip_prefix("Bearer ")
            .ok_or_else(|| Denied::Unauthenticated("authorization: expected `Bearer <token>`".into()))?;
        let mut found = None;
        for (caller, secret) in &self.credentials {
            let same: bool = secret.expose_secret().as_bytes().ct_eq(token.as_bytes()).into();
            if same && found.is_none() {
                found = Some(caller.clone());
            }
        }
        found
            .map(Some)
            .ok_or_else(|| Denied::Unauthenticated("authorization: unknown credential".into()))
    }

    /// For operator actions: an operator's credential, or the precise refusal.
    pub(crate) fn operator(&self, authorization: Option<&str>) -> Result<Caller, Denied> {
        match self.identify(authorization)? {
            Some(c) if c.role == Role::Operator => Ok(c),
            Some(c) => Err(Denied::PermissionDenied(format!(
                "`{}` may read but not act; operator actions need an operator credential",
                c.name
            ))),
            None => Err(Denied::Unauthenticated(
                "operator actions need `authorization: Bearer <operator token>`".into(),
            )),
        }
    }

    /// For reads: anyone when reads are open, else any known credential.
    pub(crate) fn reader(&self, authorization: Option<&str>) -> Result<(), Denied> {
        if !self.protect_reads {
            return Ok(());
        }
        match self.identify(authorization)? {
            Some(_) => Ok(()),
            None => Err(Denied::Unauthenticated(
                "reads need `authorization: Bearer <token>`".into(),
            )),
        }
    }

    /// Whether reads need a credential (the dashboard asks for one up front then).
    pub(crate) fn reads_protected(&self) -> bool {
        self.protect_reads
    }
}

/// Why a caller may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<Denied> for Status {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => Status::unauthenticated(m),
            Denied::PermissionDenied(m) => Status::permission_denied(m),
        }
    }
}

/// The `authorization` value of gRPC metadata (a non-text value reads as a malformed one).
pub(crate) fn bearer(metadata: &MetadataMap) -> Option<&str> {
    metadata.get("authorization").map(|v| v.to_str().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn auth(protect_reads: bool) -> Authenticator {
        let mut s = AuthSettings {
            protect_reads,
            ..AuthSettings::default()
        };
        s.operators
            .insert("alice".into(), SecretString::from("alice-token-0123456789"));
        s.readers
            .insert("bob".into(), SecretString::from("bob-reader-token-0123"));
        Authenticator::new(&s).expect("valid settings")
    }

    #[test]
    fn operators_act_readers_read_strangers_neither() {
        let a = auth(true);
        let code = |d: Denied| Status::from(d).code();
        let alice = a
            .operator(Some("Bearer alice-token-0123456789"))
            .expect("operator");
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Operator));
        assert_eq!(
            code(a.operator(Some("Bearer bob-reader-token-0123")).unwrap_err()),
            Code::PermissionDenied
        );
        assert_eq!(code(a.operator(None).unwrap_err()), Code::Unauthenticated);
        assert_eq!(
            code(a.operator(Some("Bearer nope")).unwrap_err()),
            Code::Unauthenticated
        );
        assert_eq!(
            code(a.operator(Some("alice-token-0123456789")).unwrap_err()),
            Code::Unauthenticated
        );
        assert!(a.reader(Some("Bearer bob-reader-token-0123")).is_ok());
        assert_eq!(code(a.reader(None).unwrap_err()), Code::Unauthenticated);
        assert!(auth(false).reader(None).is_ok(), "open reads");
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "authorization",
            "Bearer alice-token-0123456789".parse().expect("ascii"),
        );
        assert_eq!(
            a.operator(bearer(&metadata)).map(|c| c.name).ok(),
            Some("alice".to_owned())
        );
    }

    #[test]
    fn short_tokens_are_refused_at_start_up() {
        let mut s = AuthSettings::default();
        s.operators.insert("x".into(), SecretString::from("short"));
        assert!(Authenticator::new(&s).is_err());
    }
}
