"""Tables owned by the review workflow: items, decisions with rubric scores, audit trail."""

from bot.storage import Migration

MIGRATIONS = [
    Migration(
        "reviewers",
        1,
        "review",
        """
        CREATE TABLE review_items (
            id INTEGER PRIMARY KEY,
            reply_id INTEGER NOT NULL UNIQUE REFERENCES replies(id) ON DELETE CASCADE,
            state TEXT NOT NULL DEFAULT 'pending',
            priority TEXT NOT NULL DEFAULT 'normal',
            final_text TEXT,
            card_ref TEXT,
            created_at REAL NOT NULL,
            closed_at REAL
        );
        CREATE INDEX review_items_state ON review_items (state);
        CREATE TABLE review_decisions (
            id INTEGER PRIMARY KEY,
            item_id INTEGER NOT NULL REFERENCES review_items(id) ON DELETE CASCADE,
            reviewer_platform TEXT NOT NULL,
            reviewer_id TEXT NOT NULL,
            reviewer_name TEXT,
            action TEXT NOT NULL CHECK (action IN ('approve', 'edit', 'reject')),
            edited_text TEXT,
            accuracy INTEGER CHECK (accuracy BETWEEN 1 AND 5),
            appropriateness INTEGER CHECK (appropriateness BETWEEN 1 AND 5),
            empathy INTEGER CHECK (empathy BETWEEN 1 AND 5),
            comment TEXT,
            created_at REAL NOT NULL,
            UNIQUE (item_id, reviewer_platform, reviewer_id)
        );
        CREATE TABLE review_audit (
            id INTEGER PRIMARY KEY,
            item_id INTEGER REFERENCES review_items(id) ON DELETE CASCADE,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL
        )
        """,
    ),
    Migration(
        "reviewers",
        2,
        "judge",
        # The LLM judge's verdict on a review item (reviewers/judge.py): a first reader's scores,
        # never a decision. One row per item; status 'judging' is a claim (compare-and-set),
        # 'pending' waits for its next attempt, 'done' holds scores, 'unavailable' gave up.
        """
        CREATE TABLE judge_verdicts (
            id INTEGER PRIMARY KEY,
            item_id INTEGER NOT NULL UNIQUE REFERENCES review_items(id) ON DELETE CASCADE,
            status TEXT NOT NULL CHECK (status IN ('judging', 'pending', 'done', 'unavailable')),
            accuracy INTEGER CHECK (accuracy BETWEEN 1 AND 5),
            appropriateness INTEGER CHECK (appropriateness BETWEEN 1 AND 5),
            empathy INTEGER CHECK (empathy BETWEEN 1 AND 5),
            reason TEXT,
            model TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            claimed_by TEXT,
            claimed_at REAL,
            next_attempt_at REAL,
            latency_ms REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX judge_verdicts_status ON judge_verdicts (status, next_attempt_at)
        """,
    ),
    Migration(
        "reviewers",
        3,
        "audit_by_item",
        # Deleting a patient's review items cascades to their audit rows: found by index, not by
        # reading the whole audit trail once per item.
        """
        CREATE INDEX review_audit_item ON review_audit (item_id)
        """,
    ),
]
