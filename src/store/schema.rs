//! Diesel table definitions shared by every backend.
//!
//! Kept by hand (not generated) so they use only the SQL types Diesel's `MultiConnection`
//! supports: Text, Binary, BigInt, Integer, Double and Timestamp (UTC).

diesel::table! {
    /// Small facts about the database itself, such as the master-key check value.
    meta (name) {
        name -> Text,
        value -> Binary,
    }
}

diesel::table! {
    /// GitLab instances and OAuth 2.0 authorization servers.
    providers (id) {
        id -> Text,
        name -> Text,
        kind -> Text,
        url -> Nullable<Text>,
        token_url -> Nullable<Text>,
        client_id -> Nullable<Text>,
        client_secret -> Nullable<Binary>,
        redirect_uri -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        not_before -> Nullable<Timestamp>,
        client_auth -> Text,
        issuer -> Nullable<Text>,
        authorization_url -> Nullable<Text>,
        revocation_url -> Nullable<Text>,
        scopes -> Nullable<Text>,
    }
}

diesel::table! {
    /// Tracked credentials with their policy, state and lease.
    tokens (id) {
        id -> Text,
        name -> Text,
        provider_id -> Text,
        kind -> Text,
        resource -> Nullable<Text>,
        external_id -> Nullable<Text>,
        secret -> Nullable<Binary>,
        refresh_token -> Nullable<Binary>,
        version -> BigInt,
        state -> Text,
        issued_at -> Nullable<Timestamp>,
        expires_at -> Nullable<Timestamp>,
        next_rotation_at -> Nullable<Timestamp>,
        lifetime_seconds -> Nullable<BigInt>,
        rotate_before_seconds -> Nullable<BigInt>,
        rotate_at_fraction -> Nullable<Double>,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamp>,
        attempt_id -> Nullable<Text>,
        attempt_count -> Integer,
        last_success_at -> Nullable<Timestamp>,
        last_failure_at -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        attention_reason -> Nullable<Text>,
        recovery -> Nullable<Text>,
        scopes -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        refresh_token_rotates -> Nullable<Integer>,
        gitlab_name -> Nullable<Text>,
        username -> Nullable<Text>,
        resource_kind -> Nullable<Text>,
    }
}

diesel::table! {
    /// One row per token version: when, by whom, with which expiry (never a secret).
    token_history (id) {
        id -> Text,
        token_id -> Text,
        version -> BigInt,
        event -> Text,
        actor -> Text,
        expires_at -> Nullable<Timestamp>,
        occurred_at -> Timestamp,
        scopes -> Nullable<Text>,
    }
}

diesel::table! {
    /// API clients: operators and readers, with hashed keys and optional webhooks.
    clients (id) {
        id -> Text,
        name -> Text,
        role -> Text,
        api_key_lookup -> Text,
        api_key_hash -> Binary,
        webhook_url -> Nullable<Text>,
        webhook_secret -> Nullable<Binary>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        previous_key_lookup -> Nullable<Text>,
        previous_key_hash -> Nullable<Binary>,
        previous_key_expires_at -> Nullable<Timestamp>,
        previous_webhook_secret -> Nullable<Binary>,
        previous_webhook_secret_expires_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// Which tokens a reader may read, by token identity (a token added later under a removed
    /// token's name is not granted).
    client_grants (client_id, token_id) {
        client_id -> Text,
        token_id -> Text,
        /// The version the reader last said it uses (`POST /v1/tokens/{name}/ack`).
        acknowledged_version -> Nullable<BigInt>,
        /// When it said so.
        acknowledged_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// Webhook deliveries written in the same transaction as their cause, with their
    /// delivery state: attempts, a short claim lease, and when delivered or abandoned.
    outbox (id) {
        id -> Text,
        client_id -> Text,
        event -> Text,
        token_name -> Text,
        payload -> Text,
        created_at -> Timestamp,
        next_attempt_at -> Timestamp,
        attempts -> Integer,
        delivered_at -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        leased_until -> Nullable<Timestamp>,
        lease_owner -> Nullable<Text>,
        abandoned_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// One row per webhook delivery attempt: when, the receiver's status or why it failed
    /// (never a URL or a secret), and how long it took.
    webhook_attempts (id) {
        id -> Text,
        delivery_id -> Text,
        attempted_at -> Timestamp,
        status -> Nullable<Integer>,
        error -> Nullable<Text>,
        duration_ms -> BigInt,
    }
}

diesel::table! {
    /// Who did what to which token, provider or client, and when.
    audit_log (id) {
        id -> Text,
        occurred_at -> Timestamp,
        actor -> Text,
        action -> Text,
        target_kind -> Text,
        target_name -> Text,
        detail -> Nullable<Text>,
    }
}

diesel::table! {
    /// Where a token's current secret is put for a consumer (a file, a GitLab CI/CD variable),
    /// and how far its delivery got.
    sinks (id) {
        id -> Text,
        name -> Text,
        token_id -> Text,
        kind -> Text,
        settings -> Text,
        state -> Text,
        delivered_version -> Nullable<BigInt>,
        delivered_at -> Nullable<Timestamp>,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        lease_until -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// A version a sink must receive, written in the transaction that committed it.
    sink_deliveries (id) {
        id -> Text,
        sink_id -> Text,
        version -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// Providers' answers written before they are committed to their tokens (see
    /// `store::answer_journal`).
    answer_journal (token_id) {
        token_id -> Text,
        attempt_id -> Text,
        secret -> Nullable<Binary>,
        refresh_token -> Nullable<Binary>,
        answer -> Text,
        journaled_at -> Timestamp,
    }
}

diesel::table! {
    /// Consent links handed out and not yet used (see `store::authorizations`): the state only
    /// as its hash, the PKCE verifier sealed.
    authorizations (id) {
        id -> Text,
        state_hash -> Text,
        token_name -> Text,
        token_id -> Nullable<Text>,
        provider_id -> Text,
        kind -> Text,
        scopes -> Text,
        redirect_uri -> Text,
        return_to -> Nullable<Text>,
        verifier -> Nullable<Binary>,
        requested_by -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
        used_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    /// Who consented to a token's OAuth grant (see `store::grant_owners`).
    grant_owners (token_id) {
        token_id -> Text,
        user_id -> Text,
        username -> Text,
        authorized_at -> Timestamp,
    }
}

diesel::table! {
    /// Operator console sessions (see `store::ui_sessions`): the id only as its hash.
    ui_sessions (id_hash) {
        id_hash -> Text,
        client_id -> Text,
        csrf_token -> Text,
        created_at -> Timestamp,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    /// Tokens created through a managing credential (see `store::creation`).
    token_managers (token_id) {
        token_id -> Text,
        manager_id -> Text,
        access_level -> Integer,
        scopes -> Text,
        overlap_seconds -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Old credentials to revoke at GitLab through a manager (see `store::pending_revocations`).
    pending_revocations (id) {
        id -> Text,
        token_id -> Text,
        token_name -> Text,
        provider_id -> Text,
        manager_id -> Text,
        token_kind -> Text,
        resource_kind -> Text,
        resource -> Text,
        external_id -> Text,
        version -> BigInt,
        replaced_by_version -> BigInt,
        not_after -> Timestamp,
        created_at -> Timestamp,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        lease_until -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::joinable!(tokens -> providers (provider_id));
diesel::joinable!(token_managers -> tokens (token_id));
diesel::allow_tables_to_appear_in_same_query!(token_managers, tokens);
diesel::joinable!(ui_sessions -> clients (client_id));
diesel::allow_tables_to_appear_in_same_query!(ui_sessions, clients);
diesel::joinable!(authorizations -> providers (provider_id));
diesel::joinable!(grant_owners -> tokens (token_id));
diesel::allow_tables_to_appear_in_same_query!(authorizations, providers);
diesel::allow_tables_to_appear_in_same_query!(grant_owners, tokens);
diesel::joinable!(token_history -> tokens (token_id));
diesel::joinable!(client_grants -> clients (client_id));
diesel::joinable!(client_grants -> tokens (token_id));
diesel::joinable!(outbox -> clients (client_id));
diesel::joinable!(webhook_attempts -> outbox (delivery_id));

diesel::allow_tables_to_appear_in_same_query!(tokens, providers);
diesel::allow_tables_to_appear_in_same_query!(answer_journal, tokens);
diesel::allow_tables_to_appear_in_same_query!(client_grants, clients);
// A secret read checks the reader's grant in the same statement (tokens::read_current_as).
diesel::allow_tables_to_appear_in_same_query!(client_grants, tokens);
diesel::allow_tables_to_appear_in_same_query!(client_grants, providers);
// Webhook fan-out finds the clients granted a token (outbox::enqueue); grants name token ids.
diesel::allow_tables_to_appear_in_same_query!(clients, tokens);
diesel::allow_tables_to_appear_in_same_query!(outbox, clients);
diesel::allow_tables_to_appear_in_same_query!(webhook_attempts, outbox);
diesel::joinable!(sinks -> tokens (token_id));
diesel::joinable!(sink_deliveries -> sinks (sink_id));
diesel::allow_tables_to_appear_in_same_query!(sinks, tokens);
diesel::allow_tables_to_appear_in_same_query!(sink_deliveries, sinks);
diesel::allow_tables_to_appear_in_same_query!(sinks, providers);
diesel::allow_tables_to_appear_in_same_query!(sink_deliveries, tokens);
