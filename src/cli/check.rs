//! `tokenwarden check`: a monitoring-plugin check of every token, with the usual exit codes
//! (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), one summary line, then a line per token not OK.

use std::process::ExitCode;

use chrono::{DateTime, TimeDelta, Utc};

use super::CliError;
use super::args::CheckArgs;
use super::context::open_store;
use crate::config::Settings;
use crate::domain::TokenState;
use crate::store::models::Token;
use crate::store::tokens;

/// How late an OAuth grant's refresh may be before it is a warning.
pub const GRANT_OVERDUE: TimeDelta = TimeDelta::minutes(5);

/// A monitoring status, ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Healthy.
    Ok,
    /// Needs a look soon.
    Warning,
    /// Needs action now.
    Critical,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
        }
    }

    fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        }
    }
}

/// One token's verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub status: Status,
    /// The token.
    pub token: String,
    /// What is wrong, for the operator.
    pub reason: String,
}

/// Judges one token at `now`: its state first, then how close its secret is to expiry.
/// GitLab tokens are judged against the `warn`/`critical` windows; an OAuth grant's access
/// token lives hours, so a grant is judged by whether its refresh is overdue or its access
/// token has already expired.
pub fn judge(token: &Token, now: DateTime<Utc>, warn: TimeDelta, critical: TimeDelta) -> Finding {
    let finding = |status, reason: String| Finding { status, token: token.name.to_string(), reason };
    let detail = token.attention_reason.as_deref().or(token.last_error.as_deref()).unwrap_or("no reason recorded");
    match token.state {
        TokenState::NeedsAttention => return finding(Status::Critical, format!("needs attention: {detail}")),
        TokenState::Expired => return finding(Status::Critical, "expired without a successful rotation".into()),
        _ => {}
    }
    let left = token.expires_at.map(|at| at - now);
    if token.kind.is_oauth_grant() {
        if left.is_some_and(|left| left <= TimeDelta::zero()) && token.state != TokenState::Paused {
            return finding(Status::Critical, "its access token has expired and was not refreshed".into());
        }
    } else if let Some(left) = left {
        if left <= critical {
            return finding(Status::Critical, format!("expires in {}", human(left)));
        }
        if left <= warn {
            return finding(Status::Warning, format!("expires in {}", human(left)));
        }
    }
    if token.state == TokenState::Retrying {
        return finding(Status::Warning, format!("retrying after {} failed attempt(s): {detail}", token.attempt_count));
    }
    let overdue = token.next_rotation_at.is_some_and(|at| now - at > GRANT_OVERDUE);
    if token.kind.is_oauth_grant() && token.state == TokenState::Active && overdue {
        return finding(Status::Warning, "its refresh is overdue (is the daemon running?)".into());
    }
    finding(Status::Ok, String::new())
}

/// A duration as `3d 4h`, `5h 10m` or `42m`.
fn human(delta: TimeDelta) -> String {
    if delta <= TimeDelta::zero() {
        return "0m (already expired)".into();
    }
    let (days, hours, minutes) = (delta.num_days(), delta.num_hours() % 24, delta.num_minutes() % 60);
    match (days, hours) {
        (0, 0) => format!("{minutes}m"),
        (0, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// What `check` reports besides the tokens themselves.
#[derive(Debug, Default)]
pub struct Surroundings {
    /// Sinks that need attention (name, last error): CRITICAL, their consumer is left with a
    /// secret that will stop working.
    pub failing_sinks: Vec<(String, String)>,
    /// Tokens whose manager needs attention or expired (token, manager, its state): WARNING,
    /// they cannot be healed or made again until it is fixed.
    pub broken_managers: Vec<(String, String, String)>,
    /// Old secrets whose revocation keeps failing (token, version, last error): WARNING, they
    /// stay valid at GitLab.
    pub failing_revocations: Vec<(String, i64, String)>,
}

/// The summary line and the lines for tokens that are not OK, worst first, then a CRITICAL line
/// per failing sink and a WARNING line per token whose manager is broken.
pub fn report(
    tokens: &[Token],
    surroundings: &Surroundings,
    now: DateTime<Utc>,
    warn: TimeDelta,
    critical: TimeDelta,
) -> (Status, Vec<String>) {
    let mut findings: Vec<Finding> = tokens.iter().map(|token| judge(token, now, warn, critical)).collect();
    findings.sort_by(|a, b| b.status.cmp(&a.status).then_with(|| a.token.cmp(&b.token)));
    let Surroundings { failing_sinks, broken_managers, failing_revocations } = surroundings;
    let mut worst = findings.first().map_or(Status::Ok, |finding| finding.status);
    if !failing_sinks.is_empty() {
        worst = worst.max(Status::Critical);
    }
    if !broken_managers.is_empty() || !failing_revocations.is_empty() {
        worst = worst.max(Status::Warning);
    }
    let count = |status| findings.iter().filter(|finding| finding.status == status).count();
    let mut summary = format!(
        "TOKENWARDEN {} - {} tokens: {} critical, {} warning, {} ok",
        worst.label(),
        tokens.len(),
        count(Status::Critical),
        count(Status::Warning),
        count(Status::Ok)
    );
    if !failing_sinks.is_empty() {
        summary.push_str(&format!("; {} sink(s) failing", failing_sinks.len()));
    }
    let mut lines = vec![summary];
    for finding in findings.iter().filter(|finding| finding.status != Status::Ok) {
        lines.push(format!("{}: {}: {}", finding.status.label(), finding.token, finding.reason));
    }
    for (sink, error) in failing_sinks {
        lines.push(format!("CRITICAL: sink {sink}: deliveries keep failing: {}", super::one_line(error)));
    }
    for (token, manager, state) in broken_managers {
        lines.push(format!(
            "WARNING: {token}: its manager '{manager}' is {state}: it cannot be healed or made again until the manager is fixed"
        ));
    }
    for (token, version, error) in failing_revocations {
        lines.push(format!(
            "WARNING: {token}: version {version} is still valid at GitLab: its revocation keeps failing: {}",
            super::one_line(error)
        ));
    }
    (worst, lines)
}

/// Runs the check; a store that cannot be read is UNKNOWN (exit 3), reported by the caller.
pub async fn run(settings: Settings, args: CheckArgs) -> Result<ExitCode, CliError> {
    let warn = TimeDelta::from_std(args.warn.get()).unwrap_or(TimeDelta::MAX);
    let critical = TimeDelta::from_std(args.critical.get()).unwrap_or(TimeDelta::MAX);
    let store = open_store(&settings).await?;
    let all = store.run(tokens::list).await?;
    if all.is_empty() && !args.allow_empty {
        return Err(CliError::Failed(format!(
            "the store at {} tracks no token (is it the right store? --allow-empty reports OK for it)",
            settings.database_url
        )));
    }
    let surroundings = Surroundings {
        failing_sinks: store.run(crate::store::sinks::needing_attention).await?,
        broken_managers: store.run(crate::store::creation::with_broken_manager).await?,
        failing_revocations: store
            .run(|conn| crate::store::pending_revocations::failing(conn, crate::engine::retire::WARN_AFTER_ATTEMPTS))
            .await?,
    };
    let (status, lines) = report(&all, &surroundings, Utc::now(), warn, critical);
    for line in lines {
        println!("{line}");
    }
    Ok(ExitCode::from(status.exit_code()))
}

/// The exit code and line for a check that could not read the store.
pub fn unknown(err: &CliError) -> ExitCode {
    println!("TOKENWARDEN UNKNOWN - {}", super::one_line(&err.to_string()));
    ExitCode::from(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{PolicyOverrides, TokenKind};

    fn token(kind: TokenKind, state: TokenState, expires_in: TimeDelta, now: DateTime<Utc>) -> Token {
        Token {
            id: "id".into(),
            name: "t".parse().unwrap(),
            provider: "gitlab".parse().unwrap(),
            kind,
            project: None,
            group: None,
            external_id: None,
            version: 1,
            state,
            issued_at: Some(now),
            expires_at: Some(now + expires_in),
            next_rotation_at: Some(now + expires_in / 2),
            policy_overrides: PolicyOverrides::default(),
            lease_owner: None,
            lease_expires_at: None,
            attempt_count: 0,
            last_success_at: None,
            last_failure_at: None,
            last_error: None,
            attention_reason: Some("revoked".into()),
            remedy: None,
            refresh_token_rotates: None,
            recovery: None,
            scopes: None,
            gitlab_name: None,
            authorized_as: None,
            manager: None,
            username: None,
            pending_revocations: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_failing_sink_makes_the_report_critical_and_is_named_after_the_tokens() {
        let now = Utc::now();
        let (warn, critical) = (TimeDelta::days(3), TimeDelta::days(1));
        let healthy = [token(TokenKind::GitlabPersonalAccessToken, TokenState::Active, TimeDelta::days(30), now)];
        let (status, lines) = report(&healthy, &Surroundings::default(), now, warn, critical);
        assert_eq!((status, lines.len()), (Status::Ok, 1), "{lines:?}");
        let failing = Surroundings {
            failing_sinks: vec![("s".to_owned(), "cannot create\na file".to_owned())],
            ..Surroundings::default()
        };
        let (status, lines) = report(&healthy, &failing, now, warn, critical);
        assert_eq!(status, Status::Critical);
        assert!(lines[0].starts_with("TOKENWARDEN CRITICAL - 1 tokens:") && lines[0].ends_with("; 1 sink(s) failing"));
        assert_eq!(lines[1], "CRITICAL: sink s: deliveries keep failing: cannot create a file");
    }

    #[test]
    fn a_token_whose_manager_is_broken_is_a_warning_naming_both() {
        let now = Utc::now();
        let (warn, critical) = (TimeDelta::days(3), TimeDelta::days(1));
        let healthy = [token(TokenKind::GitlabProjectAccessToken, TokenState::Active, TimeDelta::days(30), now)];
        let broken = Surroundings {
            broken_managers: vec![("t".to_owned(), "mgr".to_owned(), "needs_attention".to_owned())],
            ..Surroundings::default()
        };
        let (status, lines) = report(&healthy, &broken, now, warn, critical);
        assert_eq!(status, Status::Warning);
        assert_eq!(
            lines[1],
            "WARNING: t: its manager 'mgr' is needs_attention: it cannot be healed or made again until the manager is fixed"
        );
    }

    #[test]
    fn every_state_gets_the_status_an_operator_expects() {
        let now = Utc::now();
        let (warn, critical) = (TimeDelta::days(3), TimeDelta::days(1));
        let pat = TokenKind::GitlabPersonalAccessToken;
        let cases = [
            (TokenState::Active, Status::Ok),
            (TokenState::Rotating, Status::Ok),
            (TokenState::Paused, Status::Ok),
            (TokenState::Retrying, Status::Warning),
            (TokenState::NeedsAttention, Status::Critical),
            (TokenState::Expired, Status::Critical),
        ];
        for (state, expected) in cases {
            let judged = judge(&token(pat, state, TimeDelta::days(30), now), now, warn, critical);
            assert_eq!(judged.status, expected, "{state}: {judged:?}");
        }
        let soon = judge(&token(pat, TokenState::Active, TimeDelta::hours(12), now), now, warn, critical);
        assert_eq!(soon.status, Status::Critical, "expiring within --critical");
        let grant = token(TokenKind::GitlabOauth, TokenState::Active, TimeDelta::hours(-1), now);
        assert_eq!(judge(&grant, now, warn, critical).status, Status::Critical, "an access token left to expire");
    }
}
