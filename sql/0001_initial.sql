-- The durable side of presence. Times are milliseconds since the Unix epoch (UTC), taken
-- from Redis's clock by the API.

-- One row per user ever seen: the latest heartbeat (or explicit offline call) that the
-- batch job has made durable. Only ever moves forward.
CREATE TABLE last_seen (
    user_id      TEXT PRIMARY KEY NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    recorded_ms  INTEGER NOT NULL
) WITHOUT ROWID;

-- The online set as the previous run saw it: the state the next run diffs against.
-- since_ms is the first heartbeat of the open session; last_heartbeat_ms is the newest
-- heartbeat known durably, the fallback if the shadow key is gone before the session is
-- closed.
CREATE TABLE online_users (
    user_id           TEXT PRIMARY KEY NOT NULL,
    since_ms          INTEGER NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Closed online periods, for reading a user's history back.
CREATE TABLE sessions (
    user_id    TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms   INTEGER NOT NULL,
    PRIMARY KEY (user_id, started_ms)
) WITHOUT ROWID;

-- One row per committed run of the batch job.
CREATE TABLE runs (
    id             INTEGER PRIMARY KEY,
    started_ms     INTEGER NOT NULL,
    elapsed_ms     INTEGER NOT NULL,
    keys_scanned   INTEGER NOT NULL,
    duplicates     INTEGER NOT NULL,
    online         INTEGER NOT NULL,
    came_online    INTEGER NOT NULL,
    went_offline   INTEGER NOT NULL,
    rows_written   INTEGER NOT NULL,
    skipped_values INTEGER NOT NULL,
    -- Users who vanished from Redis without a trace and were kept for the next run,
    -- because too many vanished at once (Redis lost its data).
    vanished_kept  INTEGER NOT NULL,
    -- Redis's clock when the scan began: shadow values older than this were all seen
    -- by this run.
    scan_started_ms INTEGER NOT NULL
);
