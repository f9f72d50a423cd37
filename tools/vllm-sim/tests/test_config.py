"""Flags and their GENAI_SIM_* environment defaults."""

from __future__ import annotations

import httpx
import pytest

from genai_vllmsim.config import parse_args
from genai_vllmsim.launcher import running_simulator


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_SIM_TTFT_MS", "250")
    monkeypatch.setenv("GENAI_SIM_MODEL", "from-env")
    monkeypatch.setenv("GENAI_SIM_NO_STREAM_USAGE", "true")
    config, options = parse_args(["--model", "from-flag", "--port", "9999", "--error-kind", "reset"])
    assert (config.model, config.ttft_ms, config.error_kind, config.stream_usage) == (
        "from-flag",
        250,
        "reset",
        False,
    )
    assert (options.host, options.port) == ("127.0.0.1", 9999)


@pytest.mark.parametrize("argv", [["--error-rate", "2"], ["--error-kind", "418"], ["--output-tokens", "-1"]])
def test_invalid_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_model_name_from_environment() -> None:
    with running_simulator(env={"GENAI_SIM_MODEL": "env-model", "GENAI_SIM_MAX_MODEL_LEN": "2048"}) as sim:
        [card] = httpx.get(sim.url + "/models").json()["data"]
    assert (card["id"], card["max_model_len"]) == ("env-model", 2048)
