"""Languages by script (Bengali; Persian and Urdu told from Arabic), and every detected language
has its own notice and crisis preface (issue 14 item 2: a crisis in any language gets the
resources, introduced in the patient's language, and an alert)."""

from __future__ import annotations

import pytest

from bot.platform import IncomingMessage, ViewKind
from bot.safety.language import _SCRIPTS, _STOPWORDS, CRISIS_PREFACES, LANGUAGE_NAMES, LANGUAGE_NOTICES, detect_language


@pytest.mark.parametrize("text, lang", [
    ("আমার হাত সারাদিন ঘামে, কী করব বুঝতে পারছি না", "bn"),
    ("পায়ের তালু এত ঘামে যে জুতো পরতে পারি না", "bn"),
    ("دست‌هایم همیشه عرق می‌کند و نمی‌دانم چه کار کنم", "fa"),
    ("سلام دوستان، خوبید؟", "fa"),
    ("شب‌ها خیلی عرق می‌کنم، باید پیش پزشک بروم؟", "fa"),
    ("میرے ہاتھوں میں ہر وقت پسینہ آتا ہے، میں کیا کروں؟", "ur"),
    ("رات کو بہت پسینہ آتا ہے، کیا ڈاکٹر کو دکھانا چاہیے؟", "ur"),
    ("הידיים שלי מזיעות כל הזמן, מה אפשר לעשות?", "he"),
    ("У мене постійно пітніють руки, що мені робити?", "uk"),
    ("Τα χέρια μου ιδρώνουν συνέχεια, τι μπορώ να κάνω;", "el"),
    ("มือของฉันเหงื่อออกตลอดเวลา ควรทำอย่างไรดี", "th"),
    # unchanged: Arabic stays Arabic (also with a Persian letter in a loanword), Hindi stays Hindi
    ("يداي تتعرقان كثيرًا طوال الوقت، ماذا أفعل؟", "ar"),
    ("أتعرق كثيرًا في الليل، هل يجب أن أذهب إلى الطبيب؟", "ar"),
    ("ذهبت إلى بيتزا هت مع أصدقائي وكانت يداي تتعرقان", "ar"),
    ("У меня постоянно потеют руки, что мне делать?", "ru"),
    ("मेरे हाथों में हर समय पसीना आता है, मैं क्या करूँ?", "hi"),
    ("my hands sweat", "en"),
])
def test_detected_by_script_with_a_notice_and_a_preface_in_it(text, lang):
    assert detect_language(text) == lang
    if lang != "en":
        assert detect_language(LANGUAGE_NOTICES[lang]) == lang and detect_language(CRISIS_PREFACES[lang]) == lang


def test_every_detectable_language_has_a_notice_a_preface_and_a_name():
    # Every code the detector can return, including the Arabic-script and Cyrillic splits: a
    # language added there cannot be forgotten here (it would get the English notice, no preface).
    codes = {code for code, _ in _SCRIPTS} | set(_STOPWORDS) | {"fa", "ur", "uk"}
    for code in codes:
        assert code in LANGUAGE_NOTICES and "{supported}" in LANGUAGE_NOTICES[code], code
        assert code in LANGUAGE_NAMES and (code == "en" or code in CRISIS_PREFACES), code
        assert detect_language(LANGUAGE_NOTICES[code]) == code, code


BENGALI_CRISIS = "আমি আর বাঁচতে চাই না, আজ রাতে আত্মহত্যা করব"


async def test_a_crisis_in_bengali_gets_the_bengali_preface_the_resources_and_an_alert(svc):
    verdict = svc.core.safety.triage(BENGALI_CRISIS)
    assert verdict.crisis and verdict.language == "bn"
    result = await svc.core.handle_message(IncomingMessage("local", "pat", "console", "pat", BENGALI_CRISIS))
    assert result.status == "crisis" and svc.backend.calls == []
    view = result.views[-1]
    assert view.kind is ViewKind.CRISIS and view.text.startswith(CRISIS_PREFACES["bn"])
    assert svc.pack.crisis_message(None) in view.text
    platform = svc.core.platforms["local"]
    assert platform.sent[-1][1].kind is ViewKind.CRISIS
    assert [a["urgent"] for a in platform.alerts] == [True]


async def test_a_message_in_a_script_nobody_reads_gets_the_resources_and_no_model_reply(svc):
    """Tamil (no batch, no detector rule, no language notice of its own): the check-in with the
    crisis resources at once, then the language notice; the model is not asked to answer it."""
    tamil = "நான் இன்று இரவு என் வாழ்க்கையை முடித்துக்கொள்வேன், எல்லோருக்கும் விடைபெறுகிறேன்"
    result = await svc.core.handle_message(IncomingMessage("local", "pat", "console", "pat", tamil))
    kinds = [view.kind for view in result.views]
    assert ViewKind.CRISIS in kinds and ViewKind.NOTICE in kinds and kinds.index(ViewKind.CRISIS) < kinds.index(ViewKind.NOTICE)
    assert svc.backend.calls == []
