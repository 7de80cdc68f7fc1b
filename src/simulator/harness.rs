//! The real engine wired to a simulator and a fresh SQLite store, for tests and the
//! benchmark: seed tokens at both ends, run rotations, and read the results back.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use secrecy::SecretString;

use super::state::random_secret;
use super::{Simulator, TokenOwner};
use crate::config::{DatabaseUrl, PolicyDefaults};
use crate::crypto::{Cipher, MasterKey};
use crate::domain::TokenState;
use crate::domain::{Policy, PolicyOverrides, ProviderKind, ProviderName, TokenKind, TokenName};
use crate::engine::policy::plan_rotation;
use crate::engine::{EngineContext, EngineSettings, SharedClock};
use crate::providers::gitlab::expiry_instant;
use crate::store::audit::{self, AuditTarget};
use crate::store::models::{HistoryRow, NewTokenRow, Token, naive, new_id};
use crate::store::providers::{self, NewProvider};
use crate::store::schema;
use crate::store::tokens::{self, NewToken, SecretField, secret_context};
use crate::store::{Store, StoreError};

/// The provider name the harness registers.
pub const PROVIDER: &str = "gitlab";
/// A generic OAuth 2.0 provider the harness also registers: the simulator's token endpoint,
/// reached by its `token_url` with the same application's credentials.
pub const GENERIC_PROVIDER: &str = "generic-oauth";
/// The actor the harness records for what it seeds.
pub const ACTOR: &str = "harness";

/// An engine context, its store and the simulator it talks to, all on one clock.
#[derive(Debug)]
pub struct EngineHarness {
    /// The simulated GitLab.
    pub sim: Simulator,
    /// The engine's shared state (store, cipher, clock, HTTP client).
    pub context: Arc<EngineContext>,
    /// The OAuth application registered at the simulator for the provider.
    pub client_id: String,
}

/// One personal access token for [`EngineHarness::track_access_tokens_bulk`].
#[derive(Debug, Clone)]
pub struct SeedToken {
    /// Its name in the store.
    pub name: String,
    /// When the scheduler should rotate it.
    pub next_rotation_at: DateTime<Utc>,
}

/// Why the harness could not start.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The simulator could not listen.
    #[error("cannot start the simulator: {0}")]
    Simulator(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine could not be built.
    #[error("cannot build the engine: {0}")]
    Engine(String),
}

fn name<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().unwrap_or_else(|err| panic!("harness name {text:?} is invalid: {err:?}"))
}

impl EngineHarness {
    /// A store in `dir`, a simulator on loopback and a GitLab provider (with an OAuth
    /// application) pointing at it, all reading time from `clock`.
    pub async fn start(dir: &Path, clock: SharedClock, settings: EngineSettings) -> Result<Self, HarnessError> {
        let url = DatabaseUrl::parse(&format!("sqlite://{}", dir.join("tokenwarden.db").display()))
            .map_err(|err| HarnessError::Engine(err.to_string()))?;
        Self::start_on(url, clock, settings).await
    }

    /// As [`Self::start`], on the store at `url` (migrated here; it should hold nothing yet).
    pub async fn start_on(
        url: DatabaseUrl,
        clock: SharedClock,
        settings: EngineSettings,
    ) -> Result<Self, HarnessError> {
        let sim = Simulator::start(clock.clone()).await?;
        let store = tokio::task::spawn_blocking(move || Store::open(&url))
            .await
            .map_err(|err| HarnessError::Engine(err.to_string()))??;
        let cipher = Arc::new(Cipher::new(&MasterKey::generate()));
        let context = EngineContext::new(store, cipher, clock, PolicyDefaults::default(), settings, "harness")
            .map_err(|err| HarnessError::Engine(err.to_string()))?;
        let (client_id, client_secret) = sim.create_application();
        let provider = NewProvider {
            name: name::<ProviderName>(PROVIDER),
            kind: ProviderKind::Gitlab,
            url: Some(sim.url().to_owned()),
            token_url: None,
            client_id: Some(client_id.clone()),
            client_secret: Some(SecretString::from(client_secret.clone())),
            redirect_uri: None,
        };
        let generic = NewProvider {
            name: name::<ProviderName>(GENERIC_PROVIDER),
            kind: ProviderKind::Oauth2,
            url: None,
            token_url: Some(format!("{}/oauth/token", sim.url())),
            client_id: Some(client_id.clone()),
            client_secret: Some(SecretString::from(client_secret)),
            redirect_uri: None,
        };
        let (cipher, now) = (context.cipher.clone(), context.clock.now());
        context
            .store
            .run(move |conn| {
                providers::insert(conn, &cipher, &provider, ACTOR, now)?;
                providers::insert(conn, &cipher, &generic, ACTOR, now)
            })
            .await?;
        Ok(Self { sim, context: Arc::new(context), client_id })
    }

    /// The engine's current time.
    pub fn now(&self) -> DateTime<Utc> {
        self.context.clock.now()
    }

    /// Creates a GitLab access token at the simulator (scope `api`, expiring on `expires_on`)
    /// and tracks it as `token_name`, planned by the default policy; returns its secret.
    pub async fn track_access_token(
        &self,
        token_name: &str,
        owner: TokenOwner,
        expires_on: NaiveDate,
    ) -> Result<String, StoreError> {
        let (id, secret) = self.sim.create_access_token(owner.clone(), &["api"], expires_on);
        let (kind, resource) = match owner {
            TokenOwner::Personal => (TokenKind::GitlabPersonalAccessToken, None),
            TokenOwner::Project(project) => (TokenKind::GitlabProjectAccessToken, Some(project)),
            TokenOwner::Group(group) => (TokenKind::GitlabGroupAccessToken, Some(group)),
        };
        let now = self.now();
        let expires_at = expiry_instant(expires_on);
        let policy = Policy::resolve(kind, &PolicyOverrides::default(), &self.context.policy);
        let new = NewToken {
            external_id: Some(id.to_string()),
            secret: Some(SecretString::from(secret.clone())),
            issued_at: Some(now),
            expires_at: Some(expires_at),
            next_rotation_at: Some(plan_rotation(token_name, now, expires_at, &policy)),
            scopes: Some("api".to_owned()),
            resource,
            ..self.new_token(token_name, kind)
        };
        self.insert(new).await?;
        Ok(secret)
    }

    /// Tracks many personal access tokens (scope `api`, expiring on `expires_on`, due at their
    /// `next_rotation_at`) in **one** write transaction, writing the same rows as
    /// [`tokens::insert`] (token, `added` history entry, `token.add` audit row). That function
    /// opens its own write transaction, and those do not nest, hence the rows are written here.
    ///
    /// With `at_simulator`, each token is also created at the simulator and the store holds
    /// its real secret, so it can be rotated. Without, the store holds a random secret the
    /// simulator does not know (enough for tokens that never fall due). Returns how many
    /// tokens were inserted.
    pub async fn track_access_tokens_bulk(
        &self,
        seeds: Vec<SeedToken>,
        expires_on: NaiveDate,
        at_simulator: bool,
    ) -> Result<usize, StoreError> {
        let now = self.now();
        let secrets: Vec<(Option<String>, String)> = if at_simulator {
            self.sim.with_state(|state| {
                seeds
                    .iter()
                    .map(|_| {
                        let (id, secret) =
                            state.create_access_token(TokenOwner::Personal, vec!["api".to_owned()], expires_on, now);
                        (Some(id.to_string()), secret)
                    })
                    .collect()
            })
        } else {
            seeds.iter().map(|_| (None, random_secret("glpat-"))).collect()
        };
        let cipher = self.context.cipher.clone();
        let kind = TokenKind::GitlabPersonalAccessToken;
        let expires_at = naive(expiry_instant(expires_on));
        let rows: Vec<NewTokenRow> = seeds
            .into_iter()
            .zip(secrets)
            .map(|(seed, (external_id, secret))| {
                let id = new_id();
                let sealed = cipher.try_seal(secret_context(&id, SecretField::Secret), &SecretString::from(secret))?;
                Ok(NewTokenRow {
                    name: name::<TokenName>(&seed.name).to_string(),
                    provider_id: String::new(),
                    kind: kind.to_string(),
                    resource: None,
                    external_id,
                    secret: Some(sealed),
                    refresh_token: None,
                    version: 1,
                    state: TokenState::Active.to_string(),
                    issued_at: Some(naive(now)),
                    expires_at: Some(expires_at),
                    next_rotation_at: Some(naive(seed.next_rotation_at)),
                    lifetime_seconds: None,
                    rotate_before_seconds: None,
                    rotate_at_fraction: None,
                    attempt_count: 0,
                    scopes: Some("api".to_owned()),
                    created_at: naive(now),
                    updated_at: naive(now),
                    id,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        self.context
            .store
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    let provider = providers::find_row(conn, &name::<ProviderName>(PROVIDER))?;
                    tokens::check_compatible(kind, &provider)?;
                    let detail = format!("kind={kind} provider={PROVIDER}");
                    let count = rows.len();
                    for mut row in rows.iter().cloned() {
                        row.provider_id.clone_from(&provider.id);
                        let token_name = row.name.clone();
                        diesel::insert_into(schema::tokens::table)
                            .values(&row)
                            .execute(conn)
                            .map_err(StoreError::on_unique("token", &token_name))?;
                        let history = HistoryRow {
                            id: new_id(),
                            token_id: row.id,
                            version: 1,
                            event: "added".to_owned(),
                            actor: ACTOR.to_owned(),
                            expires_at: row.expires_at,
                            occurred_at: naive(now),
                            scopes: None,
                        };
                        diesel::insert_into(schema::token_history::table).values(&history).execute(conn)?;
                        let target = AuditTarget { kind: "token", name: &token_name };
                        audit::record(conn, now, ACTOR, "token.add", target, Some(detail.clone()))?;
                    }
                    Ok(count)
                })
            })
            .await
    }

    /// Issues a grant at the simulator and tracks it as `token_name`, due at once (as
    /// `token add` leaves it); returns its refresh token.
    pub async fn track_grant(&self, token_name: &str) -> Result<String, StoreError> {
        let refresh_token = self.sim.create_grant(&self.client_id);
        let new = NewToken {
            refresh_token: Some(SecretString::from(refresh_token.clone())),
            next_rotation_at: Some(self.now()),
            ..self.new_token(token_name, TokenKind::GitlabOauth)
        };
        self.insert(new).await?;
        Ok(refresh_token)
    }

    /// Like [`EngineHarness::track_grant`], at the generic OAuth 2.0 provider
    /// ([`GENERIC_PROVIDER`], token kind `oauth2`).
    pub async fn track_generic_grant(&self, token_name: &str) -> Result<String, StoreError> {
        let refresh_token = self.sim.create_grant(&self.client_id);
        let new = NewToken {
            provider: name::<ProviderName>(GENERIC_PROVIDER),
            refresh_token: Some(SecretString::from(refresh_token.clone())),
            next_rotation_at: Some(self.now()),
            ..self.new_token(token_name, TokenKind::Oauth2)
        };
        self.insert(new).await?;
        Ok(refresh_token)
    }

    fn new_token(&self, token_name: &str, kind: TokenKind) -> NewToken {
        NewToken {
            name: name::<TokenName>(token_name),
            provider: name::<ProviderName>(PROVIDER),
            kind,
            resource: None,
            secret: None,
            refresh_token: None,
            policy: PolicyOverrides::default(),
            external_id: None,
            issued_at: None,
            expires_at: None,
            next_rotation_at: None,
            scopes: None,
        }
    }

    async fn insert(&self, new: NewToken) -> Result<Token, StoreError> {
        let (cipher, now) = (self.context.cipher.clone(), self.now());
        self.context.store.run(move |conn| tokens::insert(conn, &cipher, &new, ACTOR, now)).await
    }

    /// Adds an API client with `role`, granted `grants`, with a webhook to `webhook_url` if
    /// given; returns its API key.
    pub async fn add_client(
        &self,
        client_name: &str,
        role: crate::domain::ClientRole,
        grants: &[&str],
        webhook_url: Option<&str>,
    ) -> Result<String, StoreError> {
        let new = crate::store::clients::NewClient {
            name: name(client_name),
            role,
            grants: grants.iter().map(|grant| name(grant)).collect(),
            webhook_url: webhook_url.map(str::to_owned),
        };
        let (cipher, now) = (self.context.cipher.clone(), self.now());
        let created = self
            .context
            .store
            .run(move |conn| crate::store::clients::insert(conn, &cipher, &new, None, ACTOR, now))
            .await?;
        Ok(created.api_key.expose().to_owned())
    }

    /// The token's metadata as stored now.
    pub async fn token(&self, token_name: &str) -> Result<Token, StoreError> {
        let token_name = name::<TokenName>(token_name);
        self.context.store.run(move |conn| tokens::find(conn, &token_name)).await
    }

    /// The token's current secret (GitLab token or OAuth access token), opened.
    pub async fn secret(&self, token_name: &str) -> Result<Option<String>, StoreError> {
        self.read(token_name, SecretField::Secret).await
    }

    /// The grant's current refresh token, opened.
    pub async fn refresh_token(&self, token_name: &str) -> Result<Option<String>, StoreError> {
        self.read(token_name, SecretField::RefreshToken).await
    }

    async fn read(&self, token_name: &str, field: SecretField) -> Result<Option<String>, StoreError> {
        use secrecy::ExposeSecret;
        let (token_name, cipher) = (name::<TokenName>(token_name), self.context.cipher.clone());
        let secret = self.context.store.run(move |conn| tokens::read_secret(conn, &cipher, &token_name, field)).await?;
        Ok(secret.map(|s| s.expose_secret().to_owned()))
    }
}
