"""Every command-line option refuses a malformed value by name, before any work, and writes nothing.

The CLI counterpart of ``test_validation.py``. For every subcommand and every option that takes a
value, a hypothesis property draws one malformed value (a count of 0 or -3, a word where a number
is due, NaN, a path that does not exist, an existing file where a directory is written, a list
with a bad member...) and asserts: exit status 2, a message that names the option, no traceback,
and no output directory left behind. A completeness test makes sure a new option cannot be added
without joining the table, so the property covers the whole CLI, not the options someone
remembered.
"""

import argparse
import json
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eagle3_ref.cli import build_parser, main
from eagle3_ref.testing.vectors import SCHEMA_VERSION
from eagle3_ref.toy import TOY_DIR

HEAD = str(TOY_DIR / "head")
MISSING = "/nonexistent/eagle3-ref-test"
FILE = "<an existing file>"  # replaced by a real file in the test's temporary directory
TEXT_FILES = ["<not UTF-8>", "<a directory>", "<an empty file>"]  # where a text file is read


def _unwritable() -> list[str]:
    """A folder no file can be made in, even by root (sysfs refuses it), as an output directory;
    none on a machine where that folder takes files."""
    import tempfile

    try:
        tempfile.TemporaryFile(dir="/sys/kernel").close()
    except OSError:
        return ["/sys/kernel/eagle3-ref-out"]
    return []


UNWRITABLE = _unwritable()  # every output directory of every command is refused there, before any work
COUNTS = ["0", "-3", "x", "2.5"]  # an option that counts something: at least 1
NON_NEGATIVE = ["-1", "x", "1.5"]

# Each command, with the arguments it needs to get past argparse and the malformed values for
# each of its options. An empty list says why the option has no malformed value.
COMMANDS: dict[str, tuple[list[str], dict[str, list[str]]]] = {
    "train": (["--target", str(TOY_DIR / "target"), "--data", "<data>", "--out", "<out>"], {
        "--target": [MISSING, FILE],
        "--data": [MISSING] + TEXT_FILES[:2],
        "--out": [FILE] + UNWRITABLE,
        "--eval-data": [MISSING] + TEXT_FILES[:2],
        "--steps": COUNTS,
        "--batch-size": COUNTS + ["100000000"],  # more memory than the machine has
        "--seq-len": COUNTS + ["100000"],  # past the toy target's positions
        "--lr": ["0", "-1", "nan", "inf", "fast"],
        "--warmup": NON_NEGATIVE + ["1001"],  # past the default --steps 1000
        "--ttt-steps": COUNTS + ["100000"],  # past --seq-len: a step with no token to read
        "--head": ["eagle4"],
        "--draft-vocab-size": ["0", "-1", "100000", "x"],
        "--aux-layer-ids": ["a,b", "1,2,99", "-1,2,3"],
        "--regenerate-prompt-tokens": NON_NEGATIVE + ["256"],  # not below --seq-len
        "--regenerate-temperature": ["-1", "nan", "inf", "warm", "0,x", "0,-1", "1,1", "0,1"],  # 0,1: nothing rewritten
        "--max-sequences": COUNTS,
        "--cache-dir": [FILE] + UNWRITABLE,
        "--data-cache": [FILE] + UNWRITABLE,
        "--eval-prompts": ["-1", "x", "1.5"],
        "--eval-max-new-tokens": COUNTS,
        "--eval-sequences": ["-1", "x", "4"],  # 4: without --eval-data, nothing to cut them from
        "--save-every": COUNTS,
        "--eval-every": NON_NEGATIVE,
        "--early-stopping": NON_NEGATIVE + ["3"],  # 3: without --eval-every and --eval-sequences, nothing to watch
        "--min-improvement": ["-0.1", "1", "nan", "x", "0.01"],  # 0.01: without --early-stopping, no effect
        "--seed": ["x", "1.5"],
        "--device": ["tpu", "cuda:x"],
        "--dtype": ["float8"],
    }),
    "demo": (["--runs", "1"], {
        "--target": [MISSING, FILE],
        "--draft": [MISSING, FILE, str(TOY_DIR / "target")],
        "--max-new-tokens": COUNTS + ["1"],
        "--seed": ["x"],
        "--device": ["tpu"],
        "--dtype": ["int8"],
        "--temperature": ["-0.5", "nan", "inf", "hot"],
        "--top-p": ["0", "1.5", "nan"],
        "--top-k": NON_NEGATIVE,
        "--prompt": ["", "x = 1\n" * 1200],  # empty; longer than the toy's 1024 positions
        "--prompt-file": [MISSING] + TEXT_FILES + ["<data>"],  # <data>: longer than the toy's 1024 positions
        "--tree-nodes": ["1", "0", "x"],
        "--tree-depth": COUNTS,
        "--tree-top-k": COUNTS + ["5000"],  # past the toy head's 2048-token draft vocabulary
        "--chain": COUNTS,
        "--tree": ["big", "AUTO"],
        "--runs": COUNTS,
        "--color": ["sometimes"],
    }),
    "bench": (["--runs", "1", "--prompts", "1"], {
        "--target": [MISSING, FILE],
        "--draft": [MISSING, FILE],
        "--max-new-tokens": COUNTS + ["1"],
        "--seed": ["x"],
        "--device": ["tpu"],
        "--dtype": ["int8"],
        "--assistant": [MISSING, FILE],
        "--prompts": COUNTS + ["100000"],
        "--prompts-file": [MISSING] + TEXT_FILES,
        "--runs": COUNTS,
        "--temperatures": ["0,hot", "-1", "nan", "", "0,1,0"],
        "--out": [FILE] + UNWRITABLE,
        "--batch-sizes": ["0", "1,x", "-2", ""],
        "--calibration-prompts": COUNTS + ["17"],
        "--shape": [MISSING, FILE, "llama-3.1-9b"],
        "--shape-layers": COUNTS,  # without --shape, or not a count
    }),
    "check-head": ([], {
        "dir": [MISSING, FILE],
        "--target-layers": COUNTS,
        "--target": [MISSING, FILE],
    }),
    "convert": (["<head>", "<out>", "--to", "official"], {
        "src": [MISSING, FILE],
        "dst": [FILE] + UNWRITABLE,
        "--to": ["hf", "SPECULATORS"],
        "--from": ["sglang", "MODELOPT"],
        "--verifier": ["", "meta-llama/Llama-3.1-8B-Instruct"],  # with --to official: nowhere to write it
    }),
    "vectors export": ([], {"dir": [FILE] + UNWRITABLE}),
    "vectors check": (["<vectors>"], {
        "dir": [MISSING, FILE],
        "--impl": ["no_such_module_here:Adapter", "eagle3_ref.testing.adapters:NoSuchAdapter"],
        "--only": ["nothing-of-that-name"],
    }),
    "assignment make": ([], {"out": [FILE] + UNWRITABLE}),
    "assignment grade": (["<skeleton>"], {
        "dir": [MISSING],
        "--csv": [MISSING + "/grades.csv"],
        "--profile": ["everything"],
        "--test-timeout": ["0", "-1", "nan", "x"],
        "--jobs": COUNTS,
    }),
    "ablate": (["--out", "<out>"], {
        "--out": [FILE] + UNWRITABLE,
        "--variants": ["eagle4", "eagle3,", "", "eagle3,eagle3"],
        "--data-sizes": ["0", "x", "-5", "", "300,300"],
        "--steps": COUNTS,
        "--batch-size": COUNTS,
        "--seq-len": COUNTS,
        "--lr": ["0", "-1", "nan", "inf"],
        "--eval-prompts": COUNTS + ["100000"],
        "--eval-new-tokens": COUNTS + ["1"],
        "--save-every": COUNTS,
        "--early-stopping": NON_NEGATIVE,
        "--min-improvement": ["-0.1", "1", "nan", "x", "0.01"],  # 0.01: without --early-stopping, no effect
        "--eval-every": COUNTS,
        "--held-out-sequences": COUNTS,
        "--seed": ["x"],
    }),
    "gpu-check": (["--dry", "--out", "<out>"], {
        "--out": [FILE] + UNWRITABLE,
        "--only": ["bench", "suite,", ""],
        "--suite-filter": ["", " "],
    }),
    "toy train-target": (["--out", "<out>"], {
        "--out": [FILE] + UNWRITABLE,
        "--layers": COUNTS,
        "--tokenizer": [MISSING, FILE],
        "--steps": COUNTS,
        "--batch-size": COUNTS,
        "--seq-len": COUNTS,
        "--lr": ["0", "-1", "nan", "inf"],
        "--seed": ["x"],
    }),
}
CASES = [(command, option) for command, (_, options) in COMMANDS.items() for option in options]
SECOND_POSITIONAL = {("convert", "dst"): 1}  # where a command takes two, the second's place in the base


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command, option) for every option of every subcommand that takes a value."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, path + (name,))
        elif path and action.nargs != 0 and action.dest != "help":
            yield " ".join(path), action.option_strings[-1] if action.option_strings else action.dest


def test_the_table_covers_every_option_of_every_command():
    options = set(_options(build_parser())) - {("info", "")}
    assert options == set(CASES), (f"options without malformed values: {sorted(options - set(CASES))}; "
                                   f"in the table but not in the CLI: {sorted(set(CASES) - options)}")
    assert all(COMMANDS[c][1][o] for c, o in CASES)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A file where a directory is due, training text, a vectors directory and a student skeleton
    (valid values for the arguments a case does not make malformed)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "file").write_text("not a directory\n")
    (root / "latin1.txt").write_bytes("def caf\xe9(): pass\n".encode("latin-1"))
    (root / "empty.txt").write_text("")
    (root / "data.txt").write_text("def f(x):\n    return x + 1\n" * 400)  # longer than one --seq-len
    (root / "vectors").mkdir()  # a valid vectors directory holding no case (exporting all takes 10-30 s)
    (root / "vectors" / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "models": {},
                                                                "cases": []}))
    assert main(["assignment", "make", str(root / "skeleton")]) == 0
    return root


class StartedWork(Exception):
    pass


@contextmanager
def refused_within(seconds: int):
    """A refusal comes before any model is loaded or trained: fail a command still running
    after ``seconds`` instead of letting it train (the first run of this test found such a case)."""
    def stop(signum, frame):
        raise StartedWork(f"still running after {seconds} s: the command started work instead of refusing")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("command, option", CASES, ids=[f"{c.replace(' ', '-')}:{o}" for c, o in CASES])
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_a_malformed_option_is_refused_by_name(command, option, data, places, capsys):
    base, options = COMMANDS[command]
    value = data.draw(st.sampled_from(options[option]), label=f"{command} {option}")
    out = places / f"out-{abs(hash((command, option, value)))}"
    subs = {FILE: str(places / "file"), "<data>": str(places / "data.txt"), "<out>": str(out),
            "<not UTF-8>": str(places / "latin1.txt"), "<a directory>": str(places / "vectors"),
            "<an empty file>": str(places / "empty.txt"),
            "<vectors>": str(places / "vectors"), "<skeleton>": str(places / "skeleton"),
            "<head>": str(TOY_DIR / "head")}
    value = subs.get(value, value)
    argv = [*command.split(), *[subs.get(a, a) for a in base]]
    if option.startswith("--"):
        if option in base:  # replace the default the base gave
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
    else:  # the positional argument, in place of the base's (if it has one)
        at = len(command.split()) + SECOND_POSITIONAL.get((command, option), 0)
        argv[at:at + (len(argv) > at and not argv[at].startswith("--"))] = [value]
    capsys.readouterr()
    try:
        with refused_within(20):
            rc = main(argv)
    except SystemExit as exit_:  # argparse's own refusal (a word for a number, an unknown choice)
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == 2, f"eagle3-ref {' '.join(argv)} -> rc {rc}\n{err}"
    assert "Traceback" not in err, err
    shown = option if option.startswith("--") else value
    assert shown in err, f"eagle3-ref {' '.join(argv)}: the message does not name {shown}:\n{err}"
    assert not Path(out).exists(), f"eagle3-ref {' '.join(argv)} wrote {out} before refusing"
