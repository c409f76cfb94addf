"""Flags of `bon serve` and `python -m server`, mapped onto `Settings`, and the uvicorn launch.

Every scalar setting has a flag of its own (`max_in_flight` -> `--max-in-flight`); the structured ones have
the flags below. Flags win over `BON_*` variables, which win over the config file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.cli import add_field_flag
from server.settings import ConfigError, Settings, load_settings

_STRUCTURED = {"policies", "reward", "openai_base_urls", "api_keys", "vllm_engine_args", "config"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="JSON or TOML file mapping policy names to checkpoints and best_of, and the RM")
    parser.add_argument("--policy", action="append", metavar="NAME[=PATH]",
                        help="serve a policy under NAME (repeatable); PATH defaults to <checkpoints>/NAME")
    parser.add_argument("--reward", type=Path, metavar="PATH", help="reward model checkpoint (hf backend)")
    parser.add_argument("--reward-backend", choices=["hf", "remote"], help="reward backend")
    parser.add_argument("--reward-url", metavar="URL", help="vLLM-compatible /classify or /pooling URL (remote)")
    parser.add_argument("--reward-model", metavar="NAME", help="model name sent to the remote reward server")
    parser.add_argument("--openai-base-url", action="append", dest="openai_base_urls", metavar="URL",
                        help="replica of an OpenAI-compatible server for the openai backend (repeatable)")
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY",
                        help="accept this bearer key (repeatable); none means no authentication")
    parser.add_argument("--vllm-engine-args", type=json.loads, metavar="JSON", help="extra vLLM AsyncEngineArgs")
    hints = typing.get_type_hints(Settings)
    for name, field in Settings.model_fields.items():
        if name not in _STRUCTURED:
            add_field_flag(parser, name, hints[name], field.description or "")


def _policies(values: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not name:
            raise ValueError(f"--policy {value!r}: expected NAME or NAME=PATH")
        out[name] = {"path": path} if sep and path else {}
    return out


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {name: getattr(args, name) for name in Settings.model_fields
                                 if name not in _STRUCTURED - {"config"} and getattr(args, name, None) is not None}
    for name in ("openai_base_urls", "api_keys", "vllm_engine_args"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    if args.policy:
        overrides["policies"] = _policies(args.policy)
    reward = {key: value for key, value in (("path", args.reward), ("backend", args.reward_backend),
                                             ("url", args.reward_url), ("model", args.reward_model))
              if value is not None}
    if reward:
        overrides["reward"] = reward
    return load_settings(**overrides)


def describe(error: ValidationError) -> str:
    """What is wrong with the settings, field by field, without the values given: pydantic's own message quotes
    them (for a check over several fields, every setting), and among them are the API, admin and upstream keys."""
    lines = []
    for item in error.errors(include_url=False, include_context=False, include_input=False):
        field = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{field}: {message}" if field else message)
    return "\n  ".join(lines)


def serve(args: argparse.Namespace) -> None:
    """Serve until a signal stops it (gracefully: `server/shutdown.py`); a `ConfigError` that says what is wrong
    when the settings cannot be served."""
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {describe(exc)}") from None  # a chained error would quote the keys
    except (ValueError, OSError) as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
    missing = settings.missing_checkpoints()
    if missing:
        raise ConfigError("checkpoints not found:\n  " + "\n  ".join(missing) + "\n"
                          "Build the embedded default checkpoints with `bon build-default` (they go to "
                          "$BON_CHECKPOINTS, else ./checkpoints), or name yours with --policy NAME=PATH and "
                          "--reward PATH, or --config FILE.")
    import uvicorn

    from server.app import create_app
    from server.shutdown import GracefulServer

    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    # The server's own access log (server/access.py) replaces uvicorn's. The graceful timeout is uvicorn's, for
    # the answers still being sent once the drain is over (GracefulServer).
    connections = settings.limit_concurrency or settings.max_in_flight + settings.max_queue + 64
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, timeout_graceful_shutdown=10,
                            timeout_keep_alive=settings.timeout_keep_alive_s, limit_concurrency=connections)
    server = GracefulServer(config, app.state.bon)
    server.run()
    if not server.started:
        raise ConfigError(f"the server did not start on {settings.host}:{settings.port}; the log above says why")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server", description="Best-of-N serving (OpenAI-compatible)")
    add_arguments(parser)
    try:
        serve(parser.parse_args(argv))
    except ConfigError as exc:
        raise SystemExit(f"{parser.prog}: {exc}") from None
