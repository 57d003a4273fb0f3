"""``captionlab gradcheck``: check every layer's backward pass against finite differences."""

from __future__ import annotations

import argparse

from captionlab.bounds import SEED, add_number
from captionlab.cli import add_json_flag
from captionlab.errors import UserError
from captionlab.nn.gradcheck import check_layers


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gradcheck",
        help="check every layer's backward pass against finite differences",
        description=(
            "Run the finite-difference gradient check of every captionlab.nn layer on small "
            "random float64 inputs and print a table (layer, parameter, relative error, "
            "pass/fail). Exits with status 1 when any check fails."
        ),
    )
    add_number(
        parser, "--seed", bound=SEED, default=0, help="seed of the random inputs (default: 0)"
    )
    parser.add_argument(
        "--layer",
        action="append",
        default=None,
        metavar="NAME",
        help="check only this layer (e.g. lstm, gru_step); may be repeated (default: all)",
    )
    add_json_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    results = check_layers(seed=args.seed)
    if args.layer:
        known = sorted({r.layer for r in results})
        unknown = [name for name in args.layer if name not in known]
        if unknown:
            raise UserError(f"--layer must be one of {', '.join(known)}; got {', '.join(unknown)}")
        results = [r for r in results if r.layer in args.layer]
    failed = [r for r in results if not r.passed]
    if not args.json:
        lw = max([5, *(len(r.layer) for r in results)])
        pw = max([9, *(len(r.parameter) for r in results)])
        print(f"{'layer':<{lw}} {'parameter':<{pw}} {'rel. error':>10} {'tolerance':>9}  result")
        for r in results:
            verdict = "pass" if r.passed else "FAIL"
            print(
                f"{r.layer:<{lw}} {r.parameter:<{pw}} {r.rel_error:>10.2e} {r.tolerance:>9.0e}  "
                f"{verdict}"
            )
        print(f"{len(results) - len(failed)} of {len(results)} checks passed")
    return {
        "exit_status": 1 if failed else 0,
        "seed": args.seed,
        "checked": len(results),
        "failed": len(failed),
        "results": [
            {
                "layer": r.layer,
                "parameter": r.parameter,
                "rel_error": r.rel_error,
                "tolerance": r.tolerance,
                "passed": r.passed,
            }
            for r in results
        ],
    }
