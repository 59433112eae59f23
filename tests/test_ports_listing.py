"""`edgernn ports` leaves out port nodes with nothing behind them (a container's or a
PC's legacy /dev/ttyS0 with every field empty) unless --all asks for them."""

import argparse

from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo

from edgernn.firmware_bridge.commands import cmd_ports


def _ports():
    empty = ListPortInfo("/dev/ttyS0", skip_link_detection=True)  # hwid "n/a"
    board = ListPortInfo("/dev/ttyACM0", skip_link_detection=True)
    board.vid, board.pid, board.serial_number = 0x2341, 0x0043, "A1"
    board.description = "Arduino Uno"
    board.hwid = "USB VID:PID=2341:0043 SER=A1"
    return [empty, board]


def test_ports_hides_nodes_without_a_device(monkeypatch, capsys):
    monkeypatch.setattr(list_ports, "comports", _ports)
    assert cmd_ports(argparse.Namespace(json=False, all=False)) == 0
    out = capsys.readouterr().out
    assert "/dev/ttyACM0" in out and "2341:0043" in out
    assert "/dev/ttyS0" not in out


def test_ports_all_lists_them(monkeypatch, capsys):
    monkeypatch.setattr(list_ports, "comports", _ports)
    assert cmd_ports(argparse.Namespace(json=False, all=True)) == 0
    assert "/dev/ttyS0" in capsys.readouterr().out


def test_ports_says_how_to_see_hidden_nodes(monkeypatch, capsys):
    monkeypatch.setattr(list_ports, "comports", lambda: _ports()[:1])
    assert cmd_ports(argparse.Namespace(json=False, all=False)) == 0
    assert "--all" in capsys.readouterr().err
