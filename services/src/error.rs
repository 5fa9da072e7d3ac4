use diesel::result::{DatabaseErrorKind, Error as DieselError};

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Everything the domain can refuse or fail with. The web layer maps each variant to one HTTP
/// status; the messages of the 4xx variants are safe to show to users.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad input: the message says what is wrong and nothing was changed. `field` names the input
    /// at fault (the argument's name, which is also its form field's) when there is one, so that
    /// a form can mark that field.
    #[error("{message}")]
    Invalid { message: String, field: Option<&'static str> },
    #[error("not found")]
    NotFound,
    #[error("you are not allowed to do this")]
    Forbidden,
    #[error("sign in required")]
    Unauthorized,
    #[error("{0}")]
    Conflict(String),
    #[error("too many attempts; try again in {retry_after_secs} seconds")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("database error: {0}")]
    Database(DieselError),
    #[error("PostgreSQL unavailable: {0}")]
    DatabaseUnavailable(String),
    #[error("Redis error: {0}")]
    Redis(#[from] deadpool_redis::redis::RedisError),
    #[error("Redis unavailable: {0}")]
    RedisUnavailable(String),
    /// Shed on purpose: too much of one kind of work at once (e.g. lookups of API keys this
    /// instance has not seen, which a flood of made-up keys brings), not a failing service.
    #[error("too busy: {0}")]
    Overloaded(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<calendar::RangeError> for ServiceError {
    fn from(e: calendar::RangeError) -> Self {
        Self::Invalid { message: e.to_string(), field: e.field() }
    }
}

impl From<calendar::GranularityError> for ServiceError {
    fn from(e: calendar::GranularityError) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<calendar::MonthError> for ServiceError {
    fn from(e: calendar::MonthError) -> Self {
        Self::invalid(e.to_string())
    }
}

impl ServiceError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid { message: msg.into(), field: None }
    }

    /// Bad input in the field (argument) named `field`.
    pub fn invalid_field(field: &'static str, msg: impl Into<String>) -> Self {
        Self::Invalid { message: msg.into(), field: Some(field) }
    }

    /// Names `field` as the input at fault of bad input that names none yet (a domain type's
    /// parser knows what is wrong, its caller which field it came from); other errors pass.
    pub fn in_field(self, field: &'static str) -> Self {
        match self {
            Self::Invalid { message, field: None } => Self::invalid_field(field, message),
            other => other,
        }
    }

    /// True for failures of the service itself (5xx), false for refusals of the caller (4xx).
    pub fn is_server_error(&self) -> bool {
        matches!(
            self,
            Self::Database(_)
                | Self::DatabaseUnavailable(_)
                | Self::Redis(_)
                | Self::RedisUnavailable(_)
                | Self::Overloaded(_)
                | Self::Internal(_)
        )
    }
}

impl From<DieselError> for ServiceError {
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::NotFound => Self::NotFound,
            // Constraint violations are the caller's doing: a 409 or a 400, never a 500.
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                Self::Conflict("this already exists".into())
            }
            // A row it refers to went away meanwhile (a key or account deleted under the change).
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                Self::Conflict("what this refers to no longer exists".into())
            }
            DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, info) => {
                Self::invalid(format!("invalid value ({})", info.constraint_name().unwrap_or("check")))
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                Self::DatabaseUnavailable(info.message().to_owned())
            }
            other => Self::Database(other),
        }
    }
}

impl From<crate::db::PoolError> for ServiceError {
    fn from(err: crate::db::PoolError) -> Self {
        Self::DatabaseUnavailable(with_causes(&err))
    }
}

/// An error's message followed by those of its sources, each once: "error connecting to
/// server" alone does not say whether the port was closed or the host unknown.
pub(crate) fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

impl From<deadpool_redis::PoolError> for ServiceError {
    fn from(err: deadpool_redis::PoolError) -> Self {
        Self::RedisUnavailable(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Info(&'static str);

    impl diesel::result::DatabaseErrorInformation for Info {
        fn message(&self) -> &str {
            self.0
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    /// Constraint violations are refusals of the change (4xx), not failures of the service.
    #[test]
    fn constraint_violations_are_refusals() {
        for kind in [
            DatabaseErrorKind::UniqueViolation,
            DatabaseErrorKind::ForeignKeyViolation,
            DatabaseErrorKind::CheckViolation,
        ] {
            let err = ServiceError::from(DieselError::DatabaseError(kind, Box::new(Info("violated"))));
            assert!(!err.is_server_error(), "{err:?}");
        }
        let err = ServiceError::from(DieselError::DatabaseError(
            DatabaseErrorKind::NotNullViolation,
            Box::new(Info("a bug of ours")),
        ));
        assert!(err.is_server_error(), "{err:?}");
    }
}
