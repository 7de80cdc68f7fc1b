//! Kinds of providers, tokens and API clients.

use super::string_enum;

string_enum!(
    /// What sort of authorization server a provider is.
    ProviderKind, "provider kind", {
        /// A GitLab instance (access-token rotation and OAuth at `{url}/oauth/token`).
        Gitlab => "gitlab",
        /// Any standard OAuth 2.0 authorization server with a `token_url`.
        Oauth2 => "oauth2",
    }
);

string_enum!(
    /// What sort of credential a token is, which decides how it is renewed.
    TokenKind, "token kind", {
        /// A GitLab project access token (needs a project).
        GitlabProjectAccessToken => "gitlab-project-access-token",
        /// A GitLab group access token (needs a group).
        GitlabGroupAccessToken => "gitlab-group-access-token",
        /// A GitLab deploy token (project or group), made and replaced through a manager.
        GitlabDeployToken => "gitlab-deploy-token",
        /// A GitLab personal access token.
        GitlabPersonalAccessToken => "gitlab-personal-access-token",
        /// A GitLab OAuth grant: access token plus single-use refresh token.
        GitlabOauth => "gitlab-oauth",
        /// An OAuth 2.0 grant against any provider's token endpoint.
        Oauth2 => "oauth2",
    }
);

impl TokenKind {
    /// The provider kind this token kind must belong to.
    pub fn provider_kind(self) -> ProviderKind {
        match self {
            TokenKind::Oauth2 => ProviderKind::Oauth2,
            _ => ProviderKind::Gitlab,
        }
    }

    /// True for grants renewed with a refresh token (the secret is an access token).
    pub fn is_oauth_grant(self) -> bool {
        matches!(self, TokenKind::GitlabOauth | TokenKind::Oauth2)
    }

    /// True for GitLab tokens with a lifetime tokenwarden chooses (an expiry date asked for at
    /// every renewal): access tokens and deploy tokens.
    pub fn has_gitlab_lifetime(self) -> bool {
        !self.is_oauth_grant()
    }

    /// True for GitLab access tokens (personal, project, group): renewed by the rotate
    /// endpoints, looked up with `GET /personal_access_tokens/self`.
    pub fn is_gitlab_access_token(self) -> bool {
        self.has_gitlab_lifetime() && !self.is_deploy_token()
    }

    /// True for deploy tokens: renewed by creating a successor through a manager, the old one
    /// revoked after an overlap.
    pub fn is_deploy_token(self) -> bool {
        self == TokenKind::GitlabDeployToken
    }
}

string_enum!(
    /// How an OAuth client authenticates at the token endpoint (RFC 6749 §2.3.1).
    ClientAuth, "client authentication", {
        /// HTTP Basic with the form-URL-encoded id and secret (`client_secret_basic`).
        Basic => "basic",
        /// Id and secret in the form body (`client_secret_post`).
        Post => "post",
        /// Only `client_id` in the form body: a public client (`none`).
        None => "none",
    }
);

impl ClientAuth {
    /// The default for a new provider of `kind`: Basic for standard OAuth 2.0 servers (the one
    /// method every server must support); the form body for GitLab, which has always worked.
    pub fn default_for(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Oauth2 => ClientAuth::Basic,
            ProviderKind::Gitlab => ClientAuth::Post,
        }
    }

    /// The method's name in RFC 8414 metadata (`token_endpoint_auth_methods_supported`).
    pub fn metadata_name(self) -> &'static str {
        match self {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
            ClientAuth::None => "none",
        }
    }
}

string_enum!(
    /// What an API client may do.
    ClientRole, "client role", {
        /// May do everything: list, inspect, read any secret, force rotation.
        Operator => "operator",
        /// May read only the tokens it was granted.
        Reader => "reader",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_spelling() {
        for kind in TokenKind::ALL {
            assert_eq!(kind.as_str().parse::<TokenKind>(), Ok(*kind));
        }
        for kind in ProviderKind::ALL {
            assert_eq!(kind.as_str().parse::<ProviderKind>(), Ok(*kind));
        }
    }

    #[test]
    fn unknown_kind_lists_the_accepted_spellings() {
        let err = "gitlab-trigger-token".parse::<TokenKind>().unwrap_err();
        let message = err.to_string();
        assert!(message.contains("gitlab-deploy-token"), "{message}");
        assert!(message.contains("gitlab-project-access-token"), "{message}");
    }

    #[test]
    fn oauth_kinds_belong_to_their_provider_kinds() {
        assert_eq!(TokenKind::Oauth2.provider_kind(), ProviderKind::Oauth2);
        assert_eq!(TokenKind::GitlabOauth.provider_kind(), ProviderKind::Gitlab);
        assert!(TokenKind::GitlabOauth.is_oauth_grant());
        assert!(TokenKind::GitlabGroupAccessToken.is_gitlab_access_token());
    }

    #[test]
    fn a_deploy_token_has_a_gitlab_lifetime_but_is_no_access_token() {
        assert!(TokenKind::GitlabDeployToken.has_gitlab_lifetime());
        assert!(!TokenKind::GitlabDeployToken.is_gitlab_access_token());
        assert!(!TokenKind::GitlabOauth.has_gitlab_lifetime());
    }
}
