"""`edgernn wrap THIRD.onnx -o OUT.onnx --state IN:OUT ...`: declare a graph made
elsewhere (see wrap.py)."""

from __future__ import annotations

import argparse
import sys

from edgernn.argtypes import csv_list, nonempty_csv_list


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a.strip() or not b.strip() or ":" in b:
        raise argparse.ArgumentTypeError(f"a state pair is IN:OUT, got {text!r}")
    return a.strip(), b.strip()


def _const(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"a const is NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "wrap",
        help="declare the states and constants of a stateful graph made elsewhere",
        description="Declare which outputs of a single-step ONNX graph made elsewhere feed "
        "back into which inputs (--state IN:OUT) and which inputs are constants fed every "
        "step (--const NAME=VALUE), check the declaration against the graph (shapes and "
        "dtypes pair up, each state is really carried), and write a copy with edgernn "
        "metadata that `edgernn run`, `info`, `bench`, `quantize` and Model serve. Without "
        "--state, prints the pairs proposed from names and shapes as a command line to "
        "check and run, and exits 1.",
    )
    p.add_argument("graph", metavar="THIRD.onnx", help="the graph made elsewhere")
    p.add_argument("-o", "--out", metavar="OUT.onnx", help="where to write the wrapped copy")
    p.add_argument(
        "--state", dest="states", type=_pair, action="append", default=[], metavar="IN:OUT",
        help="a state input and the output holding its next value (repeat for each state)",
    )  # fmt: skip
    p.add_argument(
        "--const", dest="consts", type=_const, action="append", default=[],
        metavar="NAME=VALUE",
        help="an input fed the same value every step (a number or JSON list), e.g. sr=16000",
    )  # fmt: skip
    p.add_argument("--channels", type=nonempty_csv_list, help="names of the sample's features")
    p.add_argument(
        "--task", choices=["custom", "classify", "regress"], default="custom",
        help="classify: the primary output is class probabilities; regress: values",
    )  # fmt: skip
    p.add_argument("--classes", type=nonempty_csv_list, help="class names (task classify)")
    p.add_argument("--targets", type=csv_list, help="regressed column names (task regress)")
    p.add_argument("--output", help="the primary output (default: the first non-state one)")
    p.add_argument(
        "--ignore-names", action="store_true",
        help="accept state pairs whose names contradict the pairing (h0:cn beside c0:hn)",
    )  # fmt: skip
    p.add_argument(
        "--stateless", action="store_true", help="the graph has no state at all (no --state)"
    )
    p.set_defaults(func=cmd_wrap)


def cmd_wrap(args) -> int:
    from edgernn.errors import InputError
    from edgernn.runtime.wrap import Declaration, open_graph, propose, wrap

    if not args.states and not args.stateless:
        _, inputs, outputs = open_graph(args.graph)
        proposal = propose(inputs, outputs)
        print_proposal(args, proposal, inputs, outputs)
        return 1
    if not args.out:
        raise InputError("give the output file: -o OUT.onnx")
    consts = dict(args.consts)
    if len(consts) != len(args.consts):
        raise InputError("a const is declared twice")
    decl = Declaration(
        states=list(args.states), consts=consts, channels=args.channels, task=args.task,
        classes=args.classes, targets=args.targets, output=args.output,
        check_names=not args.ignore_names, stateless=args.stateless,
    )  # fmt: skip
    meta = wrap(args.graph, args.out, decl)
    pairs = ", ".join(f"{s.input} -> {s.output}" for s in meta.states) or "none"
    print(
        f"wrote {args.out}: task {meta.task}, input {meta.input} ({len(meta.channels)} "
        f"channels), outputs {', '.join(o.name for o in meta.outputs)}, states {pairs}"
    )
    return 0


def print_proposal(args, proposal, inputs, outputs) -> None:
    from edgernn.runtime.wrap import proposal_command

    shapes = {t.name: t.describe() for t in inputs + outputs}
    out = sys.stdout
    print(f"{args.graph}: no --state given; nothing is guessed.", file=out)
    if proposal.states:
        print("State pairs proposed from names and shapes (check them):", file=out)
        for a, b in proposal.states:
            print(f"  {a} -> {b}   {shapes[a]}", file=out)
    else:
        print("No state pairs found by name or shape: declare them with --state IN:OUT", file=out)
        print("(or --stateless for a graph without state).", file=out)
    for c in proposal.consts:
        print(f"  {c.name} {shapes[c.name]} looks like a constant: give its VALUE", file=out)
    if len(proposal.sample) == 1:
        print(f"  {proposal.sample[0]} {shapes[proposal.sample[0]]} is the sample input", file=out)
    elif proposal.sample:
        print(f"  undeclared inputs: {', '.join(proposal.sample)} (one is the sample)", file=out)
    print("Run:", file=out)
    print("  " + proposal_command(args.graph, args.out, proposal), file=out)
