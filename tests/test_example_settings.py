from pathlib import Path

from bot.settings import load_settings


def test_example_settings_file_loads():
    example = Path(__file__).resolve().parent.parent / "deploy" / "llm4sweat.example.toml"
    settings = load_settings(example)
    assert settings.inference.backend == "openai" and settings.review.mode == "immediate"
