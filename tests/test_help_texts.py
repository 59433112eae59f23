"""`edgernn train --help` and `edgernn evaluate --help` say every option's meaning and
default, and how their default cells differ."""

import re

import pytest
from conftest import run_cli

from edgernn.train.config import TrainConfig


def _entries(help_text: str) -> dict[str, str]:
    """--option -> its help text (argparse's two-column layout, joined)."""
    entries, current = {}, None
    for line in help_text.splitlines():
        m = re.match(r"^  (-\w, )?(--[\w-]+)", line)
        if m:
            current = m.group(2)
            entries[current] = line[m.end():]
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {k: re.sub(r"^\s*[A-Z_{][^ ]*\s*", "", v.strip()) if v.strip() else v
            for k, v in entries.items()}  # fmt: skip


@pytest.fixture(scope="module")
def train_help():
    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    return _entries(proc.stdout)


def test_every_train_option_says_what_it_means(train_help):
    bare = [opt for opt, text in train_help.items() if len(text.split()) < 3]
    assert not bare, bare


@pytest.mark.parametrize("field", ["hidden", "epochs", "lr", "window", "layers", "dropout",
                                   "horizon", "val_frac", "batch_size", "patience", "ridge",
                                   "washout", "spectral_radius", "cell", "bptt"])  # fmt: skip
def test_train_help_shows_the_default(train_help, field):
    text = train_help["--" + field.replace("_", "-")]
    assert f"default {getattr(TrainConfig(), field)}" in text, text


def test_default_cells_are_said_in_both_helps(train_help):
    assert "default lstm" in train_help["--cell"] and "evaluate" in train_help["--cell"]
    proc = run_cli("evaluate", "--help")
    cell = _entries(proc.stdout)["--cell"]
    assert "default esn" in cell and "train` defaults to lstm" in cell
