"""The ``eagle3-ref`` command.

``eagle3-ref info`` prints versions, the devices and which dtypes work on them. Later
subcommands (demo, bench, train, vectors, ...) come with their issues.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata
from pathlib import Path


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _dtype_support(device: str) -> dict[str, str]:
    """Try a tiny matmul and softmax per dtype: 'ok' or the error's first line."""
    import torch

    out = {}
    for name in ("float64", "float32", "bfloat16", "float16"):
        dtype = getattr(torch, name)
        try:
            x = torch.randn(4, 4, device=device).to(dtype)
            torch.softmax(x @ x, dim=-1).sum().item()
            out[name] = "ok"
        except Exception as err:  # noqa: BLE001 - we report whatever the backend says
            out[name] = f"no ({str(err).splitlines()[0][:60]})"
    return out


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    import eagle3_ref

    print(f"eagle3-ref    {eagle3_ref.__version__}")
    print(f"python        {platform.python_version()} ({sys.executable})")
    for dist in ("torch", "transformers", "safetensors", "tokenizers", "hypothesis"):
        print(f"{dist:<13} {_version(dist)}")
    devices = ["cpu"]
    print(f"cpu           {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}        {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
            devices.append(f"cuda:{i}")
    else:
        print("cuda          not available")
    for device in devices:
        support = _dtype_support(device)
        print(f"dtypes {device:<6} " + ", ".join(f"{k}: {v}" for k, v in support.items()))
    return 0


def _device_dtype(args):
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in the output of our commands

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise OptionError(f"--device must be cpu, cuda or cuda:N, got {device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {device}: no CUDA device is available here (torch {torch.__version__}); "
                          f"use --device cpu")
    return device, getattr(torch, args.dtype)


class OptionError(ValueError):
    """A command-line option that cannot be used; the message names it."""


def cmd_train(args: argparse.Namespace) -> int:
    from eagle3_ref.train import (TrainConfig, TrainingError, _check_out_dir, check_config_fits_target, prepare_data,
                                  train_head)

    try:  # every check before anything is loaded or written
        config = TrainConfig(
            out_dir=args.out, seq_len=args.seq_len, batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
            warmup_steps=args.warmup, ttt_steps=args.ttt_steps if args.ttt_steps is not None else (1 if args.head == "eagle2" else 7),
            draft_vocab_size=args.draft_vocab_size, head=args.head,
            aux_layer_ids=_layer_ids(args.aux_layer_ids),
            regenerate_prompt_tokens=args.regenerate_prompt_tokens, max_sequences=args.max_sequences, seed=args.seed,
            regenerate_temperature=args.regenerate_temperature,
            save_every=args.save_every, eval_every=args.eval_every, resume=args.resume, overwrite=args.overwrite,
            cache_dir=args.cache_dir,
        )
        if args.warmup > args.steps:  # the learning rate would never finish warming up
            default = "" if any(a.startswith("--warmup") for a in args.argv) else " (the default)"
            raise OptionError(f"--warmup {args.warmup}{default} exceeds --steps {args.steps}: the learning rate would "
                              f"still be warming up when training ends; pass a --warmup below --steps")
        if not (Path(args.target) / "config.json").is_file():
            raise TrainingError(f"--target {args.target}: not a Hugging Face model directory (no config.json)")
        texts = {option: _read_text(option, path) for option, path in (("--data", args.data),
                                                                         ("--eval-data", args.eval_data)) if path}
        _check_out_dir(config)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import torch

        torch.manual_seed(args.seed)
        device, dtype = _device_dtype(args)
        tokenizer = AutoTokenizer.from_pretrained(args.target)
        target = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype).to(device).eval()
        layer_ids = check_config_fits_target(config, target)
        data = prepare_data(target, texts["--data"], tokenizer, config, layer_ids, progress=not args.quiet)
        prompts = []
        if args.eval_data:
            ids = tokenizer(texts["--eval-data"], add_special_tokens=False)["input_ids"]
            prompts = [torch.tensor(ids[i:i + 32]) for i in range(0, min(len(ids) - 32, 32 * 4), 32)]
        train_head(target, data, config, prompts, progress=not args.quiet)
    except (TrainingError, OptionError) as err:
        return _fail(args, err)
    except KeyboardInterrupt:  # Ctrl-C: where the run stands, and how to go on, instead of a traceback
        print(f"\neagle3-ref train: interrupted. {_resume_hint(args)}", file=sys.stderr)
        return 130
    print(f"trained head written to {args.out}")
    return 0


def _read_text(option: str, path: str) -> str:
    """A text file an option names, read whole as UTF-8; refused by name if it is not one."""
    if Path(path).is_dir():
        raise OptionError(f"{option} {path} is a directory, not a file")
    if not Path(path).is_file():
        raise OptionError(f"{option} {path}: no such file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise OptionError(f"{option} {path}: not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x})") from None


def _resume_hint(args: argparse.Namespace) -> str:
    """What an interrupted run left in --out, and the command that continues it."""
    import shlex

    latest = Path(args.out) / "latest"
    if not latest.is_file():
        return f"No checkpoint was written yet ({args.out} has none): start again with --overwrite."
    words = [w for w in args.argv if w not in ("--overwrite", "--resume")] + ["--resume"]
    return (f"The last checkpoint is {Path(args.out) / latest.read_text().strip()}; continue with:\n"
            f"  eagle3-ref {shlex.join(words)}")


# The Python names (of TrainConfig, AblateConfig, train_target, the decoding functions) that a
# command spells differently; the rest map by their dest (seq_len -> --seq-len), read off the parser.
_ALIASES = {
    "train": {"max_steps": "--steps", "warmup_steps": "--warmup", "out_dir": "--out"},
    "bench": {"temperature": "--temperatures"},
    "demo": {"TreeConfig.top_k": "--tree-top-k", "TreeConfig.num_nodes": "--tree-nodes",
             "TreeConfig.max_depth": "--tree-depth"},
    "ablate": {"out_dir": "--out"},
    "toy train-target": {"num_layers": "--layers", "tokenizer_dir": "--tokenizer"},
}


def _as_flag(message: str, flags: dict[str, str]) -> str:
    """A message that opens with a field name opens with the command-line option instead."""
    field = message.split(" ", 1)[0]
    return message.replace(field, flags[field], 1) if field in flags else message


def _fail(args: argparse.Namespace, err: Exception | str) -> int:
    """Print a refusal that names the option, as argparse does its own, and return 2."""
    print(f"eagle3-ref {args.command_name}: error: {_as_flag(str(err), args.flags)}", file=sys.stderr)
    return 2


def _label_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give every command its name and its Python-name -> option table (for :func:`_fail`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _label_commands(sub, path + (name,))
    if path and parser.get_default("func") is not None:
        name = " ".join(path)
        flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest != "help"}
        parser.set_defaults(command_name=name, flags=flags | _ALIASES.get(name, {}))


def _layer_ids(text: str | None) -> tuple[int, ...] | None:
    from eagle3_ref.train import TrainingError

    try:
        return tuple(_ints(text, "--aux-layer-ids")) if text else None
    except ValueError as err:
        raise TrainingError(str(err)) from None


def _tree_config(args):
    from eagle3_ref.tree import TreeConfig

    if args.chain is not None:
        if args.chain < 1:
            raise OptionError(f"--chain must be at least 1 (draft tokens per cycle), got {args.chain}")
        return TreeConfig.chain(args.chain)
    try:
        return TreeConfig(num_nodes=args.tree_nodes, max_depth=args.tree_depth, top_k=args.tree_top_k)
    except ValueError as err:
        flags = {"TreeConfig.num_nodes": "--tree-nodes", "TreeConfig.max_depth": "--tree-depth",
                 "TreeConfig.top_k": "--tree-top-k"}
        raise OptionError(_as_flag(str(err), flags)) from None


def _add_pair_options(p: argparse.ArgumentParser) -> None:
    """Options demo and bench share: the pair, the length, the seed, device and dtype."""
    p.add_argument("--target", help="Hugging Face causal LM directory with its tokenizer (default: the toy target)")
    p.add_argument("--draft", help="EAGLE-3 head directory, official format (default: the toy head)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])


def _check_max_new_tokens(n: int) -> None:
    from eagle3_ref.demo import DemoError

    if n < 2:  # the prefill makes the first token: tau (tokens per verification cycle) needs a second
        raise DemoError(f"--max-new-tokens must be at least 2, got {n}: the prompt's forward makes the first new "
                        "token, and tau counts the tokens of the verification cycles after it")


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    import torch

    from eagle3_ref.demo import DemoError, default_prompt, encode_prompt, load_pair, report, run_demo

    from eagle3_ref._checks import check_sampling

    try:
        tree = _tree_config(args)
        _check_max_new_tokens(args.max_new_tokens)
        check_sampling(args.temperature, args.top_p, args.top_k)
        if args.tree == "auto" and args.chain is not None:
            raise DemoError("give --tree auto or --chain, not both")
        if args.runs < 1:
            raise DemoError(f"--runs must be at least 1, got {args.runs}")
        if args.prompt is not None and args.prompt_file is not None:
            raise DemoError("give --prompt or --prompt-file, not both")
        if args.prompt_file is not None:
            prompt = _read_text("--prompt-file", args.prompt_file)
            if not prompt.strip():
                raise DemoError(f"--prompt-file {args.prompt_file} holds no text")
        else:
            prompt = args.prompt if args.prompt is not None else default_prompt()
        device, dtype = _device_dtype(args)
        target, tokenizer, head = load_pair(args.target, args.draft, device, dtype)
        input_ids = encode_prompt(tokenizer, prompt, args.chat, device)
        limit = getattr(target.config.get_text_config(), "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] >= limit:  # named by where the prompt came from
            source = f"--prompt-file {args.prompt_file}" if args.prompt_file is not None else "--prompt"
            raise DemoError(f"{source}: the prompt is {input_ids.shape[1]} tokens, the target has {limit} positions")
        if args.tree == "auto":
            from eagle3_ref.bench import auto_trees

            start = time.perf_counter()
            trees, _ = auto_trees(target, head, _calibration_prompts(tokenizer, args, device)[:4],
                                  (args.temperature,), max_new_tokens=48)
            tree = trees[args.temperature]
            print(f"cost-aware tree: costs measured and calibrated at temperature {args.temperature:g} in "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
        with torch.no_grad():  # not set_grad_enabled(False): main() may run inside a larger program
            result = run_demo(target, tokenizer, head, input_ids, max_new_tokens=args.max_new_tokens, tree=tree,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                              plain=not args.no_plain, runs=args.runs)
    except (DemoError, ValueError) as err:
        return _fail(args, err)
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and "NO_COLOR" not in os.environ)
    print(f"eagle3-ref demo: {args.target or 'the toy target'} + {args.draft or 'its EAGLE-3 head'}, "
          f"{device} {args.dtype}, {input_ids.shape[1]}-token prompt")
    print("-" * 72)
    return report(result, tokenizer, tokenizer.decode(input_ids[0]), tree, args.temperature, dtype, colour)


def _read_prompts(path: str) -> list[str]:
    """A prompts file: JSON lines with a "prompt" field, or plain text, one prompt per line."""
    import json

    from eagle3_ref.demo import DemoError

    lines = [line for line in _read_text("--prompts-file", path).splitlines() if line.strip()]
    if not lines:
        raise DemoError(f"--prompts-file {path}: no prompts in it")
    if not lines[0].lstrip().startswith("{"):
        return lines
    try:
        return [json.loads(line)["prompt"] for line in lines]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DemoError(f"--prompts-file {path}: every JSON line needs a \"prompt\" field") from None


def _calibration_prompts(tokenizer, args, device, count: int = 8) -> list:
    """The last ``count`` held-out prompts of the toy world (the bench measures the first
    ones), in the target's tokenizer: what the cost-aware tree calibrates on."""
    from eagle3_ref.demo import encode_prompt
    from eagle3_ref.toy import held_out_prompts

    prompts = [ids[None].to(device) for ids in held_out_prompts(tokenizer, count=40)[-count:]]
    if args.target:
        prompts = [encode_prompt(tokenizer, tokenizer.decode(ids[0]), False, device) for ids in prompts]
    return prompts


def _batch_sizes(text: str) -> tuple[int, ...]:
    from eagle3_ref.demo import DemoError

    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise DemoError(f"--batch-sizes must be comma-separated ints, got {text!r}") from None
    if any(b < 1 for b in sizes):
        raise DemoError(f"--batch-sizes must each be >= 1, got {text!r}")
    return sizes


def _bench_batches(args, sizes, bench, target, head, prompts, tokenizer, device, log) -> int:
    """``bench --batch-sizes``: greedy throughput against batch size (docs/bench.md)."""
    import json
    from pathlib import Path

    import torch

    from eagle3_ref.demo import DemoError

    if any(len(prompts) % b for b in sizes):
        raise DemoError(f"--batch-sizes {args.batch_sizes}: each must divide --prompts ({len(prompts)}), "
                        "so every batch size decodes the same prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    with torch.no_grad():
        results = bench.run_batch_bench(target, head, prompts, batch_sizes=sizes, runs=args.runs,
                                        max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=pad, progress=log)
    machine = bench.machine_description(device)
    text = "\n".join([f"Measured on {machine}, {args.dtype}; {len(prompts)} prompts x {args.max_new_tokens} new "
                      f"tokens, greedy, in batches of each size; total tokens/s (mean of {args.runs} runs after a "
                      "warm-up).", "", bench.batch_table(results), "", bench.crossover_line(results)])
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"machine": machine, "device": str(device), "dtype": args.dtype, "prompts": len(prompts),
                "max_new_tokens": args.max_new_tokens, "runs": args.runs, "batch_sizes": list(sizes)}
        rows = [{**r.__dict__, "mean_tokens_per_second": r.mean_tps} for r in results]
        (out / "bench_batch.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        (out / "bench_batch.md").write_text(text + "\n")
        plotted = bench.plot_batches(results, out / "bench_batch.png")
        print(f"\nwritten: {out / 'bench_batch.md'}, {out / 'bench_batch.json'}"
              + (f", {out / 'bench_batch.png'}" if plotted else " (no plot: pip install matplotlib)"))
    return 0


CALIBRATION_PROMPTS, TEMPERATURES = 8, "0,1"  # bench's defaults, which --shape does not use


def _bench_shape(args: argparse.Namespace) -> int:
    """``bench --shape``: the cost side of a target shape with random weights (eagle3_ref.shapes)."""
    import json
    from pathlib import Path

    from eagle3_ref import bench, shapes
    from eagle3_ref._checks import check_output_dir

    given = {"--target": args.target, "--draft": args.draft, "--prompts-file": args.prompts_file,
             "--assistant": args.assistant, "--batch-sizes": args.batch_sizes, "--chat": args.chat,
             "--no-profile": args.no_profile, "--no-auto": args.no_auto,
             "--calibration-prompts": args.calibration_prompts != CALIBRATION_PROMPTS}
    for flag, value in given.items():
        if value:
            raise OptionError(f"{flag} does not apply with --shape: it times a random-weight target and head")
    if args.temperatures != TEMPERATURES:
        raise OptionError("--temperatures does not apply with --shape: it times greedy cycles (a fixed tree drafts and "
                          "verifies as much at any temperature)")
    if args.max_new_tokens < shapes.MIN_NEW_TOKENS:
        raise OptionError(f"--max-new-tokens must be at least {shapes.MIN_NEW_TOKENS} with --shape (cycles are timed "
                          f"between 2 new tokens and it), got {args.max_new_tokens}")
    if args.out:
        check_output_dir("--out", args.out)
    config = shapes.shape_config(args.shape, args.shape_layers)
    device, dtype = _device_dtype(args)
    try:
        target, head = shapes.random_pair(config, device=device, dtype=dtype, seed=args.seed,
                                          draft_vocab_size=shapes.DRAFT_VOCAB.get(args.shape))
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds here
        raise OptionError(f"--shape {args.shape}: cannot build a causal LM and an EAGLE-3 head of this shape "
                          f"({str(err).strip().splitlines()[0]})") from None
    trees = {m.name: m.tree for m in bench.default_methods(with_sps=False, with_auto=False) if m.kind == "eagle3"}
    log = (lambda line: print(line, file=sys.stderr)) if not args.quiet else None
    timing = shapes.time_shape(target, head, trees, prompts=args.prompts, new_tokens=args.max_new_tokens,
                               runs=args.runs, seed=args.seed, progress=log)
    text = shapes.shape_report(timing, args.shape)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "shape.md").write_text(text + "\n")
        (out / "shape.json").write_text(json.dumps({"shape": args.shape, **timing.to_json()}, indent=1))
        timing.costs.save(out / "costs.json")
        print(f"\nwritten: {out / 'shape.md'}, {out / 'shape.json'}, {out / 'costs.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from eagle3_ref import bench
    from eagle3_ref._checks import check_output_dir, check_sampling
    from eagle3_ref.demo import DemoError, encode_prompt, load_pair
    from eagle3_ref.toy import TOY_DIR, held_out_prompts

    try:
        if args.runs < 1:
            raise DemoError(f"--runs must be at least 1, got {args.runs}")
        if args.prompts < 1:
            raise DemoError(f"--prompts must be at least 1, got {args.prompts}")
        if not 1 <= args.calibration_prompts <= 16:
            raise DemoError(f"--calibration-prompts must be in [1, 16] (the last held-out prompts), got "
                            f"{args.calibration_prompts}")
        _check_max_new_tokens(args.max_new_tokens)
        if args.shape is not None:
            return _bench_shape(args)
        if args.shape_layers is not None:
            raise DemoError("--shape-layers needs --shape")
        try:
            temperatures = tuple(float(t) for t in args.temperatures.split(","))
        except ValueError:
            raise DemoError(f"--temperatures must be comma-separated numbers, got {args.temperatures!r}") from None
        for t in temperatures:
            check_sampling(t, 1.0, 0)
        if len(set(temperatures)) != len(temperatures):  # the summary would match neither group
            raise DemoError(f"--temperatures names a temperature twice: {args.temperatures}")
        sizes = _batch_sizes(args.batch_sizes) if args.batch_sizes is not None else None
        if args.out:  # before the measurement, which takes minutes
            check_output_dir("--out", args.out)
        device, dtype = _device_dtype(args)
        target, tokenizer, head = load_pair(args.target, args.draft, device, dtype)
        assistant_dir = args.assistant or (TOY_DIR / "sps" if args.target is None else None)
        assistant = None
        if assistant_dir is not None:
            if not (Path(assistant_dir) / "config.json").is_file():
                raise DemoError(f"--assistant {assistant_dir}: not a Hugging Face model directory (no config.json)")
            from transformers import AutoModelForCausalLM

            try:
                assistant = AutoModelForCausalLM.from_pretrained(assistant_dir, dtype=dtype).to(device).eval()
            except Exception as err:  # noqa: BLE001 - transformers raises many kinds here
                raise DemoError(f"--assistant {assistant_dir}: cannot load it ({str(err).splitlines()[0]})") from None
            if assistant.config.vocab_size != target.config.vocab_size:
                raise DemoError(f"--assistant {assistant_dir}: vocabulary {assistant.config.vocab_size} differs from "
                                f"the target's {target.config.vocab_size} (assisted generation needs one tokenizer)")
        if args.prompts_file:
            texts = _read_prompts(args.prompts_file)[: args.prompts]
            prompts = [encode_prompt(tokenizer, t, args.chat, device) for t in texts]
        else:  # the toy world's held-out code, in the target's tokenizer
            prompts = [ids[None].to(device) for ids in held_out_prompts(tokenizer, count=args.prompts)]
            if len(prompts) < args.prompts:
                raise DemoError(f"--prompts {args.prompts}: the held-out modules hold {len(prompts)} prompts; ask for "
                                f"at most {len(prompts)}, or give --prompts-file")
            if args.target:  # another model: re-encode, so its tokenizer adds its special tokens (BOS)
                prompts = [encode_prompt(tokenizer, tokenizer.decode(ids[0]), False, device) for ids in prompts]
        log = (lambda line: print(line, file=sys.stderr)) if not args.quiet else None
        if sizes is not None:
            return _bench_batches(args, sizes, bench, target, head, prompts, tokenizer, device, log)
        trees = cost_model = None
        if not args.no_auto:  # calibrated on held-out prompts the bench does not measure
            trees, cost_model = bench.auto_trees(
                target, head, _calibration_prompts(tokenizer, args, device, args.calibration_prompts), temperatures,
                max_new_tokens=min(64, args.max_new_tokens), progress=log)
        methods = bench.default_methods(with_sps=assistant is not None, with_auto=trees is not None)
        with torch.no_grad():
            results = bench.run_bench(target, head, prompts, methods=methods, temperatures=temperatures,
                                      runs=args.runs, max_new_tokens=args.max_new_tokens,
                                      eos_token_id=tokenizer.eos_token_id, assistant=assistant, seed=args.seed,
                                      auto_trees=trees, progress=log)
            profile = costs = auto_profile = None
            if not args.no_profile:
                profile = bench.profile_cycles(target, head, prompts, max_new_tokens=args.max_new_tokens,
                                               eos_token_id=tokenizer.eos_token_id)
                greedy_auto = (trees or {}).get(0.0)
                if greedy_auto is not None and greedy_auto.drafts:  # how far cutting its bookkeeping could go
                    auto_profile = bench.profile_cycles(target, head, prompts, greedy_auto,
                                                        max_new_tokens=args.max_new_tokens,
                                                        eos_token_id=tokenizer.eos_token_id)
                costs = bench.forward_costs(target, head)
    except (DemoError, ValueError) as err:
        return _fail(args, err)
    baseline = methods[0].name
    machine = bench.machine_description(device)
    lines = [f"Measured on {machine}, {args.dtype}; {len(prompts)} prompts x {args.max_new_tokens} new tokens, "
             f"{args.runs} runs after a warm-up.", "", bench.markdown_table(results, baseline)]
    if profile:
        lines += ["", "Where a greedy cycle of the default tree (60/8/10) goes:", "", bench.profile_table(profile),
                  "", "What one forward costs (after a 128-token prefix):", "", bench.costs_table(costs)]
    if auto_profile:
        lines += ["", "Where a greedy cycle of the auto tree goes:", "", bench.profile_table(auto_profile)]
    lines += [""] + bench.summary_lines(results, baseline)
    if auto_profile:
        lines.append(bench.ceiling_line(results, baseline, auto_profile))
    if trees:
        lines += [""] + bench.bound_lines(trees)
    text = "\n".join(lines)
    print(text)
    if args.out:
        meta = {"machine": machine, "device": str(device), "dtype": args.dtype, "prompts": len(prompts),
                "max_new_tokens": args.max_new_tokens, "runs": args.runs, "temperatures": list(temperatures),
                "target": args.target or "toy", "draft": args.draft or "toy", "baseline": baseline,
                "methods": [{"name": m.name, "kind": m.kind, "tree": m.tree and m.tree.describe()} for m in methods]}
        if trees:
            meta["auto"] = {f"{t:g}": tree.describe() for t, tree in trees.items()}
        data = bench.to_json(results, profile, meta, costs, auto_profile)

        def write(out: Path) -> bool:
            out.mkdir(parents=True, exist_ok=True)
            (out / "bench.json").write_text(json.dumps(data, indent=1))
            (out / "bench.md").write_text(text + "\n")
            if trees:  # what the auto rows decided from: reusable with TreeConfig.auto(CostModel.load, Calibration.load)
                cost_model.save(out / "costs.json")
                for t, tree in trees.items():
                    tree.calibration.save(out / f"calibration_T{t:g}.json")
            return bench.plot(results, baseline, out / "bench.png")

        out = Path(args.out)
        try:
            plotted = write(out)
        except OSError as err:  # the folder was writable when the bench began: keep minutes of results
            import tempfile

            out = Path(tempfile.mkdtemp(prefix="eagle3-bench-"))
            plotted = write(out)
            print(f"eagle3-ref bench: error: --out {args.out} could not be written ({err.strerror}); the results are "
                  f"in {out}", file=sys.stderr)
            return 1
        print(f"\nwritten: {out / 'bench.md'}, {out / 'bench.json'}"
              + (f", {out / 'bench.png'}" if plotted else " (no plot: pip install matplotlib)"))
    return 0


def cmd_check_head(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from eagle3_ref.check_head import check_head_dir

    layers, target = args.target_layers, None
    if not Path(args.dir).is_dir():  # not a head's problem but the argument's: status 2, not 1
        return _fail(args, f"{args.dir}: " + ("is a file, not a head directory" if Path(args.dir).exists()
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
            return _fail(args, f"--target {args.target}: {problem}")
        layers = target.get("num_hidden_layers")
    if layers is not None and (not isinstance(layers, int) or layers < 1):
        return _fail(args, f"--target-layers must be positive, got {layers}")
    check = check_head_dir(args.dir, layers, target)
    print(check.report())
    return 0 if check.ok else 1


def cmd_vectors_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eagle3_ref._checks import check_output_dir
    from eagle3_ref.testing.vectors import export

    out = Path(args.dir)
    try:
        check_output_dir("dir", out)
    except ValueError as err:
        return _fail(args, err)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        return _fail(args, f"{out} is not empty (pass --overwrite)")
    manifest = export(out)
    pieces = sorted({c["piece"] for c in manifest["cases"]})
    print(f"wrote {len(manifest['cases'])} cases ({', '.join(pieces)}), schema version {manifest['schema_version']}, "
          f"to {out}; the schema: docs/vectors.md")
    return 0


def cmd_vectors_check(args: argparse.Namespace) -> int:
    from eagle3_ref.testing.adapter import load_adapter
    from eagle3_ref.testing.vectors import check

    try:
        impl = load_adapter(args.impl) if args.impl else None
    except ValueError as err:
        return _fail(args, f"--impl: {err}")
    try:
        results = check(args.dir, impl, only=args.only)
    except ValueError as err:
        return _fail(args, err)
    if not results:
        return _fail(args, f"--only {args.only!r}: no case has that name or is of that piece")
    for r in results:
        if r.skipped:
            print(f"SKIP  {r.piece:8s} {r.name}  ({r.skipped})")
            continue
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.piece:8s} {r.name}" + ("" if r.ok else f"\n      {r.error}"))
    failed, skipped = sum(not r.ok for r in results), sum(bool(r.skipped) for r in results)
    print(f"{len(results) - failed - skipped} of {len(results)} cases agree with the reference"
          + (f", {skipped} skipped" if skipped else "") + (f" ({args.impl})" if args.impl else ""))
    return 1 if failed else 0


def cmd_assignment_make(args: argparse.Namespace) -> int:
    from eagle3_ref.assignment import TASKS, make

    try:
        regions = make(args.out)
    except ValueError as err:
        return _fail(args, err)
    count = sum(len(t) for t in regions.values())
    print(f"wrote the student skeleton to {args.out}: {count} solution regions in {len(regions)} modules, "
          f"tasks {', '.join(TASKS)}.\nStudents: read its README.md; grade with `python grade.py` there.")
    return 0


def cmd_assignment_grade(args: argparse.Namespace) -> int:
    import time

    from eagle3_ref.assignment import TASKS, format_report, grade, grade_many, write_csv

    options = dict(profile=args.profile, test_timeout=args.test_timeout, jobs=args.jobs)
    try:
        if args.csv and not args.many:
            raise ValueError("--csv needs --many (a folder of submissions)")
        start = time.perf_counter()
        if args.many:
            grades = grade_many(args.dir, **options)
            for student, per_task in grades.items():
                print(f"== {student}\n{format_report(per_task)}\n")
            if args.csv:
                write_csv(grades, args.csv)
                print(f"wrote {args.csv}: {len(grades)} students, tasks {', '.join(TASKS)}")
            print(f"graded {len(grades)} submissions in {time.perf_counter() - start:.0f} s")
            return 0
        per_task = grade(args.dir, **options)
    except ValueError as err:
        return _fail(args, err)
    print(format_report(per_task))
    return 0 if all(g.passed == g.total and not g.problem for g in per_task.values()) else 1


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from eagle3_ref import gpu_check
    from eagle3_ref._checks import check_output_dir

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
        return _fail(args, err)
    print(Path(args.out, "gpu_check.md").read_text())
    print(f"written: {Path(args.out) / 'gpu_check.md'}, {Path(args.out) / 'gpu_check.json'}, and each step's folder")
    return code


def cmd_toy_train_target(args: argparse.Namespace) -> int:
    from eagle3_ref.toy import train_target

    try:
        train_target(args.out, num_layers=args.layers, tokenizer_dir=args.tokenizer, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                     seed=args.seed, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    except ValueError as err:
        return _fail(args, err)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    try:
        from eagle3_ref._checks import check_output_dir
        from eagle3_ref.ablate import AblateConfig

        config = AblateConfig(
            out_dir=args.out, variants=tuple(v.strip() for v in args.variants.split(",")),
            data_sizes=tuple(_ints(args.data_sizes, "--data-sizes")), steps=args.steps, batch_size=args.batch_size,
            seq_len=args.seq_len, lr=args.lr, eval_prompts=args.eval_prompts, eval_new_tokens=args.eval_new_tokens,
            seed=args.seed, save_every=args.save_every)
        check_output_dir("--out", args.out)
    except ValueError as err:
        return _fail(args, err)
    from eagle3_ref.ablate import run_ablation
    from eagle3_ref.toy import corpus_text, held_out_prompts, load_toy, split_modules, stdlib_files

    import torch

    torch.manual_seed(args.seed)
    target, tokenizer, _ = load_toy()
    train_files, _ = split_modules(stdlib_files())
    prompts = held_out_prompts(tokenizer, count=config.eval_prompts)
    if len(prompts) < config.eval_prompts:  # before anything is written
        return _fail(args, f"--eval-prompts {config.eval_prompts}: the held-out modules hold {len(prompts)} prompts; "
                           f"ask for at most {len(prompts)}")
    try:
        run_ablation(target, tokenizer, corpus_text(train_files), prompts, config, progress=not args.quiet)
    except ValueError as err:
        return _fail(args, err)
    print((Path(args.out) / "results.md").read_text())
    print(f"results, plots and every run in {args.out}")
    return 0


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated ints, got {text!r}") from None


def _add_tree_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tree-nodes", type=int, default=60, help="tree nodes including the root (EAGLE total_token)")
    p.add_argument("--tree-depth", type=int, default=8, help="deepest level, root = 0 (EAGLE depth + 1)")
    p.add_argument("--tree-top-k", type=int, default=10, help="branching and frontier size")
    p.add_argument("--chain", type=int, metavar="N", help="draft a chain of N tokens instead of a tree (top_k = 1)")
    p.add_argument("--tree", choices=["auto"], help="auto: the cost-aware tree, its depth and size chosen every "
                                                    "cycle from this machine's measured costs and the draft's "
                                                    "calibrated scores (15-25 s in all on an idle 2-core CPU; "
                                                    "minutes on a loaded one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eagle3-ref",
        description="Reference implementation of EAGLE-3 speculative decoding (arXiv 2503.01840).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version('eagle3-ref')}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, devices and dtype support")
    info.set_defaults(func=cmd_info)

    train = sub.add_parser("train", help="train an EAGLE-3 head for a target (training-time test)",
                           description="Train an EAGLE-3 draft head with training-time test. Multi-GPU: see docs/training.md.")
    train.add_argument("--target", required=True, help="Hugging Face causal LM directory (with its tokenizer)")
    train.add_argument("--data", required=True, help="training text file")
    train.add_argument("--out", required=True, help="output directory (the head, in the official format)")
    train.add_argument("--eval-data", help="held-out text: prompts for the periodic tau evaluation")
    train.add_argument("--steps", type=int, default=1000)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--seq-len", type=int, default=256)
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--warmup", type=int, default=50)
    train.add_argument("--ttt-steps", type=int, help="training-time test steps K (default 7; 1 = no TTT)")
    train.add_argument("--head", choices=["eagle3", "eagle2"], default="eagle3",
                       help="eagle2: the EAGLE-2-style baseline (top-layer feature, feature regression + token "
                            "loss, no TTT; the ablation's, see eagle3-ref ablate)")
    train.add_argument("--draft-vocab-size", type=int, help="default: the target's vocabulary")
    train.add_argument("--aux-layer-ids", help="tapped layers as hidden_states indices, e.g. 2,16,29 (default EAGLE-3's)")
    train.add_argument("--regenerate-prompt-tokens", type=int, default=0,
                       help="self-distillation: the target rewrites each sequence after this many tokens")
    train.add_argument("--regenerate-temperature", type=float, default=0.0,
                       help="with --regenerate-prompt-tokens: the target samples its rewrite at this temperature "
                            "(default 0: greedy), so the head sees the text it will draft for when sampling")
    train.add_argument("--max-sequences", type=int,
                       help="train on a seeded sample of this many corpus sequences (default: all)")
    train.add_argument("--cache-dir", help="cache the target's features and logits here (safetensors shards)")
    train.add_argument("--save-every", type=int, default=100)
    train.add_argument("--eval-every", type=int, default=0)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    train.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                       help="dtype of the target; the head trains in float32 (bf16 autocast on CUDA)")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from OUT/latest")
    group.add_argument("--overwrite", action="store_true", help="delete OUT and start over")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="decode a prompt speculatively, accepted tokens marked (the main command)",
                          description="EAGLE-3 speculative decoding of one prompt, shown: accepted draft tokens "
                                      "marked, tau, tokens/s against plain decoding, and whether the outputs are "
                                      "equal. With no arguments: the shipped toy pair on a held-out prompt.")
    _add_pair_options(demo)
    demo.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    demo.add_argument("--top-p", type=float, default=1.0)
    demo.add_argument("--top-k", type=int, default=0, help="0 = off")
    demo.add_argument("--prompt", help="prompt text (default: a held-out function from the toy world)")
    demo.add_argument("--prompt-file", help="read the prompt from this file")
    demo.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    _add_tree_options(demo)
    demo.add_argument("--no-plain", action="store_true", help="skip the plain decoding run (no speedup, no equality)")
    demo.add_argument("--runs", type=int, default=3, help="timed runs of each, after a warm-up: the median and "
                                                          "the range are shown (default 3)")
    demo.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                      help="mark accepted tokens with colour (auto: when printing to a terminal)")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="tau and speedup of EAGLE-3 against plain decoding and SpS",
                           description="Acceptance length and speedup as Spec-Bench defines them, on the toy world's "
                                       "held-out prompts by default: plain transformers generate, the project's plain "
                                       "loop, assisted generation with a small draft LM (SpS), EAGLE-3 chain, small "
                                       "tree and default tree, at each temperature. Plus a per-phase cycle profile.")
    _add_pair_options(bench)
    bench.add_argument("--assistant", help="draft LM for the SpS baseline (default: the toy's; none for --target)")
    bench.add_argument("--prompts", type=int, default=8, help="how many prompts (default 8)")
    bench.add_argument("--prompts-file", help="JSON lines with a \"prompt\" field, or one prompt per line")
    bench.add_argument("--chat", action="store_true", help="wrap --prompts-file prompts in the chat template")
    bench.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (default 3)")
    bench.add_argument("--temperatures", default=TEMPERATURES, help=f"comma-separated (default {TEMPERATURES})")
    bench.add_argument("--out", help="write bench.md, bench.json and bench.png here")
    bench.add_argument("--batch-sizes", help="e.g. 1,2,4,8: greedy total tokens/s of batched plain decoding and "
                                             "EAGLE-3 at each batch size instead (each must divide --prompts)")
    bench.add_argument("--no-profile", action="store_true", help="skip the per-phase cycle profile")
    bench.add_argument("--no-auto", action="store_true",
                       help="skip the cost-aware tree (its cost model and per-temperature calibration take ~1 min "
                            "on a CPU)")
    bench.add_argument("--calibration-prompts", type=int, default=CALIBRATION_PROMPTS,
                       help="held-out prompts the cost-aware tree calibrates on, taken from the end of the held-out "
                            f"list (default {CALIBRATION_PROMPTS}; with --prompts above 40 minus this, they overlap "
                            "the measured ones)")
    bench.add_argument("--shape", help="timing only: a target of this shape with random weights and its head "
                                       "(llama-3.1-8b, or a config.json): each fixed tree's cycle against a plain "
                                       "step, and the cost model; tau is a parameter, not measured")
    bench.add_argument("--shape-layers", type=int, help="with --shape: keep only the first N decoder layers")
    bench.add_argument("--quiet", action="store_true", help="no progress lines")
    bench.set_defaults(func=cmd_bench)

    ch = sub.add_parser("check-head", help="validate an EAGLE-3 head directory; which layers each engine would tap",
                        description="Report every problem of an EAGLE-3 head directory (config, keys, shapes, dtypes, "
                                    "draft vocabulary, layer ids) and where vLLM, SGLang, EAGLE and eagle3-ref would "
                                    "read its tapped layer ids from. Exit status 1 when there are errors.")
    ch.add_argument("dir", help="the head directory")
    group = ch.add_mutually_exclusive_group()
    group.add_argument("--target-layers", type=int, help="the target's number of decoder layers")
    group.add_argument("--target", help="the target's directory (only its config.json is read)")
    ch.set_defaults(func=cmd_check_head)

    vec = sub.add_parser("vectors", help="golden vectors for implementations outside Python: export, check")
    vec_sub = vec.add_subparsers(dest="vectors_command", metavar="VECTORS_COMMAND", required=True)
    ve = vec_sub.add_parser("export", help="write inputs and expected outputs of every core piece (safetensors + JSON)")
    ve.add_argument("dir")
    ve.add_argument("--overwrite", action="store_true", help="write into a non-empty directory")
    ve.set_defaults(func=cmd_vectors_export)
    vc = vec_sub.add_parser("check", help="run an implementation on exported vectors; report each case")
    vc.add_argument("dir")
    vc.add_argument("--impl", metavar="package.module[:NAME]", help="the adapter to check (default: the reference)")
    vc.add_argument("--only", metavar="NAME", help="one case, or one piece (fusion, head, vocab, ttt, tree, verify, generate)")
    vc.set_defaults(func=cmd_vectors_check)

    asg = sub.add_parser("assignment", help="course assignments: a student skeleton, graded by the conformance suite")
    asg_sub = asg.add_subparsers(dest="assignment_command", metavar="ASSIGNMENT_COMMAND", required=True)
    am = asg_sub.add_parser("make", help="write a student skeleton: solution regions replaced by NotImplementedError")
    am.add_argument("out")
    am.set_defaults(func=cmd_assignment_make)
    ag = asg_sub.add_parser("grade", help="score a submission per task (fusion, head, ttt, tree, verify, generate) "
                                          "with the installed eagle3-ref's own tests")
    ag.add_argument("dir", nargs="?", default=".", help="a submission: a folder, a git clone or a .zip "
                                                         "(with --many: a folder of them)")
    ag.add_argument("--many", action="store_true", help="DIR holds one submission per sub-folder or .zip")
    ag.add_argument("--csv", metavar="OUT", help="with --many: write one row of per-task scores per student")
    ag.add_argument("--profile", default="quick",
                    help="hypothesis profile: smoke, student, quick (default), ci, dev, thorough")
    ag.add_argument("--test-timeout", type=float, default=120.0, metavar="SECONDS",
                    help="stop and fail one test after this long (an endless loop); default 120")
    ag.add_argument("--jobs", type=int, default=None, help="tasks graded at once (default: one per CPU core)")
    ag.set_defaults(func=cmd_assignment_grade)

    ab = sub.add_parser(
        "ablate", help="what each EAGLE-3 idea buys: train variants on the toy with one budget, measure tau and n-α",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train draft-head variants for the toy target on the same self-distilled data, seed, steps and "
                    "batch, then measure on held-out prompts: tau with the default tree and with a chain of 7, and "
                    "n-α (the acceptance rate of the n-th chain draft, n = 1..7). Writes results.md, results.json, "
                    "tau.png, n_alpha.png (and scaling.png for several --data-sizes) in OUT; every run is "
                    "checkpointed under OUT/runs/ and an interrupted ablation resumes where it stopped.\n\n"
                    "variants:\n"
                    "  eagle3    EAGLE-3: low/mid/high fusion + training-time test, K = 7\n"
                    "  no-ttt    the same fusion, no training-time test (K = 1)\n"
                    "  top-only  training-time test (K = 7) from the top-layer feature alone, no fusion\n"
                    "  eagle2    EAGLE-2-style head: top-layer feature, feature regression (smooth L1) +\n"
                    "            0.1 x token cross entropy, no training-time test\n"
                    "  eagle3-lm (a diagnostic, not run by default) eagle3 with its lm_head started from\n"
                    "            the target's LM head\n\n"
                    "the data-scaling experiment: --variants eagle3,eagle2 --data-sizes 300,600,1200,2400")
    ab.add_argument("--out", required=True, help="output directory (resumes what is there)")
    ab.add_argument("--variants", default="eagle3,no-ttt,top-only,eagle2", help="comma-separated (default: all four)")
    ab.add_argument("--data-sizes", default="2400",
                    help="training sequences, comma-separated; nested subsets of one sample (default 2400)")
    ab.add_argument("--steps", type=int, default=400, help="training steps of every run (default 400)")
    ab.add_argument("--batch-size", type=int, default=8)
    ab.add_argument("--seq-len", type=int, default=256)
    ab.add_argument("--lr", type=float, default=1e-3)
    ab.add_argument("--eval-prompts", type=int, default=8, help="held-out prompts (default 8)")
    ab.add_argument("--eval-new-tokens", type=int, default=96, help="tokens generated per prompt (default 96)")
    ab.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (default 50)")
    ab.add_argument("--seed", type=int, default=0)
    ab.add_argument("--quiet", action="store_true", help="no progress bars")
    ab.set_defaults(func=cmd_ablate)

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
    gc.set_defaults(func=cmd_gpu_check)

    toy = sub.add_parser("toy", help="the toy world: a small target trained on the Python standard library")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="TOY_COMMAND", required=True)
    tt = toy_sub.add_parser("train-target", help="train the toy target from scratch (CPU: about an hour; resumable)")
    tt.add_argument("--out", required=True)
    tt.add_argument("--layers", type=int, default=16,
                    help="decoder layers (16: the toy target; 2: the small draft LM of the SpS baseline)")
    tt.add_argument("--tokenizer", help="reuse this directory's tokenizer (a draft LM must share its target's)")
    tt.add_argument("--steps", type=int, default=1600)
    tt.add_argument("--batch-size", type=int, default=16)
    tt.add_argument("--seq-len", type=int, default=256)
    tt.add_argument("--lr", type=float, default=2e-3)
    tt.add_argument("--seed", type=int, default=0)
    group = tt.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true")
    group.add_argument("--overwrite", action="store_true")
    tt.add_argument("--quiet", action="store_true")
    tt.set_defaults(func=cmd_toy_train_target)
    _label_commands(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])  # as typed, for the hints that repeat it
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
