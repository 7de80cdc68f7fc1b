//! Validated names (slugs) for tokens, providers and clients.

use std::fmt;
use std::str::FromStr;

/// Longest name accepted, in characters.
const MAX_NAME_LEN: usize = 64;
/// What [`is_slug`] accepts, as a regular expression (for the OpenAPI description).
const SLUG_PATTERN: &str = "^[a-z0-9][a-z0-9._-]*$";

/// A name that is not a valid slug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {what} name '{value}': use 1 to 64 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
)]
pub struct InvalidName {
    /// Which kind of name, e.g. "token".
    pub what: &'static str,
    /// The rejected input.
    pub value: String,
}

/// True when `value` is a slug: `[a-z0-9][a-z0-9._-]*`, at most 64 characters.
fn is_slug(value: &str) -> bool {
    let mut chars = value.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    value.len() <= MAX_NAME_LEN
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

macro_rules! slug_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as a slug.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                if is_slug(&value) {
                    Ok(Self(value))
                } else {
                    Err(InvalidName { what: $what, value })
                }
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidName;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::new(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(concat!("The unique name of a ", $what, ".")))
                    .pattern(Some(SLUG_PATTERN))
                    .min_length(Some(1))
                    .max_length(Some(MAX_NAME_LEN))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

slug_type!(
    /// The unique name of a tracked token.
    TokenName, "token"
);
slug_type!(
    /// The unique name of a provider (a GitLab instance or OAuth server).
    ProviderName, "provider"
);
slug_type!(
    /// The unique name of an API client.
    ClientName, "client"
);
slug_type!(
    /// The unique name of a sink (where a token's secret is delivered).
    SinkName, "sink"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_slugs() {
        for ok in ["a", "ci-bot", "dbt_project.42", "0day", &"x".repeat(64)] {
            assert!(TokenName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_non_slugs_with_a_message_naming_the_input() {
        for bad in ["", "-x", "Upper", "has space", "semi;colon", "ü", &"x".repeat(65)] {
            let err = TokenName::new(bad).unwrap_err();
            assert!(err.to_string().contains("invalid token name"), "{err}");
        }
    }
}
