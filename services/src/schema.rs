//! Diesel table definitions, matching `migrations/`.

diesel::table! {
    users (id) {
        id -> Int8,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        created_at -> Timestamptz,
        monthly_summary -> Bool,
        email_token -> Uuid,
        monthly_summary_since -> Nullable<Timestamptz>,
        disabled_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Bytea,
        user_id -> Int8,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        last_seen_at -> Timestamptz,
        browser -> Text,
    }
}

diesel::table! {
    password_resets (token_hash) {
        token_hash -> Bytea,
        user_id -> Int8,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        owner_id -> Int8,
        name -> Text,
        prefix -> Text,
        secret_hash -> Bytea,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
        alert_email_thresholds -> Array<Int2>,
        rolled_at -> Nullable<Timestamptz>,
        previous_prefix -> Nullable<Text>,
        previous_secret_hash -> Nullable<Bytea>,
        previous_expires_at -> Nullable<Timestamptz>,
        previous_last_used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    api_key_quotas (api_key_id) {
        api_key_id -> Uuid,
        requests_per_hour -> Int8,
        requests_per_day -> Int8,
        burst_per_second -> Nullable<Int4>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    known_devices (token_hash, user_id) {
        token_hash -> Bytea,
        user_id -> Int8,
        last_sign_in_at -> Timestamptz,
        forgotten_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(known_devices -> users (user_id));
diesel::joinable!(api_keys -> users (owner_id));
diesel::joinable!(api_key_quotas -> api_keys (api_key_id));

diesel::table! {
    quota_requests (id) {
        id -> Int8,
        api_key_id -> Uuid,
        requested_by -> Int8,
        current_per_hour -> Int8,
        current_per_day -> Int8,
        requested_per_hour -> Int8,
        requested_per_day -> Int8,
        reason -> Text,
        status -> Text,
        approved_per_hour -> Nullable<Int8>,
        approved_per_day -> Nullable<Int8>,
        decided_by -> Nullable<Int8>,
        decided_at -> Nullable<Timestamptz>,
        decision_note -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    quota_changes (id) {
        id -> Int8,
        api_key_id -> Uuid,
        changed_by -> Nullable<Int8>,
        source -> Text,
        quota_request_id -> Nullable<Int8>,
        old_per_hour -> Int8,
        old_per_day -> Int8,
        old_burst -> Nullable<Int4>,
        new_per_hour -> Int8,
        new_per_day -> Int8,
        new_burst -> Nullable<Int4>,
        reason -> Text,
        changed_at -> Timestamptz,
    }
}

diesel::table! {
    notifications (id) {
        id -> Int8,
        user_id -> Int8,
        kind -> Text,
        title -> Text,
        body -> Text,
        link -> Nullable<Text>,
        dedupe_key -> Nullable<Text>,
        created_at -> Timestamptz,
        read_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    outbound_emails (id) {
        id -> Int8,
        to_address -> Text,
        subject -> Text,
        text_body -> Text,
        html_body -> Text,
        dedupe_key -> Nullable<Text>,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        sent_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        claim_token -> Nullable<Uuid>,
        message_key -> Uuid,
        failed_at -> Nullable<Timestamptz>,
        retry_until -> Nullable<Timestamptz>,
        bulk -> Bool,
        // `list_unsubscribe` (Nullable<Text>) and `confidential` (Bool) are written and read
        // with SQL: a 17th column would need diesel's 32-column-tables feature, a much longer
        // build.
    }
}

diesel::table! {
    quota_alerts (api_key_id, quota_window, period_start, threshold) {
        api_key_id -> Uuid,
        quota_window -> Text,
        period_start -> Timestamptz,
        threshold -> Int2,
        quota_limit -> Int8,
        crossed_at -> Timestamptz,
        emailed -> Bool,
    }
}

diesel::table! {
    outbound_email_attachments (id) {
        id -> Int8,
        email_id -> Int8,
        filename -> Text,
        content_type -> Text,
        content -> Bytea,
    }
}

diesel::table! {
    monthly_reports (user_id, month) {
        user_id -> Int8,
        month -> Date,
        email_id -> Nullable<Int8>,
        sends -> Int4,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(outbound_email_attachments -> outbound_emails (email_id));
diesel::joinable!(quota_requests -> api_keys (api_key_id));
diesel::joinable!(password_resets -> users (user_id));
diesel::joinable!(quota_changes -> api_keys (api_key_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    sessions,
    known_devices,
    password_resets,
    api_keys,
    api_key_quotas,
    quota_requests,
    quota_changes,
    notifications,
    outbound_emails,
    quota_alerts,
    outbound_email_attachments,
    monthly_reports
);
