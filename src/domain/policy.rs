//! A token's rotation policy: per-token overrides over configured defaults.

use serde::Serialize;

use super::TokenKind;
use crate::config::{HumanDuration, PolicyDefaults};

/// Per-token policy settings; `None` means "use the configured default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PolicyOverrides {
    /// Expiry requested when a GitLab access token is rotated.
    #[schema(value_type = Option<String>, example = "90d")]
    pub lifetime: Option<HumanDuration>,
    /// Minimum margin before expiry.
    #[schema(value_type = Option<String>, example = "10d")]
    pub rotate_before: Option<HumanDuration>,
    /// Fraction of the lifetime after which to rotate.
    pub rotate_at_fraction: Option<f64>,
}

/// The policy in force for one token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Policy {
    /// Expiry requested when a GitLab access token is rotated (unused for OAuth grants,
    /// whose lifetime the provider decides).
    pub lifetime: HumanDuration,
    /// Minimum margin before expiry.
    pub rotate_before: HumanDuration,
    /// Rotate when this fraction of the lifetime has passed; the earlier rule wins.
    pub rotate_at_fraction: f64,
}

/// What the policy settings are called where they were given (command-line flags or API fields),
/// so that a refusal names the setting the way its author wrote it.
#[derive(Debug, Clone, Copy)]
pub struct PolicyNames {
    /// The lifetime setting, e.g. `--lifetime`.
    pub lifetime: &'static str,
    /// The margin setting, e.g. `--rotate-before`.
    pub rotate_before: &'static str,
    /// The fraction setting, e.g. `--rotate-at-fraction`.
    pub rotate_at_fraction: &'static str,
}

impl Policy {
    /// Checks a token's overrides for its kind (lifetime 1d..365d and only for GitLab access
    /// tokens, a fraction in (0, 1], a GitLab token's margin shorter than its lifetime) and
    /// resolves them; the refusal names the setting as `names` spell it.
    pub fn checked(
        kind: TokenKind,
        overrides: &PolicyOverrides,
        defaults: &PolicyDefaults,
        names: PolicyNames,
    ) -> Result<Self, String> {
        if let Some(lifetime) = overrides.lifetime {
            if kind.is_oauth_grant() {
                return Err(format!(
                    "{} applies to GitLab access tokens; an OAuth provider decides its access tokens' lifetime",
                    names.lifetime
                ));
            }
            crate::config::validate_lifetime(lifetime).map_err(|m| format!("{} {m}", names.lifetime))?;
        }
        if let Some(fraction) = overrides.rotate_at_fraction {
            crate::config::validate_fraction(fraction).map_err(|m| format!("{} {m}", names.rotate_at_fraction))?;
        }
        let policy = Self::resolve(kind, overrides, defaults);
        if kind.has_gitlab_lifetime() && policy.rotate_before >= policy.lifetime {
            return Err(format!(
                "{} {} is not shorter than the lifetime {}",
                names.rotate_before, policy.rotate_before, policy.lifetime
            ));
        }
        Ok(policy)
    }

    /// Resolves the policy for a token of `kind` from its overrides and the defaults.
    pub fn resolve(kind: TokenKind, overrides: &PolicyOverrides, defaults: &PolicyDefaults) -> Self {
        let default_margin =
            if kind.is_oauth_grant() { defaults.oauth_rotate_before } else { defaults.gitlab_rotate_before };
        Self {
            lifetime: overrides.lifetime.unwrap_or(defaults.gitlab_lifetime),
            rotate_before: overrides.rotate_before.unwrap_or(default_margin),
            rotate_at_fraction: overrides.rotate_at_fraction.unwrap_or(defaults.rotate_at_fraction),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_depend_on_the_kind_and_overrides_win() {
        let defaults = PolicyDefaults::default();
        let none = PolicyOverrides::default();
        let pat = Policy::resolve(TokenKind::GitlabPersonalAccessToken, &none, &defaults);
        assert_eq!(pat.rotate_before, HumanDuration::days(7));
        assert_eq!(pat.lifetime, HumanDuration::days(30));
        let oauth = Policy::resolve(TokenKind::GitlabOauth, &none, &defaults);
        assert_eq!(oauth.rotate_before, HumanDuration::minutes(5));
        let custom = PolicyOverrides {
            lifetime: Some(HumanDuration::days(90)),
            rotate_before: Some(HumanDuration::days(14)),
            rotate_at_fraction: Some(0.5),
        };
        let resolved = Policy::resolve(TokenKind::GitlabGroupAccessToken, &custom, &defaults);
        assert_eq!(resolved.lifetime, HumanDuration::days(90));
        assert_eq!(resolved.rotate_before, HumanDuration::days(14));
        assert_eq!(resolved.rotate_at_fraction, 0.5);
    }
}
