-- waymark schema version 1: the event log, run ownership (lease + fencing epoch), claims,
-- daemons and the schedule book. Every statement is idempotent (IF NOT EXISTS), so a migration
-- that a store without transactional DDL (CockroachDB, YugabyteDB) left half done is finished by
-- running `waymark migrate` again. Statements are separated by semicolons at line ends; none holds
-- a semicolon inside.

-- Which migrations were applied (crc32 of each script's text, to detect an edited script).
CREATE TABLE IF NOT EXISTS waymark_schema_migrations (
  version integer PRIMARY KEY,
  name text NOT NULL,
  checksum bigint NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per run: listing, the open set, the fence (owner, epoch, lease) and the claims.
-- last_seq is the last stored sequence number: a history whose rows end before it lost its tail.
-- owner NULL: imported, owned by nobody until a daemon takes it.
CREATE TABLE IF NOT EXISTS waymark_runs (
  run uuid PRIMARY KEY,
  open boolean NOT NULL,
  last_seq bigint NOT NULL,
  owner text,
  epoch bigint NOT NULL,
  lease_expires_at timestamptz NOT NULL,
  cluster text,
  holds_cluster boolean NOT NULL DEFAULT false,
  fire_key text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS waymark_runs_open ON waymark_runs (run) WHERE open;
CREATE UNIQUE INDEX IF NOT EXISTS waymark_runs_cluster_held ON waymark_runs (cluster) WHERE holds_cluster;
CREATE UNIQUE INDEX IF NOT EXISTS waymark_runs_fire_key ON waymark_runs (fire_key);

-- The records: bytes is the codec's frame unchanged (format version, CRC, hash chain).
-- No foreign key to waymark_runs: repair tools and the damage tests delete rows, and foreign
-- keys cost a lookup per row on distributed stores.
CREATE TABLE IF NOT EXISTS waymark_records (
  run uuid NOT NULL,
  seq bigint NOT NULL,
  bytes bytea NOT NULL,
  PRIMARY KEY (run, seq)
);

-- Daemons sharing the store: a name is held by one live incarnation at a time.
CREATE TABLE IF NOT EXISTS waymark_daemons (
  name text PRIMARY KEY,
  incarnation uuid NOT NULL,
  host text NOT NULL,
  pid integer NOT NULL,
  api text,
  heartbeat_at timestamptz NOT NULL,
  started_at timestamptz NOT NULL
);

-- The schedule book (JSON), one row, updated with optimistic concurrency on version.
CREATE TABLE IF NOT EXISTS waymark_schedules (
  id integer PRIMARY KEY CHECK (id = 1),
  version bigint NOT NULL,
  book text NOT NULL
);

-- `waymark migrate` serialises on this row (SELECT ... FOR UPDATE) instead of advisory locks,
-- which CockroachDB lacks.
CREATE TABLE IF NOT EXISTS waymark_migration_lock (
  id integer PRIMARY KEY
);
