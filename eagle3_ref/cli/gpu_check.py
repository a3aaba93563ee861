"""``eagle3-ref gpu-check``: on a lent GPU, one bounded command: the CUDA half of the suite, the
toy bench, the 8B shape."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import OptionError, fail


def add_parser(sub) -> None:
    gc = sub.add_parser(
        "gpu-check", help="on a lent GPU, one bounded command: the CUDA half of the suite, the toy bench, the 8B shape",
        description="Run, each as a subprocess with its own time limit (about 8 minutes in all): the suite's gpu tests "
                    "(every test that takes the device parameter) on cuda only; eagle3-ref bench on the toy pair on "
                    "cuda; bench --shape llama-3.1-8b --dtype bfloat16. Writes OUT/gpu_check.md, OUT/gpu_check.json "
                    "and a folder per step. --dry runs the same steps on the CPU, small (a minute or two).")
    gc.add_argument("--out", required=True, help="output directory")
    gc.add_argument("--dry", action="store_true", help="the same steps on the CPU, small: proves the command works")
    gc.add_argument("--only", help="comma-separated steps to run (suite, toy_bench, shape; default all)")
    gc.add_argument("--suite-filter", metavar="EXPR", help="run the suite's gpu tests that match this pytest -k "
                    "expression (default: all)")
    gc.set_defaults(func=run, command_name="gpu-check", aliases={})


def run(args: argparse.Namespace) -> int:
    from .._checks import check_output_dir
    from ..tools import gpu_check

    try:
        only = tuple(name.strip() for name in args.only.split(",")) if args.only is not None else ()
        if args.only is not None and not all(only):
            raise OptionError(f"--only must be comma-separated step names ({', '.join(gpu_check.STEPS)}), "
                              f"got {args.only!r}")
        if args.suite_filter is not None and not args.suite_filter.strip():
            raise OptionError("--suite-filter must be a pytest -k expression, got an empty one")
        check_output_dir("--out", args.out)
        suite_args = ("-k", args.suite_filter) if args.suite_filter is not None else ()
        code = gpu_check.run_gpu_check(args.out, dry=args.dry, only=only, suite_args=suite_args)
    except ValueError as err:
        return fail(args, err)
    print(Path(args.out, "gpu_check.md").read_text())
    print(f"written: {Path(args.out) / 'gpu_check.md'}, {Path(args.out) / 'gpu_check.json'}, and each step's folder")
    return code
