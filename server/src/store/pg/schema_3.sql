-- Version 3: audit entries in the compact binary form (format 2: `record` holds the body and
-- its 32-byte hash; `entry` stays for format 1 JSON rows written before), and the anchor that
-- stands in for each chain's pruned prefix.

ALTER TABLE audit_entries ADD COLUMN record bytea;
ALTER TABLE audit_entries ALTER COLUMN entry DROP NOT NULL;

CREATE TABLE audit_anchors (
    chain       text PRIMARY KEY,
    seq         bigint NOT NULL,
    hash        text NOT NULL,
    checkpoint  text NOT NULL
);
