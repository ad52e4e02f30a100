"""MkDocs hooks: the command-line reference generated from nmtkit's argparse parser, and the
user-guide pages other branches add, put in the nav once they exist (strict mode stays strict for
every other page)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

CLI_MARKER = "<!-- cli reference: generated from nmtkit.cli.build_parser -->"

# (title, path under docs/): listed under "User guide" when the file is there
OPTIONAL_GUIDE_PAGES = [
    ("Steering and input", "guide/steering-and-input.md"),
    ("Runs", "guide/runs.md"),
    ("Pretrained models", "guide/pretrained.md"),
    ("Terminology", "guide/terminology.md"),
    ("The page", "guide/page.md"),
    ("Operating the service", "guide/operating.md"),
    ("On the CPU", "guide/cpu.md"),
]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    from nmtkit.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: fix it
    parser = build_parser()
    parts = ["```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in subcommands(parser).items():
        parts += [f"## nmtkit {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])
    present = [{title: path} for title, path in OPTIONAL_GUIDE_PAGES if (docs / path).is_file()]
    for section in config["nav"]:
        if isinstance(section, dict) and "User guide" in section:
            section["User guide"].extend(present)
    return config


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown
