"""Tables owned by the service: patients, conversations, messages, replies, incidents, state."""

from bot.storage import Migration

MIGRATIONS = [
    Migration(
        "bot",
        1,
        "conversations",
        """
        CREATE TABLE patients (
            id INTEGER PRIMARY KEY,
            platform TEXT NOT NULL,
            platform_user_id TEXT NOT NULL,
            display_name TEXT,
            consent INTEGER NOT NULL DEFAULT 0,
            consent_at REAL,
            region TEXT,
            created_at REAL NOT NULL,
            UNIQUE (platform, platform_user_id)
        );
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            patient_id INTEGER NOT NULL REFERENCES patients(id) ON DELETE CASCADE,
            platform TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'open',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (platform, channel_id, thread_id)
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            attachments INTEGER NOT NULL DEFAULT 0,
            platform_message_id TEXT,
            status TEXT NOT NULL DEFAULT 'received',
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at REAL NOT NULL
        );
        CREATE INDEX messages_status ON messages (status);
        CREATE INDEX messages_conversation ON messages (conversation_id);
        CREATE TABLE replies (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            prompt TEXT NOT NULL,
            text TEXT NOT NULL,
            shown_text TEXT,
            task TEXT NOT NULL DEFAULT 'general',
            model TEXT NOT NULL,
            adapter_version TEXT,
            latency_ms REAL NOT NULL,
            risk_flags TEXT NOT NULL DEFAULT '[]',
            delivery TEXT NOT NULL DEFAULT 'pending',
            platform_message_ids TEXT NOT NULL DEFAULT '[]',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX replies_conversation ON replies (conversation_id);
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            message_id INTEGER REFERENCES messages(id) ON DELETE SET NULL,
            created_at REAL NOT NULL,
            resolved_at REAL
        );
        CREATE TABLE service_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    ),
    Migration(
        "bot",
        2,
        "message_claims",
        """
        ALTER TABLE messages ADD COLUMN claimed_at REAL
        """,
    ),
    Migration(
        "bot",
        3,
        "outbox",
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            platform TEXT,
            target TEXT,
            idempotency_key TEXT NOT NULL UNIQUE,
            payload TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applying', 'done', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            claimed_by TEXT,
            claimed_at REAL,
            last_error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX outbox_due ON outbox (status, next_attempt_at)
        """,
    ),
    Migration(
        "bot",
        4,
        "what_the_patient_saw",
        """
        ALTER TABLE messages ADD COLUMN response_text TEXT;
        UPDATE replies SET shown_text = text WHERE delivery = 'shown' AND shown_text IS NULL
        """,
    ),
    Migration(
        "bot",
        5,
        "crisis_cases",
        """
        ALTER TABLE incidents ADD COLUMN conversation_id INTEGER REFERENCES conversations(id) ON DELETE SET NULL;
        ALTER TABLE incidents ADD COLUMN delivery TEXT;
        ALTER TABLE incidents ADD COLUMN delivery_route TEXT;
        ALTER TABLE incidents ADD COLUMN delivery_error TEXT;
        ALTER TABLE incidents ADD COLUMN link TEXT;
        ALTER TABLE incidents ADD COLUMN taken_by TEXT;
        ALTER TABLE incidents ADD COLUMN taken_at REAL;
        ALTER TABLE incidents ADD COLUMN resolved_by TEXT;
        ALTER TABLE incidents ADD COLUMN outcome_note TEXT;
        ALTER TABLE incidents ADD COLUMN alerted_at REAL;
        ALTER TABLE incidents ADD COLUMN realerts INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX incidents_open ON incidents (kind, resolved_at)
        """,
    ),
    Migration(
        "bot",
        6,
        "crisis_case_replies",
        """
        CREATE TABLE case_replies (
            id INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            author TEXT NOT NULL,
            text TEXT NOT NULL,
            created_at REAL NOT NULL
        )
        """,
    ),
    Migration(
        "bot",
        7,
        "consent_asked",
        # Consent used to be written with the first message, before the notice was shown: none of
        # it was given. Everyone is asked again (bot/consent.py); until they agree, nothing of
        # theirs enters training.
        """
        ALTER TABLE patients ADD COLUMN consent_asked_at REAL;
        UPDATE patients SET consent = 0, consent_at = NULL
        """,
    ),
    Migration(
        "bot",
        8,
        "lookups_by_message",
        # Rows found by the message or conversation they belong to: the history in every claim
        # joins replies on message_id, and deleting a patient cascades through these columns.
        # Without indexes each lookup read the whole table, so a message cost more as the
        # database grew (and /forget-me, one scan per deleted row).
        """
        CREATE INDEX replies_message ON replies (message_id);
        CREATE INDEX incidents_message ON incidents (message_id);
        CREATE INDEX incidents_conversation ON incidents (conversation_id);
        CREATE INDEX conversations_patient ON conversations (patient_id);
        CREATE INDEX case_replies_incident ON case_replies (incident_id)
        """,
    ),
]
