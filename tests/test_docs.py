"""Every `python src/train.py` / `python src/eval.py` command in README.md and docs/ composes and passes the
settings check, as the entry point checks it before a run (placeholders such as PATH or <date_time> become
plain strings; nothing is trained or generated). The check that a resumed run's checkpoint exists needs the
files, so it is left out here (tests/training/test_run_folder.py tests it)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ddim.evaluation.settings import check_before_run as check_eval
from ddim.hydra_utils import check_command_line
from ddim.training import run_folder
from ddim.training.checks import check_before_run as check_train

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^\s*python src/(train|eval)\.py\b(.*)$")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(page:line, entry, arguments) of every command line in an indented code block of the docs."""
    found = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            match = COMMAND.match(lines[i])
            start = i
            if match:
                text = match.group(2)
                while text.rstrip().endswith("\\") and i + 1 < len(lines):  # continued lines
                    i += 1
                    text = text.rstrip()[:-1] + " " + lines[i].strip()
                text = text.split(" # ")[0]  # a trailing comment
                text = re.sub(r"<[^>]*>", "x", text)  # <date_time>, <the first sweep's folder>, ...
                found.append((f"{page.relative_to(ROOT)}:{start + 1}", match.group(1), shlex.split(text)))
            i += 1
    return found


COMMANDS = documented_commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 25 and {entry for _, entry, _ in COMMANDS} == {"train", "eval"}


@pytest.mark.parametrize("where, entry, args", COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_every_documented_command_passes_the_settings_check(where, entry, args, capsys, monkeypatch):
    monkeypatch.setattr(run_folder, "check_before_run", lambda config, folder_key: None)
    check = check_train if entry == "train" else check_eval
    try:
        check_command_line(ROOT / "conf", entry, check, args)
    except SystemExit:
        pytest.fail(f"{where}: python src/{entry}.py {' '.join(args)}\n{capsys.readouterr().err}")
