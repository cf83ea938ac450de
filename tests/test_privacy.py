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
