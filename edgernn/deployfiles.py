"""`edgernn deploy`: the systemd units, environment files and logrotate rule that ship
with the package, listed or copied out, so a `pip install edgernn` on a Pi has them
without a checkout of the repository."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

from edgernn.errors import EdgernnError

SUFFIXES = (".service", ".env", ".logrotate")


def deploy_dir() -> str:
    """The folder the deploy files were installed in (or the checkout's deploy/)."""
    spec = importlib.util.find_spec("edgernn.deploy")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for path in locations:
        if os.path.isdir(path):
            return path
    raise EdgernnError("this edgernn installation has no deploy files (reinstall edgernn)")


def deploy_files() -> list[str]:
    folder = deploy_dir()
    return sorted(
        os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(SUFFIXES)
    )


def copy_deploy_files(target: str) -> list[str]:
    """Copy every deploy file into `target`; refuses, copying nothing, if any exists."""
    sources = deploy_files()
    dests = [os.path.join(target, os.path.basename(src)) for src in sources]
    present = [d for d in dests if os.path.lexists(d)]
    if present:
        raise EdgernnError(
            f"{', '.join(present)} already exist(s): nothing copied (move them away first)"
        )
    os.makedirs(target, exist_ok=True)
    for src, dst in zip(sources, dests):
        shutil.copyfile(src, dst)
    return dests


def add_commands(sub) -> None:
    p = sub.add_parser(
        "deploy",
        help="list or copy the systemd units, environment files and logrotate rule",
        description="The deploy files installed with edgernn: without --to, print their "
        "paths; with --to DIR, copy them into DIR (never over an existing file). Then "
        "edit the environment file and install the unit: see the README's 'Raspberry Pi'.",
    )
    p.add_argument("--to", metavar="DIR", help="copy the files into DIR")
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args) -> int:
    if args.to is None:
        for path in deploy_files():
            print(path)
        return 0
    for path in copy_deploy_files(args.to):
        print(f"wrote {path}")
    print(
        "next: edit the .env file (MODEL, PORT), then `sudo cp` the unit to "
        "/etc/systemd/system/ and `systemctl enable --now` it",
        file=sys.stderr,
    )
    return 0
