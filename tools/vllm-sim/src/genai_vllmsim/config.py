"""Simulator settings: command-line flags, each with a GENAI_SIM_* environment default."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

ERROR_KINDS = ("500", "429", "400", "reset")
ERROR_FORMATS = ("nested", "legacy")


@dataclass(frozen=True)
class SimConfig:
    """How the simulated model server behaves; per-request `x-sim-*` headers override some fields."""

    model: str = "sim-model"
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    output_tokens: int = 16
    max_num_seqs: int = 256
    max_model_len: int = 4096
    api_key: str | None = None
    error_rate: float = 0.0
    error_kind: str = "500"
    # "nested": {"error": {...}} as current vLLM; "legacy": {"object": "error", ...} as older vLLM.
    error_format: str = "nested"
    # False mimics servers that ignore stream_options.include_usage.
    stream_usage: bool = True
    # False mimics vLLM started without --enable-auto-tool-choice: tool_choice "auto" is refused.
    auto_tool_choice: bool = True
    # False mimics OpenAI-compatible servers without vLLM's /tokenize (it answers 404).
    tokenize: bool = True
    seed: int = 0
    # Automatic prefix caching, as vLLM's v1 engine has it on by default (see `prefix_cache`).
    prefix_caching: bool = True
    # Tokens per KV-cache block (vLLM's --block-size), and the blocks the prefix cache keeps.
    block_size: int = 16
    prefix_cache_blocks: int = 16384
    # Prefill time per 1000 prompt tokens not found in the prefix cache, added to the time to first token.
    # 0 keeps the time to first token at --ttft-ms whatever the prompt and the cache.
    prefill_ms_per_1k_tokens: float = 0.0
    # Kill switch armed at start: the process exits once a response has sent this many tokens.
    die_after_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must not be empty")
        if self.ttft_ms < 0 or self.itl_ms < 0 or self.prefill_ms_per_1k_tokens < 0:
            raise ValueError("latencies must not be negative")
        if self.output_tokens < 0:
            raise ValueError("output_tokens must not be negative")
        if self.max_num_seqs < 1 or self.max_model_len < 1:
            raise ValueError("max_num_seqs and max_model_len must be at least 1")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.error_kind not in ERROR_KINDS:
            raise ValueError(f"error_kind must be one of {', '.join(ERROR_KINDS)}")
        if self.error_format not in ERROR_FORMATS:
            raise ValueError(f"error_format must be one of {', '.join(ERROR_FORMATS)}")
        if self.block_size < 1 or self.prefix_cache_blocks < 1:
            raise ValueError("block_size and prefix_cache_blocks must be at least 1")
        if self.die_after_tokens is not None and self.die_after_tokens < 0:
            raise ValueError("die_after_tokens must not be negative")


@dataclass(frozen=True)
class ServerOptions:
    """Where the simulator listens and how much it logs."""

    host: str = "127.0.0.1"
    port: int = 8081
    log_level: str = "warning"


def _env(name: str, convert: Callable[[str], Any], default: Any) -> Any:
    raw = os.environ.get(f"GENAI_SIM_{name}")
    return default if raw is None or raw == "" else convert(raw)


def _flag(raw: str) -> bool:
    return raw.strip().lower() in {"1", "true", "yes", "on"}


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default (which includes its environment value), except the API key's."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "api_key":
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    d = SimConfig()
    parser = argparse.ArgumentParser(
        prog="genai-vllm-sim",
        formatter_class=_HelpWithDefaults,
        description="OpenAI-compatible server that behaves like vLLM's, for tests, faults and benchmarks. "
        "Every flag also reads GENAI_SIM_<FLAG> (upper case, dashes as underscores).",
    )
    add = parser.add_argument
    add("--host", default=_env("HOST", str, ServerOptions.host), help="address to listen on")
    add("--port", type=int, default=_env("PORT", int, ServerOptions.port), help="0 picks a free port")
    add("--log-level", default=_env("LOG_LEVEL", str, ServerOptions.log_level), help="uvicorn's log level")
    add("--model", default=_env("MODEL", str, d.model), help="served model name")
    add("--ttft-ms", type=float, default=_env("TTFT_MS", float, d.ttft_ms), help="time to first token")
    add("--itl-ms", type=float, default=_env("ITL_MS", float, d.itl_ms), help="inter-token latency")
    add(
        "--output-tokens",
        type=int,
        default=_env("OUTPUT_TOKENS", int, d.output_tokens),
        help="words per answer (fewer when max_tokens or the context length says so)",
    )
    add(
        "--max-num-seqs",
        type=int,
        default=_env("MAX_NUM_SEQS", int, d.max_num_seqs),
        help="requests generating at once; more wait in a FIFO queue",
    )
    add(
        "--max-model-len",
        type=int,
        default=_env("MAX_MODEL_LEN", int, d.max_model_len),
        help="context length: longer requests get vLLM's 400",
    )
    add(
        "--api-key",
        default=_env("API_KEY", str, d.api_key),
        help="when set, require this Bearer token on /v1/* (prefer GENAI_SIM_API_KEY: flags show in ps)",
    )
    add(
        "--error-rate",
        type=float,
        default=_env("ERROR_RATE", float, d.error_rate),
        help="share of requests (0..1) answered with --error-kind",
    )
    add(
        "--error-kind",
        choices=ERROR_KINDS,
        default=_env("ERROR_KIND", str, d.error_kind),
        help="HTTP status to answer, or reset: drop the connection after a few chunks",
    )
    add(
        "--error-format",
        choices=ERROR_FORMATS,
        default=_env("ERROR_FORMAT", str, d.error_format),
        help='nested: {"error": {...}} (vLLM now); legacy: {"object": "error", ...} (older vLLM)',
    )
    add(
        "--no-stream-usage",
        action="store_true",
        default=_env("NO_STREAM_USAGE", _flag, False),
        help="never send the usage chunk, like servers that ignore stream_options",
    )
    add(
        "--no-auto-tool-choice",
        action="store_true",
        default=_env("NO_AUTO_TOOL_CHOICE", _flag, False),
        help='refuse tool_choice "auto" (given or implied by tools) as vLLM does without --enable-auto-tool-choice',
    )
    add(
        "--no-tokenize",
        action="store_true",
        default=_env("NO_TOKENIZE", _flag, False),
        help="no POST /tokenize, like OpenAI-compatible servers without a tokenizer endpoint",
    )
    add("--seed", type=int, default=_env("SEED", int, d.seed), help="seed of the error-rate dice")
    add(
        "--prefill-ms-per-1k-tokens",
        type=float,
        default=_env("PREFILL_MS_PER_1K_TOKENS", float, d.prefill_ms_per_1k_tokens),
        help="added to the time to first token per 1000 prompt tokens not in the prefix cache",
    )
    add(
        "--no-prefix-caching",
        action="store_true",
        default=_env("NO_PREFIX_CACHING", _flag, False),
        help="no prefix cache (as vLLM's --no-enable-prefix-caching): every prompt token is prefilled, "
        "no prefix-cache queries or hits are counted",
    )
    add(
        "--block-size",
        type=int,
        default=_env("BLOCK_SIZE", int, d.block_size),
        help="tokens per KV-cache block: only whole blocks of a prompt are cached",
    )
    add(
        "--prefix-cache-blocks",
        type=int,
        default=_env("PREFIX_CACHE_BLOCKS", int, d.prefix_cache_blocks),
        help="blocks the prefix cache keeps; the least recently used go first",
    )
    add(
        "--die-after-tokens",
        type=int,
        default=_env("DIE_AFTER_TOKENS", int, d.die_after_tokens),
        help="kill switch: the process exits abruptly once a response has sent this many tokens "
        "(0: once a request is scheduled, before its first token)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimConfig, ServerOptions]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = SimConfig(
            model=args.model,
            ttft_ms=args.ttft_ms,
            itl_ms=args.itl_ms,
            output_tokens=args.output_tokens,
            max_num_seqs=args.max_num_seqs,
            max_model_len=args.max_model_len,
            api_key=args.api_key or None,
            error_rate=args.error_rate,
            error_kind=args.error_kind,
            error_format=args.error_format,
            stream_usage=not args.no_stream_usage,
            auto_tool_choice=not args.no_auto_tool_choice,
            tokenize=not args.no_tokenize,
            seed=args.seed,
            prefix_caching=not args.no_prefix_caching,
            block_size=args.block_size,
            prefix_cache_blocks=args.prefix_cache_blocks,
            prefill_ms_per_1k_tokens=args.prefill_ms_per_1k_tokens,
            die_after_tokens=args.die_after_tokens,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return config, ServerOptions(host=args.host, port=args.port, log_level=args.log_level)
