"""Command-line front ends (the CLI process's main thread): the `mmengine` command and the
tools it runs. They attach to the runtime (engine, config, replay) and to the local servers
in `mmengine.dev`; nothing in the runtime imports them.

`mmengine.cli:main` is the console script's entry point (pyproject.toml)."""

from mmengine.cli.app import main

__all__ = ["main"]
