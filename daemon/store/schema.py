"""Versioned schema migrations. Append new versions; never edit a released one."""

from __future__ import annotations

import time

import apsw

from .sqlite_conns import scalar

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "initial schema",
        """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            login TEXT NOT NULL UNIQUE,
            github_id INTEGER UNIQUE,
            name TEXT,
            github_token_enc BLOB,
            is_operator INTEGER NOT NULL DEFAULT 0,
            disabled INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            token_hash TEXT NOT NULL UNIQUE,
            label TEXT,
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL
        );
        CREATE TABLE tasks (
            seqno INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            user_id INTEGER NOT NULL REFERENCES users(id),
            repo_url TEXT NOT NULL,
            prompt TEXT NOT NULL,
            base_branch TEXT,
            status TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            due_at REAL,
            reason TEXT,
            error TEXT,
            budget TEXT NOT NULL DEFAULT '{}',
            usage TEXT NOT NULL DEFAULT '{}',
            branch TEXT,
            pr_url TEXT,
            diff TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            last_seq INTEGER NOT NULL DEFAULT 0,
            idempotency_key TEXT,
            UNIQUE (user_id, idempotency_key)
        );
        CREATE INDEX tasks_by_status ON tasks(status, seqno);
        CREATE INDEX tasks_by_user ON tasks(user_id, seqno);
        CREATE TABLE events (
            task_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            type TEXT NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (task_id, seq)
        ) WITHOUT ROWID;
        CREATE TABLE messages (
            task_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (task_id, idx)
        ) WITHOUT ROWID;
        CREATE TABLE tool_calls (
            task_id TEXT NOT NULL,
            tool_use_id TEXT NOT NULL,
            name TEXT NOT NULL,
            input TEXT NOT NULL,
            status TEXT NOT NULL,
            output TEXT,
            is_error INTEGER,
            started_at REAL NOT NULL,
            finished_at REAL,
            PRIMARY KEY (task_id, tool_use_id)
        ) WITHOUT ROWID;
        """,
    ),
    (
        2,
        "inbox of user messages not yet given to the agent",
        """
        CREATE TABLE inbox (
            id INTEGER PRIMARY KEY,
            task_id TEXT NOT NULL,
            text TEXT NOT NULL,
            created_at REAL NOT NULL,
            taken_at REAL
        );
        CREATE INDEX inbox_pending ON inbox(task_id) WHERE taken_at IS NULL;
        """,
    ),
    (
        3,
        "why each assistant turn stopped (resuming after pause_turn or max_tokens)",
        "ALTER TABLE messages ADD COLUMN stop_reason TEXT;",
    ),
    (
        4,
        "the daemons (nodes) sharing the store, which node runs each task, and its workspace's branch",
        """
        ALTER TABLE tasks ADD COLUMN node_id TEXT;
        ALTER TABLE tasks ADD COLUMN workspace_branch TEXT;
        ALTER TABLE users ADD COLUMN last_started_at REAL;
        CREATE INDEX tasks_running_by_node ON tasks(node_id) WHERE status = 'running';
        CREATE TABLE nodes (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            http TEXT,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            state TEXT NOT NULL,
            concurrency INTEGER NOT NULL,
            running INTEGER NOT NULL DEFAULT 0
        );
        """,
    ),
    (
        5,
        "each user's queued tasks in order, for claims",
        "CREATE INDEX tasks_queued_by_user ON tasks(user_id, seqno) WHERE status = 'queued';",
    ),
    (
        6,
        "events appended in commit order, found through an index on (task seqno, seq)",
        # Keyed by (task_id, seq), each event of a commit went into its own task's leaf page:
        # one page written to the WAL (and again by the checkpoint) per event, with several
        # tasks emitting at once. In a rowid table a commit's events share the last pages, and
        # the index entries are small integers (about 300 to a page). A task's last seq is
        # MAX(seq) from that index; tasks.last_seq is no longer written (see
        # sqlite_appends.TASK_LAST_SEQ). Events of a task that does not exist could never be
        # read, so the copy leaves them behind.
        """
        CREATE TABLE events_v6 (
            id INTEGER PRIMARY KEY,
            task_no INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            ts REAL NOT NULL,
            type TEXT NOT NULL,
            data TEXT NOT NULL
        );
        INSERT INTO events_v6 (task_no, seq, ts, type, data)
            SELECT tasks.seqno, events.seq, events.ts, events.type, events.data
            FROM tasks JOIN events ON events.task_id = tasks.id
            ORDER BY tasks.seqno, events.seq;
        DROP TABLE events;
        ALTER TABLE events_v6 RENAME TO events;
        CREATE UNIQUE INDEX events_by_task ON events(task_no, seq);
        """,
    ),
    (
        7,
        "SQLite: tasks.last_seq dropped (a task's last seq is read from its events since v6)",
        # Nothing has written or read it since v6; left in place, it would read as a counter
        # that says 0. (PostgreSQL keeps its own: the counter lives on the task row there.)
        "ALTER TABLE tasks DROP COLUMN last_seq;",
    ),
    (
        8,
        "operators keep no GitHub identity a sign-in gave them by login (identity by id)",
        # Before v8 a sign-in took the account whose login matched the GitHub login, an
        # operator's too: whoever signed in that way may not be the operator. Identity is now
        # GitHub's numeric id, set by a sign-in that made the account or by an operator
        # (`agentctl user-link`); operators relink theirs, and sign in again for a token.
        """
        UPDATE api_tokens SET revoked_at = CAST(strftime('%s', 'now') AS REAL)
            WHERE label = 'github sign-in' AND revoked_at IS NULL
            AND user_id IN (SELECT id FROM users WHERE is_operator);
        UPDATE users SET github_id = NULL, github_token_enc = NULL WHERE is_operator;
        """,
    ),
    (
        9,
        "what daemons sharing the store agree on (the secret key check) and rate-limit buckets",
        # Used where several daemons share the store (PostgreSQL); here for the one interface.
        """
        CREATE TABLE cluster_values (
            name TEXT PRIMARY KEY,
            value BLOB NOT NULL,
            node TEXT,
            updated_at REAL NOT NULL
        );
        CREATE TABLE rate_buckets (
            key TEXT PRIMARY KEY,
            tokens REAL NOT NULL,
            stamp REAL NOT NULL,
            granted INTEGER NOT NULL
        );
        """,
    ),
    (
        10,
        "values taken once: GitHub sign-ins in progress and their one-time codes",
        # Kept in the store so that any daemon sharing it finishes a sign-in another began;
        # ``key`` is a hash of the secret handed out, never the secret (cluster_queries).
        """
        CREATE TABLE one_time_values (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (kind, key)
        ) WITHOUT ROWID;
        CREATE INDEX one_time_values_by_expiry ON one_time_values(expires_at);
        """,
    ),
    (
        11,
        "the outbox: notification targets and the deliveries to them",
        # A delivery row is written in the transaction of the event that causes it
        # (daemon/notify/outbox.py plans them); the sender claims due rows, delivers, records.
        # ``user_id`` NULL on a target: an operator-wide webhook. ``pending_since``: when the
        # current round of attempts began (insert, redeliver), what the give-up age counts from.
        """
        CREATE TABLE notify_targets (
            id TEXT PRIMARY KEY,
            user_id INTEGER REFERENCES users(id),
            kind TEXT NOT NULL,
            url TEXT NOT NULL,
            secret_enc BLOB,
            events TEXT NOT NULL,
            created_at REAL NOT NULL,
            disabled_at REAL
        );
        CREATE INDEX notify_targets_by_user ON notify_targets(user_id);
        CREATE TABLE outbox (
            id TEXT PRIMARY KEY,
            target_id TEXT NOT NULL,
            user_id INTEGER,
            task_id TEXT,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            claimed_by TEXT,
            claim_until REAL,
            last_error TEXT,
            last_status INTEGER,
            created_at REAL NOT NULL,
            delivered_at REAL,
            pending_since REAL NOT NULL
        );
        CREATE INDEX outbox_due ON outbox(next_at) WHERE status = 'pending';
        CREATE INDEX outbox_by_created ON outbox(created_at);
        CREATE INDEX outbox_by_user ON outbox(user_id, created_at);
        CREATE INDEX outbox_by_target ON outbox(target_id, created_at);
        """,
    ),
    (
        12,
        "share links: a read-only, expiring, revocable token for one task",
        # ``token_hash`` as api_tokens keeps it (daemon/tokens.py): the store holds nothing to
        # read a task with. ``user_id`` made the link; links live and die with their task.
        """
        CREATE TABLE share_links (
            id TEXT PRIMARY KEY,
            task_id TEXT NOT NULL,
            user_id INTEGER NOT NULL REFERENCES users(id),
            token_hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE INDEX share_links_by_task ON share_links(task_id, created_at);
        """,
    ),
    (
        13,
        "per-task options: the model, a draft pull request, the pull request's title",
        # NULL model: a task made before v13, run on the daemon's default model.
        """
        ALTER TABLE tasks ADD COLUMN model TEXT;
        ALTER TABLE tasks ADD COLUMN draft INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN pr_title TEXT;
        """,
    ),
    (
        14,
        "retention: a finished task's history removed after retention_days, its summary kept",
        # ``compacted_at``: when its events (all but the last, which carries the seq on), its
        # conversation and tool calls were removed (daemon/retention.py); the index finds the
        # tasks due for it without walking those compacted already.
        """
        ALTER TABLE tasks ADD COLUMN compacted_at REAL;
        CREATE INDEX tasks_to_compact ON tasks(finished_at)
            WHERE finished_at IS NOT NULL AND (compacted_at IS NULL OR compacted_at < finished_at);
        """,
    ),
    (
        15,
        "one push subscription per person and endpoint",
        # Two subscribe calls racing for one endpoint (a browser retrying) leave one row, so one
        # push per notification: the second insert does nothing (``insert_target``).
        """
        CREATE UNIQUE INDEX notify_targets_one_push ON notify_targets(user_id, url) WHERE kind = 'webpush';
        """,
    ),
]

LATEST = MIGRATIONS[-1][0]


def migrate(conn: apsw.Connection) -> int:
    """Bring the schema to ``LATEST``, one transaction per version; return the version found.

    A database newer than this code is refused rather than guessed at.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    found = scalar(conn.execute("PRAGMA user_version"))
    if found > LATEST:
        raise RuntimeError(
            f"the database is at schema version {found}, newer than this agentd ({LATEST}); upgrade agentd"
        )
    for version, description, sql in MIGRATIONS:
        if version <= found:
            continue
        with conn:
            conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, description, time.time())
            )
            conn.execute(f"PRAGMA user_version = {version}")
    return found
