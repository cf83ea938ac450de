"""Tables owned by the model pipeline: dataset examples, adapters, jobs."""

from bot.storage import Migration

MIGRATIONS = [
    Migration(
        "pipeline",
        1,
        "dataset_adapters_jobs",
        """
        CREATE TABLE dataset_examples (
            id INTEGER PRIMARY KEY,
            task TEXT NOT NULL,
            source TEXT NOT NULL CHECK (source IN ('seed', 'synthetic', 'expert_approved', 'expert_edited')),
            messages TEXT NOT NULL,
            provenance TEXT NOT NULL DEFAULT '{}',
            content_hash TEXT NOT NULL UNIQUE,
            patient_id INTEGER REFERENCES patients(id) ON DELETE CASCADE,
            review_item_id INTEGER REFERENCES review_items(id) ON DELETE SET NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX dataset_examples_task ON dataset_examples (task, source);
        CREATE TABLE adapters (
            id INTEGER PRIMARY KEY,
            version TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('candidate', 'live', 'retired', 'failed')),
            base_model TEXT NOT NULL,
            manifest TEXT NOT NULL DEFAULT '{}',
            evaluation TEXT,
            note TEXT,
            created_at REAL NOT NULL,
            promoted_at REAL
        );
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            requested_by TEXT NOT NULL DEFAULT '',
            progress TEXT NOT NULL DEFAULT '',
            result TEXT,
            error TEXT,
            pid INTEGER,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        );
        CREATE UNIQUE INDEX jobs_one_active ON jobs (kind) WHERE status IN ('queued', 'running')
        """,
    ),
    Migration(
        "pipeline",
        2,
        "dataset_plan_key",
        """
        ALTER TABLE dataset_examples ADD COLUMN plan_key TEXT;
        CREATE UNIQUE INDEX dataset_examples_plan_key ON dataset_examples (plan_key) WHERE plan_key IS NOT NULL
        """,
    ),
    Migration(
        "pipeline",
        3,
        "gate_passed_and_job_params",
        """
        ALTER TABLE adapters ADD COLUMN gate_passed_at REAL;
        ALTER TABLE jobs ADD COLUMN params TEXT NOT NULL DEFAULT '{}'
        """,
    ),
    Migration(
        "pipeline",
        4,
        "dataset_lookups",
        # An expert example is looked up by its review item on every accepted decision, and
        # deleting a patient cascades through patient_id: both without a scan of the dataset.
        """
        CREATE INDEX dataset_examples_review_item ON dataset_examples (review_item_id);
        CREATE INDEX dataset_examples_patient ON dataset_examples (patient_id)
        """,
    ),
]
