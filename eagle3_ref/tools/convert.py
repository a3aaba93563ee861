"""``eagle3-ref convert SRC DST --to FORMAT``: an EAGLE-3 head moved between checkpoint formats, losslessly.

| format | ``config.json`` | weights |
|---|---|---|
| ``official`` | LlamaForCausalLM-style: ``hidden_size``, ``draft_vocab_size``, ... (EAGLE's, this project's, the vLLM / SGLang exports) | ``midlayer.*``, ``fc``, ``norm``, ``lm_head``, ``d2t``, ``t2d`` |
| ``speculators`` | ``speculators_model_type: "eagle3"``, ``transformer_layer_config`` (the layer's LlamaConfig), ``eagle_aux_hidden_state_layer_ids`` (``hidden_states`` indices, as vLLM), ``norm_before_residual``, ``norm_before_fc``, ``speculators_config`` (the verifier) | ``layers.0.*`` for ``midlayer.*``, the rest the same |

The source format is read from ``SRC/config.json``. Every field the source carries reaches the
destination: the fields both formats name are mapped, and what only one of them holds is kept
in a block of its own (``eagle3_ref_official`` in a speculators config, ``speculators`` in an
official one), so that A -> B -> A gives back A's ``config.json`` and weights exactly. What the
destination cannot *mean* is refused by name, never dropped: a speculators head with
``norm_before_residual``, ``norm_before_fc``, ``fc_norm`` or ``norm_output`` set, a layer that
is not Llama's, more than one layer, sliding-window attention, biases, or weights no EAGLE-3 head
has (a converter that loads with ``strict=False`` and saves what it did not match is how
speculators #1114 shipped random weights).

speculators' own loader (``Eagle3DraftModel.from_pretrained``) reads the verifier's config from
``speculators_config.verifier.name_or_path``: ``--verifier`` writes it (the target's directory or
hub name); without it the field is null and that loader cannot load the head until it is set.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from ..checkpoint import CONFIG, SAFETENSORS, read_weights
from .check_head import declared_layer_ids

__all__ = ["FORMATS", "detect_format", "convert", "official_to_speculators", "speculators_to_official"]

FORMATS = ("official", "speculators")
FLAGS = ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output")  # what the reference's head is without
SPECULATORS_ONLY = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
                    **dict.fromkeys(FLAGS, False), "embed_requires_grad": False}
MOVED_TO_TOP = ("draft_vocab_size", "target_hidden_size")  # official top-level keys speculators keeps outside the layer
OFFICIAL_ONLY = ("eagle3_ref", "eagle_aux_hidden_state_layer_ids", "eagle_config", "speculators")


def detect_format(path: str | os.PathLike) -> str:
    """``official`` or ``speculators``, from ``path/config.json``."""
    raw = _read_config(Path(path))
    return "speculators" if "speculators_model_type" in raw else "official"


def _read_config(path: Path) -> dict:
    try:
        raw = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no {CONFIG} (not a head directory)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}/{CONFIG} is not JSON: {err.msg} (line {err.lineno})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}/{CONFIG} must hold a JSON object")
    return raw


def _default_speculators_config(verifier: str | None) -> dict:
    return {"algorithm": "eagle3", "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier, "architectures": ["LlamaForCausalLM"]}}


def official_to_speculators(raw: dict, state: dict, verifier: str | None = None) -> tuple[dict, dict]:
    """An official ``config.json`` dict and weights -> the speculators ones."""
    raw = copy.deepcopy(raw)
    if raw.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"num_hidden_layers: an EAGLE-3 head has one decoder layer, the config says "
                         f"{raw['num_hidden_layers']}")
    declared = declared_layer_ids(raw)
    if len(set(declared.values())) > 1:
        raise ValueError(f"eagle_aux_hidden_state_layer_ids: the config declares different tapped layers in "
                         f"different places ({declared}); which one the head was trained on is not known")
    ids = next(iter(declared.values()), None)
    restore = raw.pop("speculators", None)  # what a speculators source held that official cannot
    layer = {k: v for k, v in raw.items() if k not in MOVED_TO_TOP and k not in OFFICIAL_ONLY}
    stash = {k: raw[k] for k in OFFICIAL_ONLY if k in raw}
    if "model_type" not in layer:
        stash["model_type_absent"] = True
        layer["model_type"] = "llama"
    absent = [k for k in MOVED_TO_TOP if k not in raw]
    if absent:
        stash["absent"] = absent
    out = copy.deepcopy(SPECULATORS_ONLY)
    out.update(transformer_layer_config=layer, draft_vocab_size=raw.get("draft_vocab_size", raw.get("vocab_size")),
               target_hidden_size=raw.get("target_hidden_size"),
               eagle_aux_hidden_state_layer_ids=list(ids) if ids else None,
               speculators_config=_default_speculators_config(verifier))
    if restore is not None:  # back to the speculators head it came from
        out.update(restore.get("fields", {}))
        for k in restore.get("absent", []):
            out.pop(k, None)
        if verifier is not None:
            out["speculators_config"]["verifier"]["name_or_path"] = verifier
    elif stash:
        out["eagle3_ref_official"] = stash
    weights = {("layers.0." + k[len("midlayer."):] if k.startswith("midlayer.") else k): v for k, v in state.items()}
    return out, weights


def speculators_to_official(spec: dict, state: dict) -> tuple[dict, dict]:
    """A speculators ``config.json`` dict and weights -> the official ones; refuses by name what
    the official format (and this reference's head) cannot mean."""
    spec = copy.deepcopy(spec)
    for flag in FLAGS:
        if spec.get(flag):
            raise ValueError(f"{flag}: this head was trained with {flag}=true, which the official EAGLE-3 format "
                             f"has no field for and its loaders do not compute: refused, not dropped")
    layer = spec.get("transformer_layer_config")
    if not isinstance(layer, dict):
        raise ValueError("transformer_layer_config: missing or not an object")
    if layer.get("model_type", "llama") != "llama":
        raise ValueError(f"transformer_layer_config.model_type: {layer['model_type']!r} layer; the official format "
                         f"is a Llama decoder layer (a Qwen3 layer has q_norm / k_norm)")
    if layer.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"transformer_layer_config.num_hidden_layers: {layer['num_hidden_layers']} layers; the "
                         f"official format has one")
    if layer.get("sliding_window") is not None or "sliding_attention" in (layer.get("layer_types") or []):
        raise ValueError("transformer_layer_config.sliding_window: a sliding-window draft layer; the official "
                         "format has full attention only (speculators #684 ignored this field)")
    for bias in ("attention_bias", "mlp_bias"):
        if layer.get(bias):
            raise ValueError(f"transformer_layer_config.{bias}: biases the official format has no weights for")
    stash = spec.pop("eagle3_ref_official", None)
    raw = dict(layer)
    for k in MOVED_TO_TOP:
        if spec.get(k) is not None and k not in ((stash or {}).get("absent") or []):
            raw[k] = spec[k]
    if stash is not None:  # back to the official head it came from
        if stash.get("model_type_absent"):
            raw.pop("model_type", None)
        raw.update({k: stash[k] for k in OFFICIAL_ONLY if k in stash})
    else:  # a speculators head: what only speculators holds is kept, and the layer ids in vLLM's key
        if spec.get("eagle_aux_hidden_state_layer_ids"):
            raw["eagle_aux_hidden_state_layer_ids"] = list(spec["eagle_aux_hidden_state_layer_ids"])
        defaults = {**SPECULATORS_ONLY, "speculators_config": _default_speculators_config(None)}
        taken = {"transformer_layer_config", "eagle_aux_hidden_state_layer_ids", *MOVED_TO_TOP}
        fields = {k: v for k, v in spec.items() if k not in taken and defaults.get(k, object()) != v}
        absent = [k for k in defaults if k not in spec]
        absent += [k for k in MOVED_TO_TOP if k not in spec]
        if "eagle_aux_hidden_state_layer_ids" not in spec:
            absent.append("eagle_aux_hidden_state_layer_ids")
        raw["speculators"] = {"fields": fields, **({"absent": absent} if absent else {})}
    weights = {}
    for k, v in state.items():
        if k.startswith("layers.0."):
            weights["midlayer." + k[len("layers.0."):]] = v
        elif k.startswith("layers.") or k.startswith("verifier_") or k in ("input_norm.weight",) or \
                k.startswith("fc_norm."):
            raise ValueError(f"{k}: a weight the official format has no place for")
        else:
            weights[k] = v
    return raw, weights


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, verifier: str | None = None,
            overwrite: bool = False) -> Path:
    """Read the head in ``src`` (its format detected), write it to ``dst`` in format ``to``."""
    from safetensors.torch import save_file

    if to not in FORMATS:
        raise ValueError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise ValueError(f"destination {dst} exists and is not empty (overwrite=True, --overwrite, replaces it)")
    raw, state = _read_config(src), read_weights(src)
    source = detect_format(src)
    if source == "speculators":
        raw, state = speculators_to_official(raw, state)
    if to == "speculators":
        raw, state = official_to_speculators(raw, state, verifier)
    elif verifier is not None:
        raise ValueError("verifier: only a speculators config has a place for it (--to speculators)")
    if dst.exists():  # only now, with the conversion done: a refusal leaves it as it was
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    dst.mkdir(parents=True)
    (dst / CONFIG).write_text(json.dumps(raw, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in state.items()}, dst / SAFETENSORS)
    return dst

