"""``eagle3-ref vectors``: golden vectors for implementations outside Python: export, check."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import fail


def add_parser(sub) -> None:
    vec = sub.add_parser("vectors", help="golden vectors for implementations outside Python: export, check")
    vec_sub = vec.add_subparsers(dest="vectors_command", metavar="VECTORS_COMMAND", required=True)
    ve = vec_sub.add_parser("export", help="write inputs and expected outputs of every core piece (safetensors + JSON)")
    ve.add_argument("dir")
    ve.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")
    ve.set_defaults(func=export, command_name="vectors export", aliases={})
    vc = vec_sub.add_parser("check", help="run an implementation on exported vectors; report each case")
    vc.add_argument("dir")
    vc.add_argument("--impl", metavar="package.module[:NAME]", help="the adapter to check (default: the reference)")
    vc.add_argument("--only", metavar="NAME", help="one case, or one piece (fusion, head, vocab, ttt, tree, verify, generate)")
    vc.set_defaults(func=check, command_name="vectors check", aliases={})


def export(args: argparse.Namespace) -> int:

    from .._checks import check_output_dir
    from ..testing.vectors import export

    out = Path(args.dir)
    try:
        check_output_dir("dir", out)
    except ValueError as err:
        return fail(args, err)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        return fail(args, f"{out} is not empty (pass --overwrite)")
    manifest = export(out)
    pieces = sorted({c["piece"] for c in manifest["cases"]})
    print(f"wrote {len(manifest['cases'])} cases ({', '.join(pieces)}), schema version {manifest['schema_version']}, "
          f"to {out}; the schema: docs/vectors.md")
    return 0


def check(args: argparse.Namespace) -> int:
    from ..testing.adapter import load_adapter
    from ..testing.vectors import check

    try:
        impl = load_adapter(args.impl) if args.impl else None
    except ValueError as err:
        return fail(args, f"--impl: {err}")
    try:
        results = check(args.dir, impl, only=args.only)
    except ValueError as err:
        return fail(args, err)
    if not results:
        return fail(args, f"--only {args.only!r}: no case has that name or is of that piece")
    for r in results:
        if r.skipped:
            print(f"SKIP  {r.piece:8s} {r.name}  ({r.skipped})")
            continue
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.piece:8s} {r.name}" + ("" if r.ok else f"\n      {r.error}"))
    failed, skipped = sum(not r.ok for r in results), sum(bool(r.skipped) for r in results)
    print(f"{len(results) - failed - skipped} of {len(results)} cases agree with the reference"
          + (f", {skipped} skipped" if skipped else "") + (f" ({args.impl})" if args.impl else ""))
    return 1 if failed else 0
