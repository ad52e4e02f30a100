"""The documentation: the site builds in strict mode and offline, and every `nmtkit ...` command
shown in README.md and docs/ names a real subcommand and real options."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nmtkit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`(nmtkit [^`]+)`")
SHELLS = {"", "sh", "bash", "shell", "console"}
SEPARATORS = {"|", "||", "&&", ";", "&"}
REDIRECTS = {"<", ">", ">>", "2>", "&>"}


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shown_commands(text: str) -> list[tuple[str, bool]]:
    """The nmtkit command lines of a Markdown text, each with whether it is a whole command: in
    shell code blocks (continuation lines joined, comments dropped; whole) and in inline code that
    begins with `nmtkit ` (prose names a command there, perhaps without its required arguments)."""
    lines: list[tuple[str, bool]] = []
    for lang, body in FENCE.findall(text):
        if lang in SHELLS:
            lines += [(line, True) for line in body.replace("\\\n", " ").splitlines()]
    lines += [(line, False) for line in INLINE.findall(FENCE.sub("", text))]
    return [(line, whole) for line, whole in lines if "nmtkit" in line]


def nmtkit_arguments(line: str) -> list[list[str]]:
    """The argument lists given to nmtkit (or `python -m nmtkit.cli`) in one shell line."""
    line = re.sub(r"\$\([^)]*\)", "X", line)  # a command substitution stands for one word
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    segments: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in SEPARATORS:
            segments.append([])
        elif token in REDIRECTS or token.endswith(">"):
            skip_next = True
        else:
            segments[-1].append(token)
    found = []
    for words in segments:
        if words and Path(words[0]).name == "nmtkit":
            found.append(words[1:])
        elif "nmtkit.cli" in words and words.index("nmtkit.cli") > 0 and \
                words[words.index("nmtkit.cli") - 1] == "-m":
            found.append(words[words.index("nmtkit.cli") + 1:])
    return found


def parse_error(args: list[str], whole: bool = True) -> str | None:
    """None if the parser accepts `args` (a part of a command, unless `whole`: its required
    arguments may be missing), else its message."""
    parser = build_parser()
    if not whole:  # the subcommand and the option names, not whether required ones are there
        commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if args == ["--help"]:
            return None
        if not args or args[0] not in commands:
            return f"no such command: {args[:1]}"
        unknown = [a for a in args[1:] if a.startswith("-") and not a.lstrip("-").isdigit()
                   and a.split("=")[0] not in commands[args[0]]._option_string_actions]
        return f"no such option: {unknown}" if unknown else None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as stop:
        if stop.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1]
    return None


def test_the_checker_finds_commands_and_wrong_options() -> None:
    text = ("```sh\nnmtkit translate --checkpoint runs/x --beem 5 < in.txt > out.txt  # typo\n"
            "echo hi | nmtkit translate --checkpoint runs/x \\\n    --beam 5\n```\n"
            "Then `nmtkit evaluate --checkpoint runs/x --src a --ref b` and `nmtkit trian c.yaml`.\n"
            "```sh\ntorchrun --standalone -m nmtkit.cli train c.yaml --sett a=1\n```\n")
    shown = shown_commands(text)
    assert [whole for _, whole in shown] == [True, True, True, False, False]
    found = [args for line, _ in shown for args in nmtkit_arguments(line)]
    assert found == [["translate", "--checkpoint", "runs/x", "--beem", "5"],
                     ["translate", "--checkpoint", "runs/x", "--beam", "5"],
                     ["train", "c.yaml", "--sett", "a=1"],
                     ["evaluate", "--checkpoint", "runs/x", "--src", "a", "--ref", "b"],
                     ["trian", "c.yaml"]]
    assert [parse_error(args) is None for args in found] == [False, True, False, True, False]
    assert parse_error(["evaluate", "--checkpoint", "runs/x"]) is not None
    assert parse_error(["evaluate", "--checkpoint", "runs/x"], whole=False) is None
    assert parse_error(["evaluate", "--beem", "5"], whole=False) is not None


def test_every_command_shown_parses() -> None:
    problems, seen = [], 0
    for path in markdown_files():
        for line, whole in shown_commands(path.read_text(encoding="utf-8")):
            for args in nmtkit_arguments(line):
                seen += 1
                if (message := parse_error(args, whole)) is not None:
                    problems.append(f"{path.relative_to(ROOT)}: nmtkit {shlex.join(args)}: {message}")
    assert seen > 50, "the commands in the docs were not found"
    assert not problems, "\n".join(problems)


EXTERNAL = re.compile(r"""<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//""", re.I)
CSS_EXTERNAL = re.compile(r"""(?:url\(\s*["']?|@import\s+["'])(?:https?:)?//""", re.I)


def external_resources(site: Path) -> list[str]:
    """Files of a built site that load something from another host (fonts, scripts, styles)."""
    bad = []
    for f in site.rglob("*"):
        if f.suffix == ".html" and EXTERNAL.search(f.read_text(encoding="utf-8", errors="replace")):
            bad.append(f"{f.relative_to(site)}: {EXTERNAL.search(f.read_text(encoding='utf-8')).group(0)}")
        elif f.suffix == ".css" and CSS_EXTERNAL.search(f.read_text(encoding="utf-8", errors="replace")):
            bad.append(str(f.relative_to(site)))
    return bad


def test_external_resources_are_found(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text('<a href="https://x.org">a link is fine</a>', encoding="utf-8")
    assert external_resources(tmp_path) == []
    (tmp_path / "b.html").write_text('<script src="https://unpkg.com/x"></script>', encoding="utf-8")
    (tmp_path / "c.css").write_text("@import 'https://fonts.googleapis.com/css?family=Roboto';", encoding="utf-8")
    assert sorted(p.split(":")[0] for p in external_resources(tmp_path)) == ["b.html", "c.css"]


# per built tutorial: what only its executed output holds (its source, shown too, has the
# f-string's braces where these have numbers), and how many pictures it draws
TUTORIALS = [
    ("01_encoder_decoder.html", r"context vector \(final hidden\) \(1, 1, 32\)", 2),
    ("02_attention.html", r"general, no input feeding", 5),
    ("03_decoding.html", r"beam search found a higher-scoring translation for [1-9]\d* of \d+ numbers", 2),
    ("04_transformer.html", r"with sinusoidal positions, the same: False", 4),
    ("05_beyond.html", r"\d+% of 40 samples are well-formed numbers", 3),
]


def test_the_site_builds_strict_and_offline(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    env = {**os.environ, "NMTKIT_TUTORIAL_BUDGET": "small", "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site"
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    assert "nmtkit translate" in cli and "--beam" in cli  # generated from the parser
    assert "nmtkit.translator.Translator" in (site / "reference" / "api.html").read_text(encoding="utf-8")
    for page, executed, pictures in TUTORIALS:
        tutorial = (site / "tutorials" / page).read_text(encoding="utf-8")
        assert re.search(executed, tutorial), page  # executed at the build
        # its pictures come from that run (the page's style sheet holds two more data: images)
        assert tutorial.count('src="data:image/png') >= pictures, page
        # a notebook's Markdown links are not rewritten from .md to .html: they must name .html
        assert not re.findall(r'href="(?!https?:)[^"]*\.md[#"]', tutorial), page
    for name in ("01_encoder_decoder", "02_attention"):  # their small-budget checks passed
        assert "checked: small budget" in (site / "tutorials" / f"{name}.html").read_text(encoding="utf-8"), name
    assert external_resources(site) == []


def test_the_readme_links_to_files_that_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [link for link in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in link]
    assert len(links) > 10
    assert [link for link in links if not (ROOT / link).exists()] == []
