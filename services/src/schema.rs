//! Diesel table definitions, matching `migrations/`.

diesel::table! {
    users (id) {
        id -> Int8,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Bytea,
        user_id -> Int8,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
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

diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(api_keys -> users (owner_id));
diesel::joinable!(api_key_quotas -> api_keys (api_key_id));

diesel::allow_tables_to_appear_in_same_query!(users, sessions, api_keys, api_key_quotas);
