"""/forget-me: a patient's messages, replies, reviews and dataset examples are gone, and only theirs."""

from __future__ import annotations

import json

from bot.platform import IncomingMessage, ReviewCard, ViewKind
from bot.safety.layer import NOTICE_FORGOTTEN, NOTICE_NOTHING_TO_FORGET, REDACTED, SafetyLayer
from reviewers.models import Action, Actor, Rubric

REVIEWER = Actor("local", "rev1", "Dr Rev", frozenset({"reviewer"}))
SECRET = "Quillfeather"  # a word that appears only in the forgotten patient's messages


def msg(text: str, user: str, thread: str | None = None) -> IncomingMessage:
    return IncomingMessage("local", user, "console", thread or user, text, display_name=user)


class CardPlatform:
    """Records review cards; stands in for a platform that posts them (the local one does not)."""

    name = "cards"
    max_message_chars = 2000

    def __init__(self) -> None:
        self.cards: dict[str, ReviewCard] = {}

    async def send_to_patient(self, conv, view):
        return []

    async def update_patient_message(self, conv, message_ids, view):
        return message_ids

    async def post_review_card(self, card: ReviewCard) -> str:
        ref = f"card-{card.item_id}"
        self.cards[ref] = card
        return ref

    async def update_review_card(self, card: ReviewCard) -> None:
        self.cards[card.card_ref] = card

    async def alert(self, text: str, urgent: bool = False) -> None:
        return None


async def _populate(service, user: str, secret: str) -> dict:
    """Messages, replies (approved, edited, rejected, pending), a crisis, a blocked reply."""
    core = service.core
    a = await core.handle_message(msg(f"{secret}: what is iontophoresis?", user, thread=f"{user}-1"))
    await core.decide(a.item_id, REVIEWER, Action.APPROVE, rubric=Rubric(5, 5, 4))
    b = await core.handle_message(msg(f"{secret}: my palms drip during exams", user, thread=f"{user}-1"))
    await core.decide(b.item_id, REVIEWER, Action.EDIT, edited_text=f"Edited answer for {secret}: try iontophoresis.",
                      rubric=Rubric(3, 4, 4))
    c = await core.handle_message(msg(f"{secret}: does botox hurt?", user, thread=f"{user}-2"))
    await core.decide(c.item_id, REVIEWER, Action.REJECT)
    await core.handle_message(msg(f"{secret}: pending question about socks", user, thread=f"{user}-2"))
    crisis = await core.handle_message(msg(f"{secret}: I want to kill myself", user, thread=f"{user}-3"))
    assert crisis.status == "crisis"
    service.backend.reply = "As a doctor I say it is fine."
    blocked = await core.handle_message(msg(f"{secret}: what about wipes?", user, thread=f"{user}-4"))
    service.backend.reply = None
    assert blocked.status == "held"
    return {"items": [a.item_id, b.item_id, c.item_id]}


async def _counts(db, where_user: str) -> dict[str, int]:
    joins = {
        "patients": "SELECT COUNT(*) FROM patients WHERE platform_user_id = ?",
        "conversations": "SELECT COUNT(*) FROM conversations c JOIN patients p ON p.id = c.patient_id WHERE p.platform_user_id = ?",
        "messages": "SELECT COUNT(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " JOIN patients p ON p.id = c.patient_id WHERE p.platform_user_id = ?",
        "replies": "SELECT COUNT(*) FROM replies r JOIN conversations c ON c.id = r.conversation_id"
        " JOIN patients p ON p.id = c.patient_id WHERE p.platform_user_id = ?",
        "review_items": "SELECT COUNT(*) FROM review_items i JOIN replies r ON r.id = i.reply_id"
        " JOIN conversations c ON c.id = r.conversation_id JOIN patients p ON p.id = c.patient_id WHERE p.platform_user_id = ?",
        "dataset_examples": "SELECT COUNT(*) FROM dataset_examples d JOIN patients p ON p.id = d.patient_id WHERE p.platform_user_id = ?",
    }
    return {name: await db.fetchval(sql, (where_user,)) for name, sql in joins.items()}


async def test_forget_me_removes_everything_derived_from_the_patient(service):
    cards = CardPlatform()
    service.core.platforms[cards.name] = cards
    await _populate(service, "keeper", "Ordinaryword")
    info = await _populate(service, "leaver", SECRET)
    before = await _counts(service.db, "leaver")
    assert before["dataset_examples"] == 2 and before["review_items"] >= 5 and before["messages"] == 6
    keeper_before = await _counts(service.db, "keeper")
    seeds = await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source = 'seed'")
    decisions = await service.db.fetchval("SELECT COUNT(*) FROM review_decisions")
    assert any(SECRET in c.patient_text for c in cards.cards.values())

    result = await service.core.handle_message(msg("/forget-me", "leaver", thread="leaver-1"))
    assert result.status == "forgotten" and result.views[-1].text.startswith(NOTICE_FORGOTTEN)
    assert "5 review cards shown to specialists now show only a deletion note" in result.views[-1].text
    assert result.views[-1].kind is ViewKind.NOTICE

    after = await _counts(service.db, "leaver")
    assert set(after.values()) == {0}
    assert await _counts(service.db, "keeper") == keeper_before  # nobody else's data touched
    assert await service.db.fetchval("SELECT COUNT(*) FROM dataset_examples WHERE source = 'seed'") == seeds
    for item_id in info["items"]:
        assert await service.reviews.item(item_id) is None
        assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions WHERE item_id = ?", (item_id,)) == 0
        assert await service.db.fetchval("SELECT COUNT(*) FROM review_audit WHERE item_id = ?", (item_id,)) == 0
    assert await service.db.fetchval("SELECT COUNT(*) FROM review_decisions") < decisions
    # Incidents (the crisis) keep no link to the deleted message and never held its text.
    rows = await service.db.fetchall("SELECT detail, message_id FROM incidents")
    assert rows and all(SECRET not in r["detail"] for r in rows)
    # The posted review cards no longer show the patient's words.
    assert not any(SECRET in c.patient_text or SECRET in c.reply_text for c in cards.cards.values())
    assert any(c.patient_text == REDACTED for c in cards.cards.values())

    # Nothing is left anywhere in the database, not even in free pages of the file or the WAL.
    dump = "\n".join(await service.db.run(lambda conn: list(conn.iterdump()), write=False))
    assert SECRET not in dump and "Ordinaryword" in dump
    raw = service.settings.db_path.read_bytes()
    wal = service.settings.db_path.with_name(service.settings.db_path.name + "-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert SECRET.encode() not in raw


async def test_forget_me_command_forms_and_nothing_stored(service):
    assert SafetyLayer.is_forget_command("/forget-me")
    assert SafetyLayer.is_forget_command("  /Forget-Me ")
    assert SafetyLayer.is_forget_command("/forget_me")
    assert SafetyLayer.is_forget_command("!forgetme")
    assert not SafetyLayer.is_forget_command("how do I use /forget-me?")
    assert not SafetyLayer.is_forget_command("forget me not")

    nothing = await service.core.handle_message(msg("/forget-me", "stranger"))
    assert nothing.status == "nothing_to_forget" and nothing.views[-1].text == NOTICE_NOTHING_TO_FORGET
    assert await service.db.fetchval("SELECT COUNT(*) FROM patients") == 0  # the command itself is not stored

    await service.core.handle_message(msg("My feet sweat", "again"))
    assert (await service.core.handle_message(msg("/forget_me", "again"))).status == "forgotten"
    fresh = await service.core.handle_message(msg("Hello again", "again"))
    assert fresh.views[0].kind is ViewKind.CONSENT and "/forget-me" in fresh.views[0].text  # consent asked anew


async def test_forget_me_resets_the_rate_limit(service):
    service.core.safety.limiter.max_messages = 2
    for text in ("one two three", "four five six", "seven eight nine"):
        await service.core.handle_message(msg(text, "busy"))
    assert (await service.core.handle_message(msg("/forget-me", "busy"))).status == "forgotten"
    assert (await service.core.handle_message(msg("a new question please", "busy"))).status == "shown"


async def test_slack_style_forget_goes_through_the_same_core(service):
    """Platform buttons call core.forget_patient directly: the same cascade and redaction apply."""
    await _populate(service, "viaslack", SECRET)
    assert (await service.core.forget_patient("local", "viaslack")).removed == 1
    assert set((await _counts(service.db, "viaslack")).values()) == {0}
    dump = "\n".join(await service.db.run(lambda conn: list(conn.iterdump()), write=False))
    assert SECRET not in dump


async def test_forget_me_reaches_kept_snapshots_and_marks_the_adapters_trained_on_them(service):
    """(issue 12 item 4) After /forget-me the patient's words are in no file under the data
    directory — snapshots of past retrains, exports, the database and its WAL — every adapter
    trained on them is marked, the next retrain leaves them out and is not skipped, and the
    confirmation says exactly that."""
    from pipeline import dataset, registry
    from pipeline import retrain as rt

    data_dir = service.settings.data_dir
    core = service.core
    await _populate(service, "keeper", "Ordinaryword")
    await core.handle_message(msg("I agree", "keeper"))
    before = await rt.export_snapshot(service.db, service.pack, data_dir / "jobs" / "retrain-1" / "dataset.jsonl")
    await registry.register(service.db, "v1", data_dir / "adapters" / "v1", "base",
                            {"dataset_hash": before.hash, "snapshot": {"hash": before.hash,
                                                                       "max_example_id": before.max_example_id}})
    await _populate(service, "leaver", SECRET)
    await core.handle_message(msg("I agree", "leaver"))
    with_them = await rt.export_snapshot(service.db, service.pack, data_dir / "jobs" / "retrain-2" / "dataset.jsonl")
    assert SECRET in with_them.path.read_text()
    await registry.register(service.db, "v2", data_dir / "adapters" / "v2", "base",
                            {"dataset_hash": with_them.hash, "snapshot": {"hash": with_them.hash,
                                                                          "max_example_id": with_them.max_example_id}})
    await registry.mark_live(service.db, "v2")
    (data_dir / "adapters" / "v2").mkdir(parents=True)
    (data_dir / "adapters" / "v2" / "manifest.json").write_text(json.dumps({"dataset_hash": with_them.hash}))
    # an adapter whose snapshot file was cleaned away, but which could have seen them
    await registry.register(service.db, "v0", data_dir / "adapters" / "v0", "base",
                            {"dataset_hash": "f" * 64, "snapshot": {"hash": "f" * 64,
                                                                   "max_example_id": with_them.max_example_id}})
    await dataset.export(service.db, data_dir / "exports" / "everything.jsonl", service.pack)

    result = await core.handle_message(msg("/forget-me", "leaver"))
    text = result.views[-1].text
    assert "also removed from 2 saved training data files" in text
    assert "2 trained model versions (v2, v0) had learned from your conversation" in text
    assert "next retraining leaves your data out" in text

    for path in data_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    kept = (data_dir / "jobs" / "retrain-2" / "dataset.jsonl").read_text()
    assert "Ordinaryword" in kept and len(kept.splitlines()) == with_them.examples - 2
    assert (data_dir / "jobs" / "retrain-1" / "dataset.jsonl").read_text() == before.path.read_text()
    marked = {v: bool((await registry.get(service.db, v))["manifest"].get("forgotten")) for v in ("v0", "v1", "v2")}
    assert marked == {"v0": True, "v1": False, "v2": True}
    assert "asked to delete" in (await registry.get(service.db, "v2"))["note"]
    assert json.loads((data_dir / "adapters" / "v2" / "manifest.json").read_text())["forgotten"]["patients"] == 1
    # the next retrain: the data without them, and not skipped as "nothing new"
    after = await rt.export_snapshot(service.db, service.pack, data_dir / "jobs" / "retrain-3" / "dataset.jsonl")
    assert SECRET not in after.path.read_text() and after.examples == with_them.examples - 2
    assert rt.nothing_new(after, await registry.live(service.db)) is None
    unmarked = {"manifest": {"dataset_hash": after.hash}, "version": "v9"}
    assert "is the one v9 was trained on" in rt.nothing_new(after, unmarked)
    # the moderators were told which versions to replace
    assert any("v2" in row["payload"] for row in await service.db.fetchall("SELECT payload FROM outbox WHERE kind = 'alert'"))
