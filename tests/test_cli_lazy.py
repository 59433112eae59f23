"""`edgernn CMD` builds CMD's parser only: the same parser as the full one for it."""

import subprocess
import sys

import pytest

from edgernn import cli


def _subparsers(parser):
    return next(a for a in parser._actions if a.dest == "command").choices


def test_the_table_names_every_command_of_the_modules():
    listed = {name for names in cli.COMMAND_MODULES.values() for name in names}
    full = set(_subparsers(cli.build_parser()))
    assert full == listed | {"train", "export", "run", "info"}


@pytest.mark.parametrize("command", sorted(_subparsers(cli.build_parser())))
def test_a_command_gets_the_same_parser_alone(command):
    full = _subparsers(cli.build_parser())[command]
    alone = _subparsers(cli.build_parser([command, "--help"]))
    assert command in alone and len(alone) <= 2
    assert alone[command].format_help() == full.format_help()


@pytest.mark.parametrize("argv", [[], ["--help"], ["nonsense"], ["--version"]])
def test_help_and_unknown_commands_list_them_all(argv):
    assert set(_subparsers(cli.build_parser(argv))) == set(_subparsers(cli.build_parser()))


def test_unknown_command_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["nonsense"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nonsense'" in err and "Traceback" not in err


def _imported_after(argv: list) -> list:
    """The heavy modules a fresh interpreter holds after building the parser for argv."""
    code = (
        f"import sys; from edgernn import cli; cli.build_parser({argv!r}); "
        "print(sorted(m for m in sys.modules if m.startswith(('edgernn.train', "
        "'edgernn.firmware_bridge.', 'torch', 'paho'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout)


def test_info_does_not_import_training_or_the_serial_bridge():
    assert _imported_after(["info", "x.onnx"]) == []


def test_run_builds_its_parser_without_the_live_sources():
    assert _imported_after(["run", "m.onnx", "--csv", "x"]) == ["edgernn.firmware_bridge.options"]
