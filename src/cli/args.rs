//! Command-line arguments (clap). Every flag named in the interface contract lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{FlagValues, HumanDuration};
use crate::domain::{ClientAuth, ClientName, ClientRole, ProviderKind, ProviderName, SinkName, TokenKind, TokenName};

/// Keeps GitLab and OAuth 2.0 credentials alive.
#[derive(Debug, Parser)]
#[command(name = "tokenwarden", version, about, propagate_version = true)]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command accepts (the CLI works on the same database as the daemon).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// TOML config file [env: TOKENWARDEN_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// sqlite://PATH (default sqlite://tokenwarden.db) or postgres://… [env: TOKENWARDEN_DATABASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// File holding the master key [env: TOKENWARDEN_MASTER_KEY_FILE]
    #[arg(long, global = true, value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Log line format: text or json [env: TOKENWARDEN_LOG_FORMAT]
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// The address users' browsers reach tokenwarden at (default http://<listen>); the OAuth
    /// redirect URI is <public-url>/oauth/callback [env: TOKENWARDEN_PUBLIC_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub public_url: Option<String>,
}

impl GlobalArgs {
    /// The flag values for configuration loading (`--listen` comes from `serve`).
    pub fn flag_values(&self, command: &Command) -> FlagValues {
        let mut flags = FlagValues {
            config: self.config.clone(),
            database_url: self.database_url.clone(),
            master_key_file: self.master_key_file.clone(),
            log_format: self.log_format.clone(),
            public_url: self.public_url.clone(),
            ..FlagValues::default()
        };
        if let Command::Serve(serve) = command {
            flags.listen = serve.listen.clone();
            flags.tls_cert_file = serve.tls_cert_file.clone();
            flags.tls_key_file = serve.tls_key_file.clone();
            flags.allow_plaintext = serve.allow_plaintext;
        }
        flags
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler and the API
    Serve(ServeArgs),
    /// Manage providers (GitLab instances, OAuth 2.0 servers)
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Manage tracked tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage API clients
    #[command(subcommand)]
    Client(ClientCommand),
    /// Rotate the master key that seals the stored secrets, and see how far a rotation got
    #[command(subcommand)]
    Key(KeyCommand),
    /// Deliver a token's current secret to a file after every rotation
    #[command(subcommand)]
    Sink(SinkCommand),
    /// Check every token for monitoring (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)
    Check(CheckArgs),
    /// Show the audit log: rotations, secret reads, and every change made
    Audit(AuditArgs),
    /// Write a consistent copy of the SQLite store to a new file (mode 0600), while the daemon runs
    Backup(BackupArgs),
    /// Replace the SQLite store with a backup (refused while a daemon serves the store)
    Restore(RestoreArgs),
}

/// `backup` options.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The new file to write (never overwritten; its directory must exist)
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
}

/// `restore` options.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file written by `tokenwarden backup`
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

/// `check` options.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// WARNING when a GitLab token expires within this (or a token is retrying)
    #[arg(long, default_value = "3d")]
    pub warn: HumanDuration,
    /// CRITICAL when a GitLab token expires within this (or a token needs attention or expired)
    #[arg(long, default_value = "1d")]
    pub critical: HumanDuration,
    /// Report OK for a store that tracks no token (otherwise UNKNOWN: a check of the wrong, empty store must not pass)
    #[arg(long)]
    pub allow_empty: bool,
}

/// `audit` options.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries about this token
    #[arg(long)]
    pub token: Option<TokenName>,
    /// Only entries from this long ago until now (e.g. 7d)
    #[arg(long)]
    pub since: Option<HumanDuration>,
    /// At most this many entries (the newest)
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the API listens on (default 127.0.0.1:8787) [env: TOKENWARDEN_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (re-read on SIGHUP) [env: TOKENWARDEN_TLS_CERT_FILE]
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of --tls-cert-file [env: TOKENWARDEN_TLS_KEY_FILE]
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Serve plain HTTP on an address outside loopback (behind a TLS-terminating proxy) [env: TOKENWARDEN_ALLOW_PLAINTEXT]
    #[arg(long)]
    pub allow_plaintext: bool,
}

/// `--json` for commands that list or show.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `provider …`
#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Add a provider (the client secret is read from standard input)
    Add(ProviderAddArgs),
    /// List providers
    List(OutputArgs),
    /// Remove a provider no token uses
    Remove {
        /// Provider name
        name: ProviderName,
    },
    /// Show one provider: endpoints, client authentication, what discovery found (never the secret)
    Show {
        /// Provider name
        name: ProviderName,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Change a provider's URLs or client credentials; tokens whose refresh the old client
    /// credentials failed are retried at once
    Update(ProviderUpdateArgs),
}

/// `provider update` options: only what is given changes.
#[derive(Debug, Args)]
pub struct ProviderUpdateArgs {
    /// Provider name
    pub name: ProviderName,
    #[command(flatten)]
    pub fields: ProviderFieldArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `token create` options.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Unique name (lowercase letters, digits, '-', '_', '.')
    pub name: TokenName,
    /// The GitLab provider
    #[arg(long)]
    pub provider: ProviderName,
    /// gitlab-project-access-token, gitlab-group-access-token or gitlab-deploy-token
    #[arg(long)]
    pub kind: TokenKind,
    /// Project id or path (project access tokens, project deploy tokens)
    #[arg(long, conflicts_with = "group")]
    pub project: Option<String>,
    /// Group id or path (group access tokens, group deploy tokens)
    #[arg(long)]
    pub group: Option<String>,
    /// The tracked token that creates it: a Maintainer's (project) or Owner's (group), with the api scope
    #[arg(long)]
    pub manager: TokenName,
    /// A scope of the new token (repeatable; api or self_rotate lets it rotate itself)
    #[arg(long = "scope", value_name = "SCOPE", required = true)]
    pub scopes: Vec<String>,
    /// Its role: guest, planner, reporter, developer (default), maintainer or owner (never above the manager's)
    #[arg(long, default_value = "developer")]
    pub access_level: String,
    /// Its name at GitLab (default "tokenwarden: NAME")
    #[arg(long)]
    pub gitlab_name: Option<String>,
    /// Lifetime requested at creation and at each rotation (e.g. 30d; at most 365d)
    #[arg(long)]
    pub lifetime: Option<HumanDuration>,
    /// Minimum margin before expiry (e.g. 7d)
    #[arg(long, visible_alias = "margin")]
    pub rotate_before: Option<HumanDuration>,
    /// Deploy tokens: how long an old one stays valid after its successor when not every reader acknowledged it (default 1h)
    #[arg(long)]
    pub overlap: Option<HumanDuration>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `token authorize` options.
#[derive(Debug, Args)]
pub struct TokenAuthorizeArgs {
    /// Token name: a new one, or an existing OAuth token to re-authorise
    pub name: TokenName,
    /// The provider to authorise at (default: an existing token's)
    #[arg(long)]
    pub provider: Option<ProviderName>,
    /// gitlab-oauth or oauth2 (default: the provider's)
    #[arg(long)]
    pub kind: Option<TokenKind>,
    /// A scope to request (repeatable; default: the provider's --scope, for GitLab api)
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Where the browser goes afterwards (?token=NAME&status=connected is added)
    #[arg(long, value_name = "URL")]
    pub return_to: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `provider add` options.
#[derive(Debug, Args)]
pub struct ProviderAddArgs {
    /// Unique name (lowercase letters, digits, '-', '_', '.')
    pub name: ProviderName,
    /// gitlab or oauth2
    #[arg(long)]
    pub kind: ProviderKind,
    #[command(flatten)]
    pub fields: ProviderFieldArgs,
    /// Discover the endpoints from this issuer (RFC 8414 or OpenID Connect discovery; oauth2)
    #[arg(long, value_name = "URL", conflicts_with = "token_url")]
    pub issuer: Option<String>,
}

/// The provider settings `provider add` sets and `provider update` changes.
#[derive(Debug, Args)]
pub struct ProviderFieldArgs {
    /// GitLab base URL, e.g. https://gitlab.example.com
    #[arg(long)]
    pub url: Option<String>,
    /// OAuth 2.0 token endpoint (oauth2 providers)
    #[arg(long)]
    pub token_url: Option<String>,
    /// OAuth application id
    #[arg(long)]
    pub client_id: Option<String>,
    /// Read the OAuth application secret from standard input (one line)
    #[arg(long)]
    pub client_secret_stdin: bool,
    /// Redirect URI registered for the OAuth application (sent with refresh requests)
    #[arg(long)]
    pub redirect_uri: Option<String>,
    /// How the client authenticates at the token endpoint: basic (default for oauth2), post
    /// (GitLab's default) or none (a public client: only client_id is sent)
    #[arg(long, value_name = "METHOD")]
    pub client_auth: Option<ClientAuth>,
    /// A scope authorisations at this provider request (repeatable; GitLab's default: api)
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// The authorization endpoint users consent at (oauth2 providers; GitLab's is {url}/oauth/authorize)
    #[arg(long, value_name = "URL")]
    pub authorize_url: Option<String>,
}

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Start tracking a token (its secret is read from standard input)
    Add(TokenAddArgs),
    /// List tokens
    List(OutputArgs),
    /// Show one token's metadata (never its secret)
    Show {
        /// Token name
        name: TokenName,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a token's versions: when, why, by whom
    History {
        /// Token name
        name: TokenName,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Rotate a token now, through the same lease as the scheduler; waits for the outcome
    Rotate {
        /// Token name
        name: TokenName,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print a consent link that stores the user's OAuth grant as NAME (or re-authorises NAME)
    Authorize(TokenAuthorizeArgs),
    /// Create a project or group access token at GitLab through a managing token, and track it
    Create(TokenCreateArgs),
    /// Make a token created by `token create` again through its manager (revoking what GitLab
    /// holds under its name), whatever its state; the daemon heals lost rotations on its own
    Heal {
        /// Token name
        name: TokenName,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Replace a dead OAuth grant's refresh token (one line on standard input) and refresh it now
    Reauth {
        /// Token name
        name: TokenName,
        /// Read the new refresh token from standard input (required)
        #[arg(long, required = true)]
        refresh_token_stdin: bool,
    },
    /// Pause rotation of a token
    Pause {
        /// Token name
        name: TokenName,
    },
    /// Resume rotation of a paused token
    Resume {
        /// Token name
        name: TokenName,
    },
    /// Change a token's policy or GitLab name in place (rescheduled at once; history unchanged)
    Update(TokenUpdateArgs),
    /// Stop tracking a token and forget its secrets (names the clients granted it; needs --yes when there are any)
    Remove {
        /// Token name
        name: TokenName,
        /// Remove it although clients are granted it (their grants go with it)
        #[arg(long)]
        yes: bool,
        /// Revoke the credential at the provider first, and remove the token only if that worked
        #[arg(long)]
        revoke: bool,
        /// With --revoke: remove the token even if the revocation failed
        #[arg(long, requires = "revoke")]
        force: bool,
    },
}

/// `token add` options.
#[derive(Debug, Args)]
pub struct TokenAddArgs {
    /// Unique name (lowercase letters, digits, '-', '_', '.')
    pub name: TokenName,
    /// The provider the token belongs to
    #[arg(long)]
    pub provider: ProviderName,
    /// gitlab-project-access-token, gitlab-group-access-token, gitlab-personal-access-token, gitlab-oauth or oauth2
    #[arg(long)]
    pub kind: TokenKind,
    /// Project id or path (project access tokens)
    #[arg(long, conflicts_with = "group")]
    pub project: Option<String>,
    /// Group id or path (group access tokens)
    #[arg(long)]
    pub group: Option<String>,
    /// Read the access token from standard input (one line)
    #[arg(long, conflicts_with = "refresh_token_stdin")]
    pub secret_stdin: bool,
    /// Read the OAuth refresh token from standard input (one line)
    #[arg(long)]
    pub refresh_token_stdin: bool,
    /// Lifetime requested when a GitLab token is rotated (e.g. 30d; at most 365d)
    #[arg(long)]
    pub lifetime: Option<HumanDuration>,
    /// Minimum margin before expiry (e.g. 7d, 5m)
    #[arg(long, visible_alias = "margin")]
    pub rotate_before: Option<HumanDuration>,
    /// Rotate when this fraction of the lifetime has passed (0 < F <= 1)
    #[arg(long)]
    pub rotate_at_fraction: Option<f64>,
}

/// `token update` options.
#[derive(Debug, Args)]
pub struct TokenUpdateArgs {
    /// Token name
    pub name: TokenName,
    /// Lifetime requested when the GitLab token is rotated (e.g. 90d; at most 365d)
    #[arg(long)]
    pub lifetime: Option<HumanDuration>,
    /// Minimum margin before expiry (e.g. 10d, 5m)
    #[arg(long, visible_alias = "rotate-before")]
    pub margin: Option<HumanDuration>,
    /// Rotate when this fraction of the lifetime has passed (0 < F <= 1)
    #[arg(long)]
    pub rotate_at_fraction: Option<f64>,
    /// The name the token has at GitLab
    #[arg(long, value_name = "TEXT")]
    pub gitlab_name: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `client …`
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create an API client; prints its key once, as JSON
    Add(ClientAddArgs),
    /// List clients
    List(OutputArgs),
    /// Change a client's grants or webhook in place
    Update(ClientUpdateArgs),
    /// Remove a client (a reader loses its grants at once; a running daemon refuses the key within 2 s)
    Remove {
        /// Client name
        name: ClientName,
    },
    /// Give a client a new API key, printed once as JSON; the old one works until the overlap ends
    RotateKey(ClientRotateArgs),
    /// Give a client a new webhook signing secret, printed once as JSON; deliveries are signed
    /// with the old one too until the overlap ends
    RotateWebhookSecret(ClientRotateArgs),
}

/// The `sink` subcommands.
#[derive(Debug, Subcommand)]
pub enum SinkCommand {
    /// Add a sink: the token's current secret is delivered at once (by `serve`) and after every
    /// rotation
    Add(Box<SinkAddArgs>),
    /// List the sinks with what each holds
    List(OutputArgs),
    /// Show one sink
    Show {
        /// Sink name
        name: SinkName,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove a sink (the file it wrote stays)
    Remove {
        /// Sink name
        name: SinkName,
    },
}

/// `sink add` options.
#[derive(Debug, Args)]
pub struct SinkAddArgs {
    /// Unique name (lowercase letters, digits, '-', '_', '.')
    pub name: SinkName,
    /// The token whose secret is delivered
    #[arg(long)]
    pub token: TokenName,
    /// Where to deliver it
    #[arg(long, value_enum, default_value = "file")]
    pub kind: SinkKind,
    /// file: the file to write (its directory must exist)
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// The file's permission bits, octal
    #[arg(long, default_value = "0600")]
    pub mode: String,
    /// raw (the secret alone), json ({"token","version","secret","expires_at"}) or env (VAR=secret)
    #[arg(long, value_enum, default_value = "raw")]
    pub format: crate::sinks::file::FileFormat,
    /// The variable name of the env format
    #[arg(long, default_value = "TOKEN", value_name = "NAME")]
    pub env_var: String,
    /// How long the --exec program may run
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub exec_timeout: HumanDuration,
    /// A program (and its arguments, the rest of the line) run without a shell after the file
    /// is in place, e.g. to make the consumer reload; it gets neither the secret nor our environment
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM [ARG]...")]
    pub exec: Vec<String>,
    /// gitlab-ci-variable: the GitLab provider whose instance holds the variable
    #[arg(long)]
    pub provider: Option<ProviderName>,
    /// gitlab-ci-variable: the project (numeric id or full path) whose variable is written
    #[arg(long, conflicts_with = "group")]
    pub project: Option<String>,
    /// gitlab-ci-variable: the group (numeric id or full path) whose variable is written
    #[arg(long)]
    pub group: Option<String>,
    /// gitlab-ci-variable: the variable's key
    #[arg(long)]
    pub key: Option<String>,
    /// gitlab-ci-variable: the token whose secret writes the variable (Maintainer of the
    /// project or Owner of the group, with the api scope)
    #[arg(long, value_name = "TOKEN")]
    pub manager: Option<TokenName>,
    /// gitlab-ci-variable: the variable's environment scope
    #[arg(long, default_value = "*", value_name = "SCOPE")]
    pub environment_scope: String,
    /// gitlab-ci-variable: expose the variable only to protected branches and tags
    #[arg(long)]
    pub protected: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Where a sink delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    /// A file, replaced atomically, with an optional reload program
    File,
    /// A GitLab project's or group's CI/CD variable, masked and hidden
    GitlabCiVariable,
}

/// The `key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Re-seal every stored secret under a new master key, online and in batches (resumable)
    Rotate {
        /// The new master key (64 hex characters or 32 raw bytes); the configured master key and
        /// retired_master_key_files must open what is stored now
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// How many stored secrets each master key seals
    Status(OutputArgs),
}

/// `client rotate-key` and `client rotate-webhook-secret` options.
#[derive(Debug, Args)]
pub struct ClientRotateArgs {
    /// Client name
    pub name: ClientName,
    /// How long the old key or secret stays valid beside the new one (0s: not at all)
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    pub overlap: HumanDuration,
}

/// `client update` options.
#[derive(Debug, Args)]
pub struct ClientUpdateArgs {
    /// Client name
    pub name: ClientName,
    /// A token this reader may read from now on (repeat for several)
    #[arg(long = "grant", value_name = "TOKEN")]
    pub grants: Vec<TokenName>,
    /// A token this reader may no longer read (repeat for several)
    #[arg(long = "revoke", value_name = "TOKEN")]
    pub revokes: Vec<TokenName>,
    /// Send signed change notifications to this URL from now on
    #[arg(long, value_name = "URL", conflicts_with = "no_webhook")]
    pub webhook_url: Option<String>,
    /// Send no more notifications (pending ones are abandoned)
    #[arg(long)]
    pub no_webhook: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `client add` options.
#[derive(Debug, Args)]
pub struct ClientAddArgs {
    /// Unique name (lowercase letters, digits, '-', '_', '.')
    pub name: ClientName,
    /// reader or operator
    #[arg(long)]
    pub role: ClientRole,
    /// A token this reader may read (repeat for several)
    #[arg(long = "grant", value_name = "TOKEN")]
    pub grants: Vec<TokenName>,
    /// URL to POST signed change notifications to
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
}
