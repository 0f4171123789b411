"""The ``adpo-ray`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from adpo_ray.config import SpecError, load_spec


def _console() -> Console:
    return Console(width=max(Console().width, 120))


def cmd_scenarios(args: argparse.Namespace) -> int:
    from adpo_ray.core.noise import scenario_rows

    table = Table(title="Noise scenarios (the twelve + clean reference)")
    for col in ("scenario", "type", "severity", "params", "in_twelve"):
        table.add_column(col)
    for row in scenario_rows():
        table.add_row(*row.values())
    _console().print(table)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            spec = load_spec(path)
        except SpecError as e:
            print(f"{path}: invalid", file=sys.stderr)
            for line in e.errors:
                print(f"  {line}", file=sys.stderr)
            status = 2
            continue
        n = len(spec.trials())
        print(f"{path}: ok, {n} trials")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adpo-ray",
        description="Anchored Direct Preference Optimization experiments on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scenarios", help="print the table of noise scenarios")
    p.set_defaults(func=cmd_scenarios)

    p = sub.add_parser("validate", help="check experiment spec files; exit 2 on errors")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
