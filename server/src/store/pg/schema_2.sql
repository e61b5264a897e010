-- Version 2: each replica's readiness probe writes here (a write proves the database takes
-- writes; a read would not), one row per replica.

CREATE TABLE write_probes (
    replica     text PRIMARY KEY,
    at          bigint NOT NULL
);
