"""``eagle3-ref convert``: move a head between checkpoint formats (official, speculators, SpecForge, ModelOpt), losslessly."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import fail

FORMATS = ("official", "speculators", "specforge", "modelopt")  # eagle3_ref.tools.convert.FORMATS (tested equal)


def add_parser(sub) -> None:
    cv = sub.add_parser("convert", help="move a head between checkpoint formats (official, speculators, specforge, "
                                        "modelopt), losslessly",
                        description="Read the head in SRC (its format detected from its config.json) and write it to "
                                    "DST in the format --to names. Every field reaches DST, or the conversion is "
                                    "refused naming it; converting back gives SRC's files exactly.")
    cv.add_argument("src", help="the head directory to read")
    cv.add_argument("dst", help="the directory to write (new, or empty, or --overwrite)")
    cv.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    cv.add_argument("--from", dest="source", choices=FORMATS,
                    help="the format SRC is in (default: detected from its config.json and weight names)")
    cv.add_argument("--verifier", help="the target: --to speculators, its directory or hub name (speculators' loader "
                                       "reads the verifier's config from it); --to specforge, its directory (the "
                                       "token embedding SpecForge's layout ships); --to modelopt, its directory when "
                                       "the head declares no tapped layers (EAGLE-3's default for its depth)")
    cv.add_argument("--overwrite", action="store_true", help="replace what DST holds")
    cv.set_defaults(func=run, command_name="convert", aliases={})


def run(args: argparse.Namespace) -> int:
    from .._checks import check_output_dir
    from ..tools.convert import convert, detect_format

    src = Path(args.src)
    if not src.is_dir():
        return fail(args, f"{args.src}: " + ("is a file, not a head directory" if src.exists() else "no such directory"))
    if args.verifier is not None and (args.to == "official" or not args.verifier.strip()):
        return fail(args, "--verifier " + ("is empty" if args.to != "official" else
                                           "is not needed to write the official format (it is read for --to "
                                           "speculators, specforge and modelopt)"))
    dst = Path(args.dst)
    try:
        check_output_dir("destination", dst)
    except ValueError as err:
        return fail(args, err)
    if dst.is_dir() and any(dst.iterdir()) and not args.overwrite:
        return fail(args, f"destination {dst} exists and is not empty (--overwrite replaces it)")
    try:
        source = args.source or detect_format(src)
        out = convert(src, dst, args.to, verifier=args.verifier, overwrite=args.overwrite, source=source)
    except ValueError as err:
        return fail(args, f"{args.src}: {err}")
    print(f"converted {source} -> {args.to}: {out}")
    return 0
