"""``eagle3-ref check-head``: validate an EAGLE-3 head directory; which layers each engine would tap."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import fail


def add_parser(sub) -> None:
    ch = sub.add_parser("check-head", help="validate an EAGLE-3 head directory; which layers each engine would tap",
                        description="Report every problem of an EAGLE-3 head directory (config, keys, shapes, dtypes, "
                                    "draft vocabulary, layer ids) and where vLLM, SGLang, EAGLE and eagle3-ref would "
                                    "read its tapped layer ids from; a speculators, SpecForge or ModelOpt head is read "
                                    "as eagle3-ref convert reads it. Exit status 1 when there are errors.")
    ch.add_argument("dir", help="the head directory")
    group = ch.add_mutually_exclusive_group()
    group.add_argument("--target-layers", type=int, help="the target's number of decoder layers")
    group.add_argument("--target", help="the target's directory: its config.json is checked against the head's and, "
                                        "when it holds weights and the head has no error, a short acceptance "
                                        "measurement says whether the head drafts what the target writes")
    ch.set_defaults(func=run, command_name="check-head", aliases={})


def run(args: argparse.Namespace) -> int:
    import json

    from ..tools.check_head import check_head_dir

    layers, target = args.target_layers, None
    if not Path(args.dir).is_dir():  # not a head's problem but the argument's: status 2, not 1
        return fail(args, f"{args.dir}: " + ("is a file, not a head directory" if Path(args.dir).exists()
                                              else "no such directory"))
    if args.target is not None:
        config_file = Path(args.target) / "config.json"
        problem = "is a file, not a model directory" if Path(args.target).is_file() else \
            "no config.json" if not config_file.is_file() else None
        if problem is None:
            try:
                target = json.loads(config_file.read_text())
                target = target.get("text_config") or target
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
                problem = f"its config.json is not a JSON object ({err})"
        if problem is not None:
            return fail(args, f"--target {args.target}: {problem}")
        layers = target.get("num_hidden_layers")
    if layers is not None and (not isinstance(layers, int) or layers < 1):
        return fail(args, f"--target-layers must be positive, got {layers}")
    weights = args.target is not None and any((Path(args.target) / name).is_file() for name in
                                              ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
    check = check_head_dir(args.dir, layers, target, target_dir=args.target if weights else None)
    print(check.report())
    return 0 if check.ok else 1
