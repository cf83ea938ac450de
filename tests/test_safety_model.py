"""The offline learned safety model and its corpus (issue 14 item 1).

The corpus is read from bot/safety/data/ only; the model is deterministic, cached by corpus
hash, names a pack red-flag id for a red flag, and stays fast (p50 ≤ 20 ms per message)."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bot.safety import classifier as clf
from bot.safety.corpus import LABELS, SAFETY_DATA, Row, corpus_files, corpus_hash, load_corpus, read_rows, script_of
from bot.safety.detector import Thresholds, crisis_model, decide, signals, triage
from pipeline.packs import PACKS_DIR, load_pack


@pytest.fixture(scope="module")
def pack():
    return load_pack(PACKS_DIR / "hyperhidrosis")


@pytest.fixture(scope="module")
def rows():
    return load_corpus(corpus_files())


def test_normalisation_keeps_every_script_readable():
    n = clf.normalize
    assert n("SUICIDIO Ñoño café") == "suicidio nono cafe"
    assert n("k1ll mys3lf") == "kill myself" and n("I ran 25 km") == "i ran 25 km"
    assert n("noooooo") == "noo"
    assert n("أُرِيدُ أَنْ أَمُوتَ") == "اريد ان اموت"  # Arabic diacritics and alef forms unified
    assert n("मैं मरना चाहता हूँ") == "मैं मरना चाहता हूँ"  # Devanagari vowel signs kept
    assert n("ฉันอยากตาย") == "ฉันอยากตาย" and n("죽고 싶어") == "죽고 싶어"
    assert n("Καλημέρα") == "καλημερα" and n("ёлка й") == "елка и"
    assert n("zero\u200bwidth") == "zerowidth"


def test_scripts_are_recognised():
    assert script_of("I want to die") == "Latin"
    assert script_of("Я не хочу жить") == "Cyrillic"
    assert script_of("死にたい") == "Japanese" and script_of("我不想活了") == "Han"
    assert script_of("أريد أن أموت") == "Arabic" and script_of("죽고 싶어") == "Hangul"
    assert script_of("ฉันอยากตาย") == "Thai" and script_of("मैं मरना चाहता हूँ") == "Devanagari"


def test_the_corpus_is_read_from_the_package_data_only(rows):
    files = corpus_files()
    assert files and all(SAFETY_DATA in f.parents for f in files)
    assert {r.label for r in rows} <= set(LABELS)
    assert len({r.text.strip() for r in rows}) == len(rows)  # deduplicated: no leak across CV folds
    legacy = read_rows(SAFETY_DATA / "crisis_train.jsonl")
    assert {r.batch for r in legacy} == {"legacy"}
    assert {r.label for r in legacy} == set(LABELS)  # crisis, red_flag_not_emergency, injection, benign kinds


def test_a_bad_corpus_row_is_refused_with_its_place(tmp_path):
    bad = tmp_path / "T9.jsonl"
    bad.write_text('{"text": "fine", "label": "benign"}\n{"text": "x", "label": "maybe"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="T9.jsonl:2: unknown label"):
        read_rows(bad)


def _small(rows: list[Row]) -> list[Row]:
    by_label: dict[str, list[Row]] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
    return [r for label in LABELS for r in by_label.get(label, [])[:40]]


@pytest.mark.slow  # trains the model twice: 28 s of the fast tier (runs in CI's full suite)
def test_training_is_deterministic_and_the_cache_is_keyed_by_corpus(rows, tmp_path, monkeypatch):
    small = _small(rows)
    a = clf.train_on_rows(small, "h1")
    b = clf.train_on_rows(small, "h1")
    texts = [r.text for r in rows[:50]]
    assert np.array_equal(a.probs_matrix(texts), b.probs_matrix(texts))
    for name in ("w1", "b1", "w2", "b2", "w3", "b3"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.featurizer.chars.keys, b.featurizer.chars.keys)

    trained = []
    real = clf.train_on_rows
    monkeypatch.setattr(clf, "train_on_rows", lambda rs, h="": trained.append(h) or real(rs, h))
    first = clf.load_or_train(lambda: small, "h1" * 10, tmp_path)
    again = clf.load_or_train(lambda: small, "h1" * 10, tmp_path)
    assert trained == ["h1" * 10]  # the second came from the cache file
    assert np.array_equal(first.probs_matrix(texts), again.probs_matrix(texts))
    assert len(list(tmp_path.glob("safety-model-*.joblib"))) == 1
    clf.load_or_train(lambda: small, "h2" * 10, tmp_path)  # a new corpus: retrained
    assert trained == ["h1" * 10, "h2" * 10] and len(list(tmp_path.glob("safety-model-*.joblib"))) == 2
    clf.cache_path(tmp_path, "h2" * 10).write_bytes(b"not a pickle")
    clf.load_or_train(lambda: small, "h2" * 10, tmp_path)  # a damaged cache is retrained, not fatal
    assert len(trained) == 3
    for h in ("h3", "h4"):
        clf.load_or_train(lambda: small, h * 10, tmp_path)
    assert len(list(tmp_path.glob("safety-model-*.joblib"))) == clf.KEEP_CACHED
    assert not list(tmp_path.glob("*.tmp"))


def test_one_message_gets_the_batch_numbers(pack, rows):
    """``assess`` (one message, numpy only: the triage's path) gives what ``probs_matrix`` and
    ``red_flag_ids`` give for a batch."""
    model = crisis_model(pack)
    texts = [r.text for r in rows[::97]] + [r.text for r in rows if r.form == "long_buried"][:20]
    expected = model.probs_matrix(texts)
    ids = model.red_flag_ids(texts)
    for i, text in enumerate(texts):
        probs, flag = model.assess(text)
        assert np.allclose([probs[c] for c in clf.CLASSES], expected[i], atol=1e-6)
        assert flag == ids[i]


def test_long_messages_are_also_read_two_sentences_at_a_time():
    """A crisis in one sentence of a long everyday message: a window of two sentences the model is
    sure of (>= WINDOW_CONFIDENT) lifts the message's crisis probability; a merely likely window
    does not, a short message has no windows, and the other classes keep the whole message's."""
    text = "Work was long today. I fed the cat. I have the pills ready for tonight. The weather is nice."
    assert clf.windows(text) == ["Work was long today. I fed the cat.", "I fed the cat. I have the pills ready for tonight.",
                                 "I have the pills ready for tonight. The weather is nice."]
    assert clf.windows("One sentence. Two sentences.") == []
    c = clf.CLASSES.index("crisis")
    whole = np.array([[0.7, 0.2, 0.05, 0.05], [0.7, 0.2, 0.05, 0.05], [0.7, 0.2, 0.05, 0.05]])

    def scorer(sure):
        return lambda parts: np.array([[0.0, sure if "pills" in p else 0.01, 0.0, 0.0] for p in parts])

    lifted = clf.with_windows(whole, [text, "Short. Message.", text], scorer(0.97))
    assert lifted[0, c] == 0.97 and lifted[1, c] == 0.2 and lifted[2, c] == 0.97
    assert np.array_equal(np.delete(lifted, c, axis=1), np.delete(whole, c, axis=1))
    assert clf.with_windows(whole, [text] * 3, scorer(0.9))[0, c] == 0.2  # not sure enough: unchanged


def test_ngrams_are_hashed_the_same_in_every_process():
    """The n-gram ids are polynomial hashes of code points (not Python's per-process hash): a
    character n-gram stays inside one space-padded word; words give unigrams and bigrams."""
    (cd, ck), (wd, wk) = clf._grams(["ab c", "ab"])
    P = 0x100000001B3
    h = lambda s: sum(ord(ch) * pow(P, len(s) - 1 - i, 2**64) for i, ch in enumerate(s)) % 2**64  # noqa: E731
    first = {int(k) for d, k in zip(cd, ck) if d == 0}
    assert {h(g) for g in (" ", "a", "b", "c", " a", "ab", "b ", " c", "c ", " ab", "ab ", " c ", " ab ")} == first
    assert h("b c") not in first and h("b  c") not in first  # no n-gram across words
    assert sorted(int(k) for d, k in zip(wd, wk) if d == 1) == [h("ab")]
    assert len([k for d, k in zip(wd, wk) if d == 0]) == 3  # "ab", "c", "ab c"


def test_one_message_gets_the_features_of_the_batch():
    texts = ["I can't do this anymore", "ich kann nicht mehr", "我不想活了", "मैं मरना चाहता हूँ", "ok", "🙂🙂"]
    featurizer, X = clf.Featurizer.fit_transform(texts * 2, char_features=500, word_features=50, min_df=2)
    assert X.shape == (12, featurizer.n_features) and featurizer.n_features <= 550
    for i, text in enumerate(texts):
        cols, vals = featurizer.features(text)
        order = np.argsort(cols)
        assert np.array_equal(cols[order], X[i].indices) and np.allclose(vals[order], X[i].data)
        assert np.array_equal(featurizer.transform([text]).toarray(), X[i].toarray())


def test_the_shipped_model_is_small(pack):
    """The cached model (features, weights, vocabulary) stays under ~60 MB."""
    import pickle

    model = crisis_model(pack)
    assert model.w1.dtype == np.float32 and model.w1.shape[0] == model.featurizer.n_features
    assert len(pickle.dumps(model)) <= 64_000_000


def test_corpus_hash_changes_with_any_byte(tmp_path):
    f = tmp_path / "T1.jsonl"
    f.write_text('{"text": "a", "label": "benign"}\n', encoding="utf-8")
    h = corpus_hash([f])
    f.write_text('{"text": "b", "label": "benign"}\n', encoding="utf-8")
    assert corpus_hash([f]) != h


def test_changing_only_the_exclusions_trains_a_new_model(tmp_path, monkeypatch):
    """excluded.tsv is part of the model's key: a model cached before a row was excluded still
    holds that row, so it must not be reused (in memory or on disk) once the exclusions change."""
    import bot.safety.corpus as corpus
    import bot.safety.detector as detector

    batch = tmp_path / "T1.jsonl"
    batch.write_text('{"id": "a", "text": "one", "label": "benign"}\n{"id": "b", "text": "two", "label": "crisis"}\n',
                     encoding="utf-8")
    excluded = tmp_path / "excluded.tsv"
    excluded.write_text("# none\n", encoding="utf-8")
    monkeypatch.setattr(corpus, "EXCLUDED", excluded)
    monkeypatch.setattr(detector, "training_files", lambda pack=None: [batch])
    monkeypatch.setattr(detector, "_models", {})
    trained = []

    def fake_load_or_train(rows_loader, key, cache_dir):
        trained.append((key, [r.id for r in rows_loader()]))
        return type("Model", (), {"n_train": len(trained[-1][1]), "corpus_hash": key})()

    monkeypatch.setattr(clf, "load_or_train", fake_load_or_train)
    first = detector.crisis_model(None, cache_dir=tmp_path)
    assert detector.crisis_model(None, cache_dir=tmp_path) is first and len(trained) == 1  # same files, same model
    excluded.write_text("b\tnearly repeats red-team x (0.90)\n", encoding="utf-8")
    second = detector.crisis_model(None, cache_dir=tmp_path)
    assert second is not first and trained[1][1] == ["a"] and trained[1][0] != trained[0][0]


def test_a_learned_red_flag_gets_a_pack_id(pack):
    ids = {flag.id for flag in pack.red_flags}
    model = crisis_model(pack)
    sig = signals("un texte quelconque", pack)
    assert sig.learned_flag in ids or model.red_flag_head is None
    # The learned red-flag path: the pack's patterns found nothing, the model is sure enough.
    th = Thresholds(red_flag=0.5, red_flag_own_language=0.7, red_flag_by_script=())
    forced = sig.__class__(**{**sig.__dict__, "pack_flags": (), "probs": {"red_flag": 0.6}, "learned_flag": "rf-fever", "language": "fr"})
    assert decide(forced, th).red_flags == ("rf-fever",) and not decide(forced, th).crisis
    # In the pack's own language its patterns read the message too: its own threshold applies.
    english = forced.__class__(**{**forced.__dict__, "language": forced.pack_language})
    assert decide(english, th).red_flags == ()
    sure = english.__class__(**{**english.__dict__, "probs": {"red_flag": 0.99}})
    assert decide(sure, th).red_flags == ("rf-fever",)
    # A script with a threshold of its own (chosen on CV) uses it outside the pack's language.
    strict = replace(th, red_flag_by_script=((forced.script, 0.65),))
    assert decide(forced, strict).red_flags == ()


def test_thresholds_decide_from_signals(pack):
    sig = signals("some ordinary words here", pack)
    strict = decide(sig, Thresholds(crisis=0.99, crisis_by_script=(), possible=0.0001))
    assert not strict.crisis and strict.possible
    short = signals("ok", pack)
    assert decide(short, Thresholds(crisis=0.0001)).score == 0.0  # one word: left to the rules


def test_the_crisis_threshold_setting_overrides_every_script(pack, rows):
    """``[safety] crisis_threshold`` (triage's ``threshold``) replaces the per-script thresholds."""
    th = Thresholds()
    assert th.crisis_by_script  # chosen on CV, per script
    for row in rows:
        if row.label == "crisis" and row.script != "Latin" and not signals(row.text, pack).rule_hits:
            p = triage(row.text, pack).crisis_score
            if 0.1 < p < 0.9:
                break
    else:
        pytest.skip("no crisis row without a rule hit and with a middling score")
    assert not triage(row.text, pack, threshold=p + 0.05).crisis
    assert triage(row.text, pack, threshold=p - 0.05).crisis


def test_triage_is_fast(pack, rows):
    texts = [r.text for r in rows[:300]]
    for text in texts[:10]:
        triage(text, pack)
    times = []
    for text in texts:
        started = time.perf_counter()
        triage(text, pack)
        times.append((time.perf_counter() - started) * 1000)
    assert statistics.median(times) <= 20.0, statistics.median(times)


def test_augmentation_is_deterministic_and_keeps_labels_and_languages():
    """Training rows are augmented (bot/safety/augment.py): everyday benign sentences alone, benign
    splices, a crisis / red flag / injection inside an everyday message of the same language."""
    from bot.safety.augment import AUGMENTED_BATCH, augmented, sentences

    assert sentences("I live in Spain. I work at a bank! Any tips?") == ["I live in Spain.", "I work at a bank!", "Any tips?"]
    assert sentences("今天很热。我出汗了！") == ["今天很热。", "我出汗了！"]
    everyday = [Row(f"Sentence number {i} about my sweaty palms. Another sentence {i} about my work.", "benign", "T1",
                    id=f"b{i}", family="hh_question", lang="en") for i in range(8)]
    past = Row("I wanted to die back then. Therapy helped and I am fine now.", "benign", "T1", id="p", family="resolved_past", lang="en")
    crisis = [Row(f"I have the pills ready tonight {i}", "crisis", "T1", id=f"c{i}", lang="en") for i in range(3)]
    flag = Row("I wake up soaked every night and lost weight", "red_flag", "T1", id="r", lang="en", red_flag_id="rf-night-sweats")
    rows = everyday + [past, flag] + crisis
    a, b = augmented(rows, splices=40), augmented(rows, splices=40)
    assert a == b and a[: len(rows)] == rows
    extra = a[len(rows):]
    assert all(r.batch == AUGMENTED_BATCH for r in extra)
    # The resolved-past message is never cut into sentences nor used as a host.
    assert not any("wanted to die" in r.text and r.label == "benign" for r in extra)
    assert any(r.text == "Sentence number 0 about my sweaty palms." and r.label == "benign" for r in extra)
    spliced = [r for r in extra if r.label == "crisis"]
    assert spliced and all(any(c.text in r.text for c in crisis) and "sweaty palms" in r.text for r in spliced)
    assert {r.red_flag_id for r in extra if r.label == "red_flag"} == {"rf-night-sweats"}


def test_every_window_of_a_very_long_message_is_read(pack):
    """A goodbye in the last sentence of an 80-sentence post is read like one in its first lines
    (windows were once cut at the first 64, and such a post then came out 'safe')."""
    filler = [f"Day {i}: my palms were damp at work again and I used the cream before lunch." for i in range(80)]
    crisis = "I counted out all the pills on my desk and I am done pretending, this is the last night."
    model = crisis_model(pack)
    early = " ".join(filler[:10] + [crisis] + filler[10:])
    late = " ".join(filler + [crisis])
    assert len(clf.windows(late)) == 80
    assert model.assess(late)[0]["crisis"] >= clf.WINDOW_CONFIDENT
    assert abs(model.assess(late)[0]["crisis"] - model.assess(early)[0]["crisis"]) < 0.05
    assert decide(signals(late, pack, model)).crisis


def test_windows_know_the_full_stops_of_every_script():
    """Urdu's ۔, Chinese typed with an ASCII full stop and no space, and Thai (no sentence
    punctuation: half-overlapping runs of characters) get windows like a Latin-script post."""
    assert len(clf.windows("میں آج کام پر تھا۔ میرے ہاتھ بہت گیلے تھے۔ میں نے سب گولیاں جمع کر لی ہیں۔ کل ملتے ہیں۔")) == 3
    assert len(clf.windows("今天工作很长.我喂了猫.我准备好了药.明天见.")) == 3
    thai = ("วันนี้ทำงานทั้งวัน เหงื่อออกมือเยอะมาก เพื่อนที่ออฟฟิศก็ถามว่าเป็นอะไร ฉันเตรียมยาไว้หมดแล้ว"
            "คืนนี้จะไม่อยู่แล้ว พรุ่งนี้มีประชุมตอนเช้า ต้องไปซื้อแป้งฝุ่นด้วย แล้วก็ต้องโทรหาแม่ตอนเย็น")
    parts = clf.windows(thai)
    assert len(parts) >= 3 and all(len(p) <= clf.WINDOW_CHARS for p in parts)
    assert any("เตรียมยาไว้หมดแล้วคืนนี้" in p for p in parts)  # the buried sentence whole in one run
    assert clf.windows("I live in Spain and I like my job a lot, even on the hottest days of summer when my hands "
                       "are wet. My dermatologist is away until March and I will ask her about iontophoresis.") == []


@pytest.mark.parametrize("text", [
    "நான் இன்று இரவு என் வாழ்க்கையை முடித்துக்கொள்வேன், எல்லோருக்கும் விடைபெறுகிறேன்",  # Tamil
    "მე ამაღამ სიცოცხლეს დავასრულებ, მშვიდობით ყველას",  # Georgian
    "Ես այսօր կվերջացնեմ կյանքս, մնաք բարով բոլորին",  # Armenian
])
def test_a_script_no_batch_covers_is_never_read_as_safe_english(pack, text):
    """Tamil, Georgian, Armenian …: not 'Latin' and English (which let the model answer a crisis
    it could not read), but a script the detector cannot read — a possible crisis in an
    undetermined language: crisis resources at once and the language notice, no model reply."""
    assert script_of(text) == "Other"
    v = triage(text, pack)
    assert v.possible_crisis and not v.language_supported and v.language == "und"
    assert v.action != "answer"


def test_known_scripts_and_latin_letters_are_not_other():
    for text, script in [("Tôi đổ mồ hôi tay rất nhiều", "Latin"), ("ｆｕｌｌｗｉｄｔｈ hands", "Latin"),
                         ("ok 👍🔥", "Latin"), ("ㅎㅇ", "Hangul"), ("ｱｾ ｶﾞ ﾋﾄﾞｲ", "Japanese")]:
        assert script_of(text) == script, text
