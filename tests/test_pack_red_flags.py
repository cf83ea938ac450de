"""Red-flag patterns of the shipped hyperhidrosis pack against natural patient phrasing.

Each red flag must catch the ways patients actually describe it, and the benign phrasing of
ordinary primary hyperhidrosis must not trip any flag (a false alarm sends every anxious
teenager with sweaty palms to a doctor and buries the real warnings).
"""

from __future__ import annotations

import pytest

from pipeline.packs import PACKS_DIR, load_pack


@pytest.fixture(scope="module")
def pack():
    return load_pack(PACKS_DIR / "hyperhidrosis")


POSITIVE = {
    "rf-late-onset": [
        "It started when I was 40 and I can't work out why.",
        "The sweating began at 32, never had it before.",
        "I'm 52 and this only started last year.",
        "I'm 45 years old and it came on suddenly a few months ago.",
        "Never had a problem with sweating until I turned 38.",
        "My underarms have been pouring since I turned 30.",
        "It kicked in around age 55.",
        "It first appeared in my forties.",
        "At 47 I suddenly started sweating through my shirts.",
        "Ever since the menopause I've been drenched.",
        "I never sweated much until my late twenties.",
        "My palms were fine until age 31.",
        "I'm 51 and for the past year I get waves of heat and sweat.",
    ],
    "rf-asymmetric": [
        "Only my left hand sweats, the right one is completely dry.",
        "It's just the right side of my face that drips.",
        "One armpit sweats like crazy but the other is normal.",
        "The sweating is on one side of my body only.",
        "Half my forehead gets soaked.",
        "My right palm is much wetter than the left.",
        "It's mainly on the left when I'm at my desk.",
        "The sweat is really uneven, not the same on both sides.",
        "My left foot is dry but my right foot is always soaking.",
        "Is one-sided sweating normal?",
        "My left armpit is soaked while the right stays dry.",
    ],
    "rf-generalized": [
        "My whole body sweats, not just my hands.",
        "I'm sweating all over, even when I'm sitting still.",
        "I get drenched from head to toe for no reason.",
        "I sweat pretty much everywhere now.",
        "The sweating is all over my body, chest, back, legs.",
        "It's not just my armpits, my entire body gets wet.",
        "Full-body sweating that comes in waves.",
        "Every inch of my body is wet after ten minutes.",
    ],
    "rf-night-sweats": [
        "I keep soaking the sheets at night.",
        "I wake up drenched most nights.",
        "I have night sweats and have to change my pyjamas.",
        "Woke up soaked in sweat again.",
        "My pillow is wet every morning.",
        "I sweat a lot in my sleep.",
        "I'm sweating at night so badly my partner moved to the sofa.",
        "I have to change my T-shirt in the middle of the night.",
        "Night-time sweating is the worst part.",
        "My bedding is damp when I get up.",
        "I wake up in a pool of sweat.",
        "Waves of heat and sweat, including in the night.",
    ],
    "rf-fever": [
        "I've had a fever on and off and I'm sweating buckets.",
        "I keep getting chills and then sweating.",
        "I'm running a temperature most evenings.",
        "My temperature was 38.5 last night.",
        "Feeling feverish and sweaty for two weeks.",
        "I go hot and cold and then I'm soaked.",
        "I had 101 F yesterday and was drenched.",
        "Shivering fits followed by sweating.",
    ],
    "rf-weight-loss": [
        "I've lost 8 kg without trying.",
        "I've been losing weight even though I eat normally.",
        "Dropped 15 pounds in two months and I'm sweating more.",
        "My jeans are falling off me and I sweat constantly.",
        "Unexplained weight loss and sweating, should I worry?",
        "I've lost a lot of weight recently.",
        "My weight keeps dropping.",
        "I've been getting really skinny and sweaty.",
        "I've shed nearly a stone without dieting.",
    ],
    "rf-palpitations-chest-pain": [
        "I get palpitations with the sweating.",
        "My heart is racing even when I'm resting.",
        "I sweat and have chest pain.",
        "There's a tightness in my chest when it happens.",
        "Sometimes my heart skips beats and I get clammy.",
        "My heart pounds and I'm suddenly soaking.",
        "I have a fast heartbeat and sweat a lot.",
        "There's pressure in my chest and I break into a sweat.",
    ],
    "rf-new-medication": [
        "Since I started sertraline I sweat like mad.",
        "It began after my doctor put me on venlafaxine.",
        "I started a new medication last month and now I'm sweating.",
        "Could this be a side effect of my antidepressants?",
        "They increased my dose and the sweating got worse.",
        "I'm taking escitalopram and my face pours sweat.",
        "Ever since starting Ozempic I've been sweaty.",
        "I was put on prednisone and now I'm soaked.",
        "I take insulin and sometimes wake up sweaty and shaky.",
        "I switched to new pills for my blood pressure and now this.",
        "Ever since my doctor started me on Effexor I sweat through my shirts.",
    ],
}

# Ordinary primary hyperhidrosis and everyday phrasing that looks alarming but is not.
NEGATIVE = [
    "My hands sweat when I'm nervous.",
    "I've had sweaty palms since I was a kid.",
    "Both my hands and feet sweat, ever since primary school.",
    "My armpits soak through my shirt at work, it started when I was 14.",
    "I'm 34 and I've had this since I was 12.",
    "I'm 30 and it started getting worse last year.",
    "It started at 9 and by 30 it was really bad.",
    "My face sweats when I'm stressed, but it stops when I'm asleep.",
    "My hands stop sweating when I sleep.",
    "I don't sweat at night at all.",
    "No night sweats, no fever, just really sweaty hands.",
    "My feet sweat so much my socks are soaked by lunch.",
    "I sweat all over the keyboard and it's embarrassing.",
    "I drip all over the exam paper.",
    "Both sides are the same, my palms are equally bad.",
    "I want to lose weight but the gym is awful with sweaty hands.",
    "Losing my mind over this sweating.",
    "This sweating is killing my social life.",
    "I started a new job and my palms are worse.",
    "I started using a prescription antiperspirant last week.",
    "I started Botox injections for my armpits last month.",
    "The temperature in the office is just right and I still sweat.",
    "It was 38 degrees outside and I was sweating.",
    "I have hay fever as well, does that matter?",
    "It gives me the chills to think about shaking hands.",
    "I get nervous before presentations and my palms drip.",
    "I have to wipe my right hand before shaking hands.",
    "My mum and my brother both have sweaty hands too.",
    "I carry tissues everywhere because my hands sweat.",
    "I'm 19 and my underarms sweat through every shirt.",
    "It's been about 30 minutes since I started sweating.",
    "My hands are just right for gripping when they are dry.",
    "I'm not on any medication.",
    "I wake up and my hands are fine, then it starts at school.",
    "My hands sweat all day but are fine at night.",
    "My hands sweat during the day, never at night.",
    "I'm 30 and for the past year I've been using Drysol.",
    "I'm 26 and have had it since I was 11.",
    "It started in high school and now I'm 40.",
    "Is this normal for a 45 year old man? My palms have always sweated.",
    "I lost my job because I couldn't shake hands with clients.",
    "My heart is fine, it's just my hands.",
]


# Phrasing families added for issue 7 (onset by decade or age words, asymmetry, changed or
# named medicines, a racing heart that is not tied to nerves). Fresh wording: none of these
# lines is in the red-team or held-out sets.
POSITIVE_FAMILIES = {
    "rf-late-onset": [
        "It came on in my early thirties.",
        "Sweating out of the blue at fifty-one.",
        "I was 37 when it first hit.",
        "Since hitting forty I sweat constantly.",
        "Never a sweaty guy till my mid 40s.",
        "It began at around forty-four.",
        "Mid-thirties, and all of a sudden my shirts are soaked.",
        "In my late fifties the sweating started.",
        "At 52 my hands started dripping.",
    ],
    "rf-asymmetric": [
        "One palm sweats a lot more than the other one.",
        "My right hand is drenched and my left hand is dry.",
        "Left foot soaks, the right is fine.",
        "Only ever the left armpit.",
        "It's just the one hand, the left.",
        "My sweating is right-sided.",
        "One of my feet is far sweatier than the other.",
    ],
    "rf-new-medication": [
        "Since they bumped up my venlafaxine I sweat.",
        "The doctor changed my thyroid tablets and I'm sweaty.",
        "My GP doubled my sertraline.",
        "My new blood pressure pills make me sweat.",
        "My endocrinologist switched my diabetes medication last month.",
        "The sweating got worse once I went on tramadol.",
        "Could my Mounjaro be doing this?",
        "I'm on hormone injections for prostate cancer and I sweat.",
        "They swapped my antidepressant and I've been clammy since.",
    ],
    "rf-palpitations-chest-pain": [
        "My heart is racing for no reason.",
        "Heart pounding while I'm lying in bed.",
        "My pulse is really fast at rest.",
        "My heart beats irregularly and I sweat.",
        "I get a thudding heart and a sweat out of nowhere.",
    ],
}

NEGATIVE_FAMILIES = [
    "My heart races when I have to present.",
    "My heart pounds before exams.",
    "My heart is pounding with nerves before my date.",
    "When I'm anxious my heart beats fast and my palms get wet.",
    "I'm 33 and have had it since I was 10.",
    "Both armpits are the same.",
    "My left and right hands are equally sweaty.",
    "My left hand sweats and the right one does too.",
    "I started a new job in my forties.",
    "My mum is in her sixties and has sweaty feet.",
    "At 40 I still get embarrassed.",
    "Only the palms, both of them.",
    "The doctor changed my appointment.",
    "My doctor started me on Drysol.",
    "My GP switched me to a stronger antiperspirant.",
    "I switched gyms and now sweat more at spin class.",
    "I've been on the same tablets for years, nothing new.",
    "Down 3 kilos at the gym this month.",
    "I turned 45 last week and I've had sweaty hands since school.",
]


@pytest.mark.parametrize(
    "flag_id,text", [(flag, text) for flag, texts in POSITIVE_FAMILIES.items() for text in texts]
)
def test_red_flag_phrasing_families(pack, flag_id, text):
    found = [f.id for f in pack.find_red_flags(text)]
    assert flag_id in found, f"{flag_id} missed: {text!r} (found {found})"


@pytest.mark.parametrize("text", NEGATIVE_FAMILIES)
def test_benign_lookalikes_of_the_families_trip_no_flag(pack, text):
    found = [f.id for f in pack.find_red_flags(text)]
    assert found == [], f"false alarm {found} on benign text {text!r}"


@pytest.mark.parametrize(
    "flag_id,text", [(flag, text) for flag, texts in POSITIVE.items() for text in texts]
)
def test_red_flag_catches_natural_phrasing(pack, flag_id, text):
    found = [f.id for f in pack.find_red_flags(text)]
    assert flag_id in found, f"{flag_id} missed: {text!r} (found {found})"


@pytest.mark.parametrize("text", NEGATIVE)
def test_benign_phrasing_trips_no_red_flag(pack, text):
    found = [f.id for f in pack.find_red_flags(text)]
    assert found == [], f"false alarm {found} on benign text {text!r}"


def test_every_issue_red_flag_is_in_the_pack(pack):
    assert {f.id for f in pack.red_flags} >= set(POSITIVE)
    for flag in pack.red_flags:
        assert flag.advice and flag.source and flag.patterns


def test_negation_only_masks_the_negated_phrase(pack):
    flag = next(f for f in pack.red_flags if f.id == "rf-fever")
    assert not flag.matches("No fever at all.")
    assert flag.matches("No fever at first, but now I have a temperature of 38.7.")


def test_secondary_seed_questions_trip_a_flag_and_primary_ones_do_not(pack):
    for seed in pack.seeds:
        found = [f.id for f in pack.find_red_flags(seed.question)]
        if seed.profile.kind == "secondary":
            assert found, f"secondary seed {seed.id} trips no red flag: {seed.question!r}"
        else:
            assert not found, f"primary seed {seed.id} trips {found}: {seed.question!r}"


@pytest.mark.parametrize("every", [12, pytest.param(1, marks=pytest.mark.slow)])
def test_the_fast_scan_of_ascii_text_finds_exactly_what_the_case_insensitive_patterns_find(pack, every):
    """RedFlag.find skips an ASCII text whose lower case the joined patterns (without IGNORECASE,
    ~3x faster) do not match: the same red flags and matches as the case-insensitive scan on the
    training-corpus texts (every 12th in the fast tier, all 30,000+ in the slow one: 40 s) and
    their upper-case copies, and on texts written to tell them apart; patterns for which
    lower-casing could answer differently keep the case-insensitive scan."""
    import json
    import re
    from pathlib import Path

    from pipeline.packs import RedFlag, _lower_alternation

    data = Path(__file__).resolve().parent.parent / "bot" / "safety" / "data"
    texts = [json.loads(line)["text"] for path in [data / "crisis_train.jsonl", *sorted((data / "corpus").glob("*.jsonl"))]
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][::every]
    texts += ["I SWEAT AT NIGHT AND HAVE A FEVER", "Night Sweats Since I Started A New Medication", "KELVIN sſ",
              "Started at 45, DRENCHING night sweats", "İ have a fever"]
    for text in POSITIVE_TEXTS + texts:
        texts.append(text.upper())
    assert len(texts) > 60_000 // every
    flags = pack.red_flags
    assert all(flag._any_lower is not None for flag in flags)  # every shipped flag gets the fast scan

    def slow(flag, text):
        saved, flag._any_lower = flag._any_lower, None
        try:
            return [(m.span(), m.group(0)) for m in flag.find(text)]
        finally:
            flag._any_lower = saved

    for text in texts:
        for flag in flags:
            assert [(m.span(), m.group(0)) for m in flag.find(text)] == slow(flag, text), (flag.id, text)
    # lower-casing would answer differently: these keep the case-insensitive scan
    for pattern in ["[0-_]", r"\x41", "\u212a", "Night", "(?i)x", r"(a)\1"]:
        assert _lower_alternation([pattern]) is None, pattern
    odd = RedFlag(id="rf-odd", name="odd", description="d", patterns=["[0-_]x", "fever"], advice="a")
    assert [m.group(0) for m in odd.find("Ax and FEVER")] == ["Ax", "FEVER"]
    assert re.search("[0-_]x", "ax", re.I) and odd.find("ax")


POSITIVE_TEXTS = [text for texts in POSITIVE.values() for text in texts]
