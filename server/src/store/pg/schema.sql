-- Hallmark's PostgreSQL schema, version 1. Records are the same JSON documents the embedded
-- store keeps (one serde format for both backends), beside the columns that are looked up,
-- made unique or purged by. Plain tables, text/bigint/bytea columns and primary or unique
-- keys only: no extensions, triggers, sequences in keys or advisory locks in the data path,
-- so the schema also suits PG-wire distributed SQL engines (see the README).

CREATE TABLE clients (
    client_id   text PRIMARY KEY,
    record      text NOT NULL
);

CREATE TABLE revoked_tokens (
    jti         text PRIMARY KEY,
    expires_at  bigint NOT NULL
);

CREATE TABLE assertion_jtis (
    client_id   text NOT NULL,
    jti         text NOT NULL,
    expires_at  bigint NOT NULL,
    PRIMARY KEY (client_id, jti)
);

CREATE TABLE token_lineage (
    jti         text PRIMARY KEY,
    record      text NOT NULL,
    expires_at  bigint NOT NULL
);

CREATE TABLE devices (
    client_id       text PRIMARY KEY,
    serial          text NOT NULL UNIQUE,
    ek_fingerprint  text NOT NULL UNIQUE,
    record          text NOT NULL
);

CREATE TABLE device_grants (
    device_code_hash  bytea PRIMARY KEY,
    user_code         text NOT NULL UNIQUE,
    record            text NOT NULL,
    expires_at        bigint NOT NULL
);

CREATE TABLE refresh_families (
    family      text PRIMARY KEY,
    expires_at  bigint NOT NULL,
    revoked_at  bigint
);

CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,
    family      text NOT NULL,
    record      text NOT NULL,
    expires_at  bigint NOT NULL
);

CREATE TABLE users (
    username    text PRIMARY KEY,
    record      text NOT NULL
);

CREATE TABLE web_sessions (
    id_hash     bytea PRIMARY KEY,
    record      text NOT NULL,
    expires_at  bigint NOT NULL
);

-- One hash chain per replica (`chain`), so that appending never serialises the fleet.
CREATE TABLE audit_entries (
    chain       text NOT NULL,
    seq         bigint NOT NULL,
    entry       text NOT NULL,
    time_ms     bigint NOT NULL,
    PRIMARY KEY (chain, seq)
);

CREATE TABLE audit_heads (
    chain       text PRIMARY KEY,
    seq         bigint NOT NULL,
    hash        text NOT NULL
);

-- Failure counters of the verification page, shared by every replica.
CREATE TABLE failure_windows (
    kind        text NOT NULL,
    subject     text NOT NULL,
    since       bigint NOT NULL,
    count       integer NOT NULL,
    PRIMARY KEY (kind, subject)
);

-- Signing keys: the Ed25519 seed sealed with AES-256-GCM under the key-encryption key that
-- every replica's data directory holds (`kek`), never in the clear.
CREATE TABLE signing_keys (
    kid          text PRIMARY KEY,
    sealed_seed  bytea NOT NULL,
    created_at   bigint NOT NULL,
    active_from  bigint NOT NULL
);
