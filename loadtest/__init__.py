"""Load test of any OpenAI-compatible chat-completions server from outside: `bon loadtest`."""

from loadtest.cli import add_arguments, run_cli

__all__ = ["add_arguments", "run_cli"]
