import pytest

from pipeline.privacy import scrub


def test_scrubs_identifiers():
    text = ("Hi, my name is Anna Berg, email anna.berg@example.org, phone +44 20 7946 0958, "
            "born 03/04/1990, I live at 12 Baker Street.")
    out = scrub(text)
    for secret in ("Anna", "Berg", "anna.berg@example.org", "7946", "03/04/1990", "12 Baker Street"):
        assert secret not in out
    assert "[email]" in out and "[phone]" in out and "[date]" in out and "[name]" in out and "[address]" in out


def test_leaves_medical_text_alone():
    text = "I'm 34 and my palms sweat 3 times a week; HDSS 3. Aluminium chloride 20% helped."
    assert scrub(text) == text


@pytest.mark.parametrize(
    "text, secrets, placeholder",
    [
        ("my name is anna and my hands drip", ["anna"], "[name]"),
        ("I'm Jo. My armpits soak every shirt.", ["Jo."], "[name]"),
        ("Hi Sam, thanks for the advice.\nThanks,\nAnna Berg", ["Sam", "Anna", "Berg"], "[name]"),
        ("Dr Patel said my son Jake has it too; Mrs. Jones at school noticed.", ["Patel", "Jake", "Jones"], "[name]"),
        ("Email me at jo.smith+sweat@mail.example.co.uk please", ["jo.smith", "example"], "[email]"),
        ("Call (555) 123-4567 or 0044 7700 900123 or +1 555 010 9999", ["123-4567", "7700", "010"], "[phone]"),
        ("My DOB is 4th of July 1985.", ["July", "1985"], "[date]"),
        ("date of birth: March 3, 1985", ["March", "1985"], "[date]"),
        ("I was born on 12 May and diagnosed on 1990-04-03", ["12 May", "1990-04-03"], "[date]"),
        ("Flat 4B, 27 Elm Grove Road, London SW1A 1AA", ["4B", "27 Elm", "SW1A"], "[address]"),
        ("100 Main St, Springfield, IL 62704", ["100 Main", "62704"], "[address]"),
        ("I live at 4 elm road near the park", ["4 elm road"], "[address]"),
        ("find me @sweatyhands_22 or https://example.com/me", ["sweatyhands", "example.com"], "[handle]"),
        ("SSN 123-45-6789", ["123-45-6789"], "[id]"),
    ],
)
def test_scrubs_each_kind(text, secrets, placeholder):
    out = scrub(text)
    for secret in secrets:
        assert secret not in out, (secret, out)
    assert placeholder in out


@pytest.mark.parametrize(
    "text",
    [
        "This is so embarrassing. Call me crazy but it's worse in summer.",
        "Hi there, I had a temperature of 38.7 for 2 weeks between 2019 - 2021.",
        "I take 1.5-2.5 mg and walked 2 miles down the road; it takes 20 minutes each way.",
        "I'm British and I'm fine. It is Monday. HDSS 4, since age 12, 6 months of botox.",
        "Hi everyone, I'm 17, my palms have sweated 3-4 times a week since 2015.",
        "Glycopyrronium 2.4% cloths once a day; iontophoresis 3 times a week for 20-30 minutes.",
    ],
)
def test_medical_and_everyday_text_untouched(text):
    assert scrub(text) == text


def test_scrub_is_idempotent():
    text = "Hi Sam, my name is Anna Berg, call 020 7946 0958, 12 Baker Street, born 03/04/1990."
    once = scrub(text)
    assert scrub(once) == once
