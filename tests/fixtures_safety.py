"""The offline safety model, once per test session, from the shared cache (owned by the safety work).

Every service a test starts asks for the safety model with its own temporary data directory as the
cache, so without this the first of them trained the model from the whole corpus in every test run
(about 50 s on 30,000 rows at load 3.5, two cores). Loaded here first, from the default cache
(``$XDG_CACHE_HOME/llm4sweat``, keyed by corpus hash, model version and numpy version), the
model is in the process's memory for every later caller: a run trains it only when the corpus or
the model changed, and otherwise loads it in a few seconds.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def safety_model_from_the_shared_cache():
    from bot.safety.detector import crisis_model
    from pipeline.packs import PACKS_DIR, load_pack

    crisis_model(load_pack(PACKS_DIR / "hyperhidrosis"))
