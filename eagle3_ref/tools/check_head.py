"""``eagle3-ref check-head DIR``: is this directory an EAGLE-3 head, and who can load it?

Loading (:func:`eagle3_ref.checkpoint.load_draft_head`) stops at the first problem; this
check reports *all* of them, then says where each engine would read the tapped layer ids
from and which ids that gives. That is the silent failure of a converted head: a head
trained on layers ``(1, 15, 28)`` but loaded by an engine that reads its ids from elsewhere
(or falls back to its default) drafts from the wrong layers and only shows a low tau.

Checked: ``config.json`` (required fields, plain RoPE), the weight file (safetensors or
``pytorch_model.bin``), the key set against the official one, every shape against the
config, dtypes (floating weights, integer ``d2t``, bool ``t2d``), the draft vocabulary
(``d2t`` in range, ``t2d`` count and agreement with ``d2t``), finite weights of one dtype,
weights moved off their initialisation (:func:`looks_initialised`),
and the layer ids declared in each convention (agreeing with each other; in range, with
``--target-layers N``). With ``--target DIR``, also the head's vocabulary and width against
the target's: everything ``eagle3-ref demo`` relies on later.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import (
    CONFIG,
    SAFETENSORS,
    TORCH_BIN,
    config_from_dict,
    declared_layer_ids,
    expected_shapes,
    read_weights,
)
from ..fusion import default_aux_layer_ids, validate_aux_layer_ids
from ..vocab import validate_vocab_mapping

__all__ = ["HeadCheck", "check_head_dir", "declared_layer_ids", "looks_initialised", "measure_acceptance"]


@dataclass
class HeadCheck:
    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    engines: dict[str, str] = field(default_factory=dict)  # engine -> where its layer ids come from, and which

    @property
    def ok(self) -> bool:
        return not self.errors

    def report(self) -> str:
        lines = [f"EAGLE-3 head check: {self.path}"]
        lines += [f"  {fact}" for fact in self.facts]
        lines += [f"  ERROR   {e}" for e in self.errors]
        lines += [f"  WARNING {w}" for w in self.warnings]
        if self.engines:
            lines.append("  tapped layers, as each loader would read them (hidden_states indices):")
            lines += [f"    {engine:<9} {how}" for engine, how in self.engines.items()]
        lines.append("  result: " + ("OK" if self.ok else f"{len(self.errors)} error(s)"))
        return "\n".join(lines)


def _some(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_weights(check: HeadCheck, config, state: dict) -> None:
    shapes = expected_shapes(config)
    identity = config.draft_vocab_size == config.vocab_size and "d2t" not in state and "t2d" not in state
    if identity:
        check.facts.append("no d2t/t2d: the draft vocabulary is the whole target vocabulary (identity mapping)")
        shapes = {k: v for k, v in shapes.items() if k not in ("d2t", "t2d")}
    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    if any(k.startswith("model.layers.") for k in unexpected):
        check.errors.append("this looks like a whole model (model.layers.*), not an EAGLE-3 head")
    if missing:
        check.errors.append(f"missing key(s): {_some(missing)}")
    if unexpected == ["embed_tokens.weight"]:
        check.warnings.append("extra key embed_tokens.weight: the official format has no embedding (the head uses "
                              "the target's); load with ignore_keys=('embed_tokens.weight',)")
    elif unexpected:
        check.errors.append(f"unexpected key(s): {_some(unexpected)}")
    for k, shape in shapes.items():
        if k not in state:
            continue
        t = state[k]
        if tuple(t.shape) != shape:
            check.errors.append(f"{k} has shape {list(t.shape)}, the config implies {list(shape)}")
        elif k == "d2t":
            if t.dtype not in (torch.int64, torch.int32):
                check.errors.append(f"d2t must be an integer tensor, got {t.dtype}")
            elif t.dtype == torch.int32:
                check.warnings.append("d2t is int32; the official format uses int64")
        elif k == "t2d":
            if t.dtype != torch.bool:
                check.errors.append(f"t2d must be bool, got {t.dtype}")
        elif not t.is_floating_point():
            check.errors.append(f"{k} must be floating point, got {t.dtype}")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for k, t in state.items() if t.is_floating_point()})
    check.facts.append(f"weights: {len(state)} tensors, dtype {'/'.join(dtypes) or 'none'}")
    d2t = state.get("d2t")
    if not identity and d2t is not None and tuple(d2t.shape) == shapes.get("d2t") and \
            config.draft_vocab_size < config.vocab_size and not bool(d2t.any()):
        check.warnings.append(f"d2t is all zeros: the draft vocabulary is target ids 0..{config.draft_vocab_size - 1}, "
                              "which is what the buffer says before any vocabulary is set (ModelOpt, SpecForge and "
                              "this reference register it so); a vocabulary built from token counts almost never is")
    if not identity and "d2t" in state and "t2d" in state and not check.errors:
        try:
            validate_vocab_mapping(state["d2t"], state["t2d"], config.vocab_size, config.draft_vocab_size)
        except ValueError as err:
            check.errors.append(str(err))


def _check_layer_ids(check: HeadCheck, config, raw: dict, target_layers: int | None) -> None:
    declared = declared_layer_ids(raw)
    for place, ids in declared.items():
        check.facts.append(f"layer ids declared ({place}): {list(ids)} as hidden_states indices")
    if len(set(declared.values())) > 1:
        check.errors.append(f"the declared layer ids disagree: {declared} (all as hidden_states indices)")
    if len(declared) == 0 and config.num_aux_layers != 3:
        check.errors.append(f"the head fuses {config.num_aux_layers} layers but declares no layer ids")
    default = None
    if target_layers is not None:
        try:
            default = default_aux_layer_ids(target_layers)
        except ValueError:
            pass
        for place, ids in declared.items():
            try:
                validate_aux_layer_ids(ids, target_layers)
            except ValueError as err:
                check.errors.append(f"layer ids ({place}) do not fit a {target_layers}-layer target: {err}")
    default_text = f"the default {list(default)}" if default else "the default (2, N//2, N-3)"
    trained = next(iter(declared.values()), None)
    where = {"eagle3_ref": "eagle3_ref.aux_layer_ids", "vllm": "top-level eagle_aux_hidden_state_layer_ids",
             "sglang": "eagle_config.eagle_aux_hidden_state_layer_ids"}

    def reads(*places: str) -> str:  # the first declared place wins, else the default
        for place in places:
            if place in declared:
                return f"{list(declared[place])} from {where[place]}"
        return f"{default_text} (no {' / '.join(where[p] for p in places)})"

    check.engines = {
        "EAGLE": f"{default_text} (the official code always taps the default layers)",
        "vLLM": reads("vllm"),
        "SGLang": reads("sglang"),
        "eagle3-ref": reads("eagle3_ref", "vllm", "sglang"),
    }
    if trained is not None and (default is None or tuple(trained) != tuple(default)):
        unknown = " (equal only for the right target depth: pass --target-layers N)" if default is None else ""
        for name, place in (("vLLM", "vllm"), ("SGLang", "sglang")):
            if place not in declared:
                check.warnings.append(f"{name} would tap {default_text}, the head declares {list(trained)}{unknown}; "
                                      f"to be explicit, export with save_draft_head(head, path, engine={place!r})")


def _check_fits_target(check: HeadCheck, config, target: dict) -> None:
    """What decoding with the target needs: its vocabulary and width (the head embeds with the
    target's embedding and reads features of the target's width)."""
    for head_field, target_field in (("vocab_size", "vocab_size"), ("target_hidden_size", "hidden_size")):
        want = target.get(target_field)
        if want is not None and getattr(config, head_field) != want:
            check.errors.append(f"the head's {head_field} is {getattr(config, head_field)}, the target's "
                                f"{target_field} is {want}: this head was not trained for this target")


def _check_values(check: HeadCheck, state: dict) -> None:
    """Finite weights, one floating dtype: a NaN weight passes every shape check, then fails
    deep inside the first draft."""
    floating = {k: t for k, t in state.items() if t.is_floating_point()}
    bad = [k for k, t in floating.items() if not bool(torch.isfinite(t).all())]
    if bad:
        check.errors.append(f"non-finite weights (NaN or inf) in {_some(bad)}")
    dtypes = {t.dtype for t in floating.values()}
    if len(dtypes) > 1:
        check.errors.append(f"the weights mix dtypes ({', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))}): "
                            "a head computes in one")



def looks_initialised(name: str, t: torch.Tensor) -> str | None:
    """How ``t`` still looks like a freshly initialised weight, or None: an RMSNorm weight of
    exactly 1.0 everywhere; a matrix uniform within ``±1/sqrt(fan_in)`` (``nn.Linear``'s own
    initialisation: no entry beyond the bound, the spread of a uniform there); a matrix drawn
    from ``normal(0, 0.02)`` (transformers' ``initializer_range``) or ``normal(0, 1)``
    (``nn.Embedding``): mean, spread and tails within four standard errors of the
    distribution's, for a tensor of that many numbers (1024 at least). A trained head has none:
    training moves every weight off these, and a converter that loads with ``strict=False``
    saves exactly these for the keys it never matched."""
    if not t.is_floating_point() or t.numel() < 2:
        return None
    x = t.detach().double().flatten()
    if name.endswith("norm.weight") and bool((x == 1).all()):
        return "all 1.0, as RMSNorm starts"
    if t.dim() != 2 or t.numel() < 1024:
        return None
    n, bound = x.numel(), 1 / t.shape[1] ** 0.5
    std, mean = float(x.std()), float(x.mean())
    # within four standard errors of what the initialisation gives, for a tensor of n numbers
    if float(x.abs().max()) <= bound * (1 + 1e-6) and abs(std / (bound / 3**0.5) - 1) < max(0.03, 1.8 / n**0.5):
        return f"uniform within ±1/sqrt({t.shape[1]}), as nn.Linear starts"
    kurtosis = float(((x - mean) ** 4).mean() / std**4)
    for sigma, who in ((0.02, "transformers initialises"), (1.0, "nn.Embedding starts")):
        if abs(std / sigma - 1) < 2.8 / n**0.5 and abs(mean) < 4 * sigma / n**0.5 and abs(kurtosis - 3) < 20 / n**0.5:
            return f"normal(0, {sigma:g}), as {who}"
    return None


def _check_trained(check: HeadCheck, state: dict) -> None:
    """Weights still at their initialisation: a head never trained, or keys a conversion never
    matched (speculators #1114 / #1131: loaded with ``strict=False``, the unmatched weights were
    saved as initialised, and the head accepts nothing without an error)."""
    fresh = {k: why for k, t in state.items() if (why := looks_initialised(k, t))}
    if not fresh:
        return
    floating = [k for k, t in state.items() if t.is_floating_point()]
    what = "; ".join(f"{k} ({why})" for k, why in list(fresh.items())[:4]) + \
        (f"; and {len(fresh) - 4} more" if len(fresh) > 4 else "")
    whole = "every weight" if len(fresh) == len(floating) else f"{len(fresh)} of {len(floating)} weights"
    check.errors.append(f"{whole} still at initialisation: {what}. An untrained head, or keys a conversion never "
                        f"matched (loaded with strict=False, saved as initialised): it would draft at random")


def measure_acceptance(head_dir: str | os.PathLike, target_dir: str | os.PathLike, prompts: int = 3,
                       prompt_tokens: int = 24, new_tokens: int = 32) -> tuple[float, int]:
    """A short acceptance measurement: the target writes ``prompts`` texts of its own (greedy,
    from its first token ids), then the head drafts ``new_tokens`` more of each with the
    default tree, greedily. Returns (tau, cycles): tokens per target forward over all cycles.
    A head that drafts at random accepts almost nothing (tau about 1.0), whatever its files say."""
    from transformers import AutoModelForCausalLM

    from ..checkpoint import load_draft_head
    from ..decoding import speculative_generate

    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    head = load_draft_head(head_dir, target)
    lengths = []
    with torch.no_grad():
        for start in range(1, prompts + 1):
            ids = torch.tensor([[start]])
            text = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=prompt_tokens - 1, min_new_tokens=prompt_tokens - 1,
                                   pad_token_id=0)
            lengths += speculative_generate(target, head, text, max_new_tokens=new_tokens).accepted_lengths
    return sum(lengths) / max(len(lengths), 1), len(lengths)


def _check_acceptance(check: HeadCheck, path: Path, target_dir: Path) -> None:
    tau, cycles = measure_acceptance(path, target_dir)
    check.facts.append(f"acceptance on the target: tau {tau:.2f} tokens per target forward over {cycles} cycles (3 "
                       f"texts the target wrote itself, 32 new tokens each, greedy, the default tree; a head that "
                       f"drafts at random gets about 1.0)")
    if tau < 1.2:
        check.warnings.append(f"the head accepts almost nothing on this target (tau {tau:.2f}): weights that never "
                              f"loaded, the wrong tapped layers, or another target's head")


def check_head_dir(path: str | os.PathLike, target_layers: int | None = None,
                   target_config: dict | None = None, target_dir: str | os.PathLike | None = None) -> HeadCheck:
    """Every problem of a head directory, and how each engine would read its layer ids.
    ``target_config``: the target's (text) ``config.json`` as a dict: its layer count,
    vocabulary and hidden size are checked against the head's. ``target_dir``: the target
    itself, with its weights; when the head has no error, a short acceptance measurement
    (:func:`measure_acceptance`) says whether it drafts what the target writes."""
    path = Path(path)
    check = HeadCheck(path)
    if target_config is not None and target_layers is None:
        target_layers = target_config.get("num_hidden_layers")
    if path.is_file():
        check.errors.append("is a file: a head is a directory holding config.json and its weights")
        return check
    if not path.is_dir():
        check.errors.append("no such directory")
        return check
    if not (path / CONFIG).is_file():
        check.errors.append(f"no {CONFIG} (not an EAGLE-3 head directory)")
        return check
    try:
        raw = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as err:
        check.errors.append(f"{CONFIG} is not JSON: {err.msg} (line {err.lineno})")
        return check
    if not isinstance(raw, dict):
        check.errors.append(f"{CONFIG} must hold a JSON object")
        return check
    try:
        state = read_weights(path)
    except FileNotFoundError:
        check.errors.append(f"no weights: neither {SAFETENSORS} nor {TORCH_BIN}")
        state = None
    except Exception as err:  # noqa: BLE001 - a corrupt file can raise anything
        check.errors.append(f"the weight file cannot be read: {str(err).splitlines()[0]}")
        state = None
    fmt = "official"
    if state is not None:  # another format: read through the converter's mapping to the official one
        from .convert import TO_OFFICIAL, Verifier, detect_format

        fmt = detect_format(path)
        if fmt != "official":
            try:
                raw, state = TO_OFFICIAL[fmt](raw, state, Verifier(None))
            except ValueError as err:
                check.errors.append(f"a {fmt} head the official format cannot hold: {err}")
                return check
            check.facts.append(f"format: {fmt} (read as eagle3-ref convert --to official reads it)")
    num_aux = None
    if state and "fc.weight" in state:
        th = raw.get("target_hidden_size") or raw.get("hidden_size")
        if th and state["fc.weight"].shape[-1] % th == 0:
            num_aux = state["fc.weight"].shape[-1] // th
    try:
        config = config_from_dict(raw, num_aux_layers=num_aux)
    except ValueError as err:
        check.errors.append(str(err))
        return check
    check.facts.append(
        f"config: hidden {config.hidden_size}, {config.num_attention_heads} heads / {config.num_key_value_heads} KV, "
        f"MLP {config.intermediate_size}, target hidden {config.target_hidden_size}, fuses {config.num_aux_layers} "
        f"layers, vocabulary {config.vocab_size}, draft vocabulary {config.draft_vocab_size}")
    if state is not None:
        _check_weights(check, config, state)
        _check_values(check, state)
        _check_trained(check, state)
    if target_config is not None:
        _check_fits_target(check, config, target_config)
    _check_layer_ids(check, config, raw, target_layers)
    if target_dir is not None and check.ok:
        if fmt == "official":
            _check_acceptance(check, path, Path(target_dir))
        else:
            import tempfile

            from .convert import convert

            with tempfile.TemporaryDirectory() as tmp:
                _check_acceptance(check, convert(path, Path(tmp) / "official", "official", source=fmt),
                                  Path(target_dir))
    return check
