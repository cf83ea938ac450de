import pytest

from bot.settings import SettingsError, load_settings



def test_defaults_are_embedded(tmp_path):
    s = load_settings(data_dir=tmp_path)
    assert s.inference.backend == "local"
    assert s.inference.base_model == "meta-llama/Llama-3.2-1B-Instruct"
    assert s.review.mode == "immediate" and s.review.quorum == 1
    assert s.local.host == "127.0.0.1"
    assert s.db_path == tmp_path / "llm4sweat.db"


def test_environment_nested(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM4SWEAT_REVIEW__MODE", "gated")
    monkeypatch.setenv("LLM4SWEAT_INFERENCE__MAX_BATCH_SIZE", "4")
    s = load_settings(data_dir=tmp_path)
    assert s.review.mode == "gated" and s.inference.max_batch_size == 4


def test_invalid_value_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("LLM4SWEAT_REVIEW__QUORUM", "zero")
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert "review.quorum" in message and "LLM4SWEAT_REVIEW__QUORUM" in message


def test_toml_file_unknown_key_and_wrong_type(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[review]\nmode = "gated"\ncolour = "blue"\n')
    with pytest.raises(SettingsError, match=r"review.colour .*unknown setting"):
        load_settings(cfg)
    cfg.write_text("[inference]\nmax_batch_size = \"many\"\n")
    with pytest.raises(SettingsError, match="inference.max_batch_size"):
        load_settings(cfg)
    cfg.write_text('[review]\nmode = "gated"\n')
    assert load_settings(cfg).review.mode == "gated"


def test_broken_toml_and_missing_file(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("[review\nmode=")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(cfg)
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_secret_in_file_refused_and_never_printed(tmp_path, monkeypatch):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[discord]\ntoken = "abc.def.ghi"\n')
    with pytest.raises(SettingsError) as info:
        load_settings(cfg)
    assert "LLM4SWEAT_DISCORD__TOKEN" in str(info.value)
    assert "abc.def.ghi" not in str(info.value)
    monkeypatch.setenv("LLM4SWEAT_DISCORD__TOKEN", "super-secret-token")
    s = load_settings(data_dir=tmp_path)
    assert "super-secret-token" not in repr(s)
    assert "super-secret-token" not in str(s.redacted())
    assert s.redacted()["discord"]["token"] == "(set)"


def test_invalid_utf8_database_path():
    bad = b"/tmp/caf\xe9.db".decode("utf-8", "surrogateescape")
    with pytest.raises(SettingsError, match="database_path.*UTF-8"):
        load_settings(database_path=bad)


def test_secret_masked_in_logs(caplog):
    import logging

    from bot.logs import SecretFilter

    logger = logging.getLogger("secret-test")
    handler_filter = SecretFilter(["xoxb-123456"])
    record = logger.makeRecord("x", logging.INFO, __file__, 1, "token is %s", ("xoxb-123456",), None)
    handler_filter.filter(record)
    assert "xoxb-123456" not in record.getMessage() and "[redacted]" in record.getMessage()
