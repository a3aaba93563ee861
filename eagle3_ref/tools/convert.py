"""``eagle3-ref convert SRC DST --to FORMAT``: an EAGLE-3 head moved between checkpoint formats, losslessly.

Four formats (:data:`FORMAT_TABLE` has them side by side; docs/checkpoint.md shows it):

| format | ``config.json`` | weights |
|---|---|---|
| ``official`` | LlamaForCausalLM-style: ``hidden_size``, ``draft_vocab_size``, ... (EAGLE's, this project's, the vLLM / SGLang exports) | ``midlayer.*``, ``fc``, ``norm``, ``lm_head``, ``d2t``, ``t2d`` |
| ``speculators`` | ``speculators_model_type: "eagle3"``, ``transformer_layer_config`` (the layer's LlamaConfig), ``eagle_aux_hidden_state_layer_ids`` (``hidden_states`` indices, as vLLM), ``norm_before_residual``, ``norm_before_fc``, ``speculators_config`` (the verifier) | ``layers.0.*`` for ``midlayer.*``, the rest the same |
| ``specforge`` | a ``LlamaConfig`` with ``architectures: ["LlamaForCausalLMEagle3"]`` and ``eagle_config.eagle_aux_hidden_state_layer_ids`` (one less) | the official keys and ``embed_tokens.weight``, the target's |
| ``modelopt`` | ModelOpt's export template, ``eagle_config`` with the layer ids (one less) and its flags | ``layers.0.*``, ``fc``, ``norm``, ``lm_head``, ``d2t`` in its own (frequency) order, no ``t2d`` |

Every conversion goes through the official layout: SRC -> official -> DST.

The source format is read from ``SRC/config.json`` and the weights' names. Every field the source
carries reaches the destination: the fields both formats name are mapped, and what only one of them holds is kept
in a block of its own (``eagle3_ref_official`` in a speculators config, ``speculators`` in an
official one), so that A -> B -> A gives back A's ``config.json`` and weights exactly. What the
destination cannot *mean* is refused by name, never dropped: a speculators head with
``norm_before_residual``, ``norm_before_fc``, ``fc_norm`` or ``norm_output`` set, a layer that
is not Llama's, more than one layer, sliding-window attention, biases, or weights no EAGLE-3 head
has (a converter that loads with ``strict=False`` and saves what it did not match is how
speculators #1114 shipped random weights). SpecForge and ModelOpt: see their converters below.

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

from ..checkpoint import CONFIG, SAFETENSORS, declared_layer_ids, read_weights

__all__ = ["FORMATS", "FORMAT_TABLE", "format_table_markdown", "detect_format", "convert", "official_to_speculators",
           "speculators_to_official", "official_to_specforge", "specforge_to_official", "official_to_modelopt",
           "modelopt_to_official", "Verifier"]

FORMATS = ("official", "speculators", "specforge", "modelopt")
FLAGS = ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output")  # what the reference's head is without
SPECULATORS_ONLY = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
                    **dict.fromkeys(FLAGS, False), "embed_requires_grad": False}
MOVED_TO_TOP = ("draft_vocab_size", "target_hidden_size")  # official top-level keys speculators keeps outside the layer
OFFICIAL_ONLY = ("eagle3_ref", "eagle_aux_hidden_state_layer_ids", "eagle_config", "speculators", "specforge", "modelopt")


def detect_format(path: str | os.PathLike) -> str:
    """The format of the head in ``path``, from its ``config.json`` and its weights' names:
    ``speculators`` (``speculators_model_type``), ``modelopt`` (``layers.0.*`` keys without
    it), ``specforge`` (``midlayer.*`` keys and the target's embedding shipped as
    ``embed_tokens.weight``, as SpecForge's ``export_to_hf`` writes it), else ``official``.
    A head this cannot tell apart (an official head that owns an embedding of its own width)
    is converted with ``source=`` (``--from``)."""
    raw = _read_config(Path(path))
    if "speculators_model_type" in raw:
        return "speculators"
    keys = _weight_names(Path(path))
    if any(k.startswith("layers.") for k in keys):
        return "modelopt"
    if STASH in raw or ("embed_tokens.weight" in keys and raw.get("target_hidden_size") in (None, raw.get("hidden_size"))
                        and "eagle3_ref" not in raw):
        return "specforge"
    return "official"


def _weight_names(path: Path) -> list[str]:
    from safetensors import safe_open

    if (path / SAFETENSORS).is_file():
        with safe_open(str(path / SAFETENSORS), framework="pt") as f:
            return list(f.keys())
    return list(read_weights(path))


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
    if not any(k.startswith("layers.0.") for k in state):
        raise ValueError("no layers.0.* weights: not a speculators head (its decoder layer's keys); is the source "
                         "in another format (--from)?")
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


# ----------------------------------------------------------------------------------------
# SpecForge and ModelOpt
# ----------------------------------------------------------------------------------------

# In a SpecForge or ModelOpt config converted from the official format: the official head's
# config.json, whole, so that converting back gives it exactly (checked against the fields first).
STASH = "eagle3_ref_official_head"
MODELOPT_FLAGS = {"use_aux_hidden_state": True, "use_input_layernorm_in_first_layer": True, "use_last_layernorm": True,
                  "use_mtp_layernorm": False, "next_layer_regular": True, "parallel_draft_step": 1,
                  "parallel_draft_heads_num_layers": 1}
# ModelOpt's export template (modelopt/torch/export/plugins/hf_spec_configs.py), in its order.
MODELOPT_FIELDS = ("architectures", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "initializer_range",
                   "intermediate_size", "max_position_embeddings", "model_type", "num_attention_heads",
                   "num_key_value_heads", "num_hidden_layers", "pad_token_id", "rms_norm_eps", "tie_word_embeddings",
                   "torch_dtype", "transformers_version", "use_cache", "vocab_size", "draft_vocab_size", "rope_scaling",
                   "attention_bias", "attention_dropout", "head_dim", "mlp_bias", "pretraining_tp", "rope_theta",
                   "eagle_config")


NEVER_SET = ("d2t: all zeros with a draft vocabulary smaller than the target's: the buffer as registered, never set "
             "from a vocabulary (ModelOpt's load_draft_vocab_cache, SpecForge's vocab mapping), so the head would "
             "draft target ids 0..draft_vocab_size-1")


class Verifier:
    """What a conversion may need from the target (``--verifier``): its depth (EAGLE-3's
    default tapped layers) and its token embedding (SpecForge's layout ships it). ``path``: a
    local Hugging Face model directory; anything else is only a name (speculators writes it)."""

    def __init__(self, path: str | os.PathLike | None):
        self.name = None if path is None else str(path)
        self.path = Path(path) if path is not None and Path(path).is_dir() else None

    def _need(self, what: str) -> Path:
        if self.path is None:
            where = f"{self.name!r} is not a local model directory" if self.name else "none was given"
            raise ValueError(f"verifier: {what} comes from the target's directory, and {where} (--verifier TARGET_DIR)")
        return self.path

    def num_layers(self, what: str) -> int:
        cfg = _read_config(self._need(what))
        cfg = cfg.get("text_config") or cfg
        if not isinstance(cfg.get("num_hidden_layers"), int):
            raise ValueError(f"verifier: {self.path}/{CONFIG} has no num_hidden_layers")
        return cfg["num_hidden_layers"]

    def embedding(self, what: str):
        from safetensors import safe_open

        path = self._need(what)
        names = ("model.embed_tokens.weight", "embed_tokens.weight", "model.language_model.embed_tokens.weight")
        files = sorted(path.glob("*.safetensors"))
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = [path / weight_map[n] for n in names if n in weight_map][:1]
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in names:
                    if name in f.keys():
                        return f.get_tensor(name)
        raise ValueError(f"verifier: no token embedding ({', '.join(names)}) in {path}'s safetensors files")


def _digest(t) -> dict:
    """What identifies a tensor without keeping it (its bytes' sha256, dtype and shape)."""
    import hashlib

    import torch

    data = t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape)}


def _layer_ids_for(raw: dict, verifier: Verifier, fmt: str) -> tuple[int, ...]:
    """The tapped layers the official config declares (``hidden_states`` indices), or EAGLE-3's
    default for the verifier's depth; refused when neither says."""
    from ..fusion import default_aux_layer_ids

    declared = declared_layer_ids(raw)
    if len(set(declared.values())) > 1:
        raise ValueError(f"eagle_aux_hidden_state_layer_ids: the config declares different tapped layers in "
                         f"different places ({declared}); which one the head was trained on is not known")
    if declared:
        return next(iter(declared.values()))
    return tuple(default_aux_layer_ids(verifier.num_layers(
        f"the tapped layers (the config declares none, and EAGLE-3's default depends on the target's depth; "
        f"{fmt} writes them)")))


def _changed(expected: dict, actual: dict) -> list[str]:
    return sorted(k for k in expected.keys() | actual.keys() if expected.get(k, object()) != actual.get(k, object()))


def _restore(kept: dict, expected: dict, actual: dict, fmt: str) -> dict:
    """The official config kept in a converted head, if the head's own fields still say what
    it says; refused by name otherwise (an edit the kept config would silently undo)."""
    changed = _changed(expected, actual)
    if changed:
        raise ValueError(f"{', '.join(changed)}: changed since this head was converted from the official format, "
                         f"and the official config kept in {STASH} says otherwise; restore the field(s), or delete "
                         f"{STASH} to convert the {fmt} config as it stands")
    return kept


def specforge_config(raw: dict, ids: tuple[int, ...]) -> dict:
    """The config SpecForge's ``LlamaForCausalLMEagle3`` reads for an official head tapping
    ``ids`` (``hidden_states`` indices): the same fields, its architecture, and the tapped
    layers in ``eagle_config`` in its convention."""
    from ..fusion import to_convention

    raw = {k: v for k, v in raw.items() if k not in ("specforge", STASH)}
    if len(ids) != 3:
        raise ValueError(f"aux_layer_ids: SpecForge's fc is 3 x the target's width; this head taps {len(ids)} "
                         f"layer(s) {list(ids)}")
    out = copy.deepcopy(raw)
    out["architectures"] = ["LlamaForCausalLMEagle3"]
    out["eagle_config"] = {**(raw.get("eagle_config") or {}),
                           "eagle_aux_hidden_state_layer_ids": list(to_convention(ids, "specforge"))}
    return out


def official_to_specforge(raw: dict, state: dict, verifier: Verifier | None = None) -> tuple[dict, dict]:
    """An official head -> SpecForge's HF layout (``export_to_hf``): ``midlayer.*`` keys, the
    target's embedding shipped as ``embed_tokens.weight`` (taken from ``verifier``), ``d2t`` and
    ``t2d`` always present."""
    import torch

    verifier = verifier or Verifier(None)
    raw = copy.deepcopy(raw)
    came_from = raw.pop("specforge", None)  # a SpecForge head converted to official: its record
    if raw.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"num_hidden_layers: an EAGLE-3 head has one decoder layer, the config says "
                         f"{raw['num_hidden_layers']}")
    if came_from is not None:  # a SpecForge head's config is already what SpecForge reads
        cfg = copy.deepcopy(raw)
    else:
        ids = _layer_ids_for(raw, verifier, "specforge")
        cfg = specforge_config(raw, ids)
    weights = dict(state)
    if "embed_tokens.weight" not in weights:
        embedding = verifier.embedding("SpecForge's layout ships the target's token embedding (its export_to_hf "
                                       "refuses to write a head without one: a random embedding drafts garbage)")
        if came_from is not None and came_from.get("embedding") and _digest(embedding) != came_from["embedding"]:
            raise ValueError("verifier: its token embedding is not the one this SpecForge head shipped (another "
                             "target?): refused, not replaced")
        weights["embed_tokens.weight"] = embedding
    vocab, draft = raw.get("vocab_size"), raw.get("draft_vocab_size", raw.get("vocab_size"))
    identity = "d2t" not in weights and "t2d" not in weights
    if identity:  # SpecForge's buffers always exist: written as the identity mapping they mean
        if draft != vocab:
            raise ValueError("d2t: missing, and the draft vocabulary is smaller than the target's")
        weights["d2t"] = torch.zeros(draft, dtype=torch.int64)
        weights["t2d"] = torch.ones(vocab, dtype=torch.bool)
    if came_from is None:
        kept = {"config": raw, "aux_layer_ids": list(ids)}
        if identity:
            kept["identity_vocab_written"] = True
        cfg[STASH] = kept
    return cfg, weights


def specforge_to_official(cfg: dict, state: dict, verifier: Verifier | None = None) -> tuple[dict, dict]:
    """SpecForge's HF layout -> an official head: the target's embedding is not part of the
    official layout and is dropped (its digest kept, so that converting back checks the
    verifier's); a head whose embedding has its own width (``target_hidden_size``) keeps it."""
    if not any(k.startswith("midlayer.") for k in state):
        raise ValueError("no midlayer.* weights: not a SpecForge head (its decoder layer's keys); is the source in "
                         "another format (--from)?")
    cfg = copy.deepcopy(cfg)
    kept = cfg.pop(STASH, None)
    for flag, standard in (("fc_norm", False), ("norm_output", True), ("norm_before_residual", False)):
        if bool(cfg.get(flag, standard)) != standard:
            raise ValueError(f"{flag}: this SpecForge head was trained with {flag}={cfg[flag]!r}, which the official "
                             f"format has no field for and its loaders do not compute: refused, not dropped")
    if cfg.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"num_hidden_layers: {cfg['num_hidden_layers']} layers; the official format has one")
    weights = dict(state)
    stray = [k for k in weights if not (k.startswith("midlayer.") or k in ("fc.weight", "norm.weight",
                                                                           "lm_head.weight", "d2t", "t2d",
                                                                           "embed_tokens.weight"))]
    if stray:
        raise ValueError(f"{stray[0]}: a weight the official format has no place for")
    own_width = cfg.get("target_hidden_size") not in (None, cfg.get("hidden_size"))
    embedding = None if own_width else weights.pop("embed_tokens.weight", None)
    if kept is not None:
        raw = _restore(kept["config"], specforge_config(kept["config"], tuple(kept["aux_layer_ids"])), cfg,
                       "specforge")
        if kept.get("identity_vocab_written"):
            if not (bool((weights["d2t"] == 0).all()) and bool(weights["t2d"].all())):
                raise ValueError("d2t: no longer the identity mapping this head was written with")
            del weights["d2t"], weights["t2d"]
        return copy.deepcopy(raw), weights
    raw = cfg
    if embedding is not None:
        raw["specforge"] = {"embedding": _digest(embedding)}
    return raw, weights


def modelopt_config(raw: dict, ids: tuple[int, ...]) -> dict:
    """The ``config.json`` ModelOpt's EAGLE exporter writes, for an official head tapping
    ``ids`` (``hidden_states`` indices)."""
    from ..fusion import to_convention

    raw = {k: v for k, v in raw.items() if k not in ("modelopt", STASH)}
    if raw.get("target_hidden_size") not in (None, raw.get("hidden_size")):
        raise ValueError(f"target_hidden_size: the head is {raw['hidden_size']} wide and its target "
                         f"{raw['target_hidden_size']}; ModelOpt's fc and embedding are sized by the target's width")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
    values = {**{k: raw.get(k) for k in MODELOPT_FIELDS}, "architectures": ["LlamaForCausalLMEagle3"],
              "model_type": "llama", "num_hidden_layers": 1, "tie_word_embeddings": False, "use_cache": True,
              "hidden_act": raw.get("hidden_act", "silu"),
              "draft_vocab_size": raw.get("draft_vocab_size", raw.get("vocab_size")),
              "rope_scaling": {"rope_type": "default", "rope_theta": theta}, "rope_theta": theta,
              "attention_bias": bool(raw.get("attention_bias", False)), "mlp_bias": bool(raw.get("mlp_bias", False)),
              "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(to_convention(ids, "modelopt")),
                               **MODELOPT_FLAGS}}
    return {k: values[k] for k in MODELOPT_FIELDS}


def official_from_modelopt(cfg: dict) -> dict:
    """An official ``config.json`` for a ModelOpt export (refusing what it cannot mean)."""
    from ..fusion import from_convention

    eagle = cfg.get("eagle_config") or {}
    if cfg.get("architectures") not in (None, ["LlamaForCausalLMEagle3"]):
        raise ValueError(f"architectures: {cfg['architectures']}: a ModelOpt draft that is not a Llama EAGLE-3 layer "
                         f"(its Kimi-K2 / DeepSeek draft has MLA attention)")
    for flag, standard in MODELOPT_FLAGS.items():
        if flag in eagle and eagle[flag] != standard:
            raise ValueError(f"eagle_config.{flag}: {eagle[flag]!r}; EAGLE-3 (and the official format) is "
                             f"{standard!r}: refused, not dropped")
    if cfg.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"num_hidden_layers: {cfg['num_hidden_layers']} draft layers; the official format has one")
    for bias in ("attention_bias", "mlp_bias"):
        if cfg.get(bias):
            raise ValueError(f"{bias}: biases the official format has no weights for")
    rope = cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rope_scaling: {rope_type!r}: ModelOpt's export writes its eagle_export_rope_scaling (by "
                         f"default YaRN, factor 32) over a head it trained and drafts with under plain RoPE; the "
                         f"official format (and this reference) computes plain RoPE only: export with "
                         f"eagle_export_rope_scaling={{}} to convert the head as it was trained")
    ids = eagle.get("eagle_aux_hidden_state_layer_ids")
    if not ids:
        raise ValueError("eagle_config.eagle_aux_hidden_state_layer_ids: missing; which layers the head reads is "
                         "not known")
    raw = {k: v for k, v in cfg.items() if k != "eagle_config" and v is not None}
    raw["architectures"] = ["LlamaForCausalLM"]
    raw["eagle3_ref"] = {"layer_id_convention": "hf_hidden_states", "num_aux_layers": len(ids),
                         "aux_layer_ids": list(from_convention(ids, "modelopt"))}
    return raw


def _draft_targets(d2t, vocab: int, what: str):
    import torch

    targets = torch.arange(d2t.shape[0], dtype=torch.int64) + d2t.to(torch.int64)
    if bool(((targets < 0) | (targets >= vocab)).any()):
        raise ValueError(f"{what}: maps a draft id outside the target vocabulary [0, {vocab})")
    if int(torch.unique(targets).numel()) != targets.numel():
        raise ValueError(f"{what}: maps two draft ids to the same target id")
    return targets


def official_to_modelopt(raw: dict, state: dict, verifier: Verifier | None = None) -> tuple[dict, dict]:
    """An official head -> ModelOpt's export: ``layers.0.*`` keys, ``eagle_config`` with the
    tapped layers in its convention, ``d2t`` in its draft order, no ``t2d`` (ModelOpt keeps
    none; it is rebuilt from ``d2t`` on the way back)."""
    import torch

    verifier = verifier or Verifier(None)
    raw = copy.deepcopy(raw)
    came_from = raw.pop("modelopt", None)
    if raw.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"num_hidden_layers: an EAGLE-3 head has one decoder layer, the config says "
                         f"{raw['num_hidden_layers']}")
    if came_from is not None:
        cfg = copy.deepcopy(came_from["config"])
        changed = _changed(official_from_modelopt(cfg), raw)
        if changed:
            raise ValueError(f"{', '.join(changed)}: changed since this head was converted from ModelOpt's format, "
                             f"and the ModelOpt config kept in 'modelopt' says otherwise; restore the field(s), or "
                             f"delete 'modelopt' to convert the official config as it stands")
    else:
        ids = _layer_ids_for(raw, verifier, "modelopt")
        cfg = modelopt_config(raw, ids)
    weights = {}
    for k, v in state.items():
        if k == "embed_tokens.weight":
            raise ValueError("embed_tokens.weight: ModelOpt's export has no embedding (its draft uses the target's)")
        weights[("layers.0." + k[len("midlayer."):]) if k.startswith("midlayer.") else k] = v
    t2d = weights.pop("t2d", None)
    vocab, draft = raw.get("vocab_size"), raw.get("draft_vocab_size", raw.get("vocab_size"))
    if "d2t" in weights:
        if draft < vocab and not bool(weights["d2t"].any()):
            raise ValueError(NEVER_SET)
        targets = _draft_targets(weights["d2t"], vocab, "d2t")
        if t2d is not None:
            rebuilt = torch.zeros(vocab, dtype=torch.bool)
            rebuilt[targets] = True
            if not torch.equal(rebuilt, t2d.bool()) or t2d.dtype != torch.bool:
                raise ValueError("t2d: does not mark exactly the target ids d2t maps to (or is not bool); ModelOpt "
                                 "keeps no t2d, so it would be rebuilt from d2t and differ")
        order = (came_from or {}).get("draft_order")
        if order is not None:  # back to ModelOpt's own draft order (by frequency)
            order = torch.tensor(order, dtype=torch.int64)
            reordered = torch.empty_like(targets)
            reordered[order] = targets
            weights["d2t"] = (reordered - torch.arange(draft)).to(weights["d2t"].dtype)
            lm_head = torch.empty_like(weights["lm_head.weight"])
            lm_head[order] = weights["lm_head.weight"]
            weights["lm_head.weight"] = lm_head
        if draft == vocab and came_from is None:
            if bool((weights["d2t"] == 0).all()):  # ModelOpt registers no d2t for a full draft vocabulary
                del weights["d2t"]
                cfg[STASH] = {"config": raw, "aux_layer_ids": list(ids), "identity_vocab_dropped": True}
                return cfg, weights
    elif draft != vocab:
        raise ValueError("d2t: missing, and the draft vocabulary is smaller than the target's")
    if came_from is None:
        cfg[STASH] = {"config": raw, "aux_layer_ids": list(ids)}
    return cfg, weights


def modelopt_to_official(cfg: dict, state: dict, verifier: Verifier | None = None) -> tuple[dict, dict]:
    """ModelOpt's export -> an official head: ``d2t`` put in ascending target-id order (the
    official convention; ``lm_head`` rows follow, so every logit keeps its token), ``t2d``
    rebuilt from it; an all-zero ``d2t`` (ModelOpt's buffer as registered, never set from a
    vocabulary) is refused."""
    import torch

    if not any(k.startswith("layers.0.") for k in state):
        raise ValueError("no layers.0.* weights: not a ModelOpt export (its decoder layer's keys); is the source "
                         "in another format (--from)?")
    cfg = copy.deepcopy(cfg)
    kept = cfg.pop(STASH, None)
    derived = official_from_modelopt(cfg)
    weights = {}
    for k, v in state.items():
        if k.startswith("layers.0."):
            weights["midlayer." + k[len("layers.0."):]] = v
        elif k.startswith("layers.") or k not in ("fc.weight", "norm.weight", "lm_head.weight", "d2t"):
            raise ValueError(f"{k}: a weight the official format has no place for")
        else:
            weights[k] = v
    vocab, draft = derived.get("vocab_size"), derived.get("draft_vocab_size", derived.get("vocab_size"))
    extra = {}
    if "d2t" in weights:
        d2t = weights["d2t"]
        if draft < vocab and not bool(d2t.any()):
            raise ValueError(NEVER_SET)
        targets = _draft_targets(d2t, vocab, "d2t")
        order = torch.argsort(targets)
        if not torch.equal(order, torch.arange(draft)):
            extra["draft_order"] = order.tolist()
            weights["lm_head.weight"] = weights["lm_head.weight"][order]
            targets = targets[order]
        weights["d2t"] = (targets - torch.arange(draft)).to(d2t.dtype)
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[targets] = True
        weights["t2d"] = t2d
    elif draft != vocab:
        raise ValueError("d2t: missing, and the draft vocabulary is smaller than the target's")
    if kept is not None:
        raw = _restore(kept["config"], modelopt_config(kept["config"], tuple(kept["aux_layer_ids"])), cfg, "modelopt")
        if kept.get("identity_vocab_dropped"):
            weights["d2t"] = torch.zeros(draft, dtype=torch.int64)
            weights["t2d"] = torch.ones(vocab, dtype=torch.bool)
        return copy.deepcopy(raw), weights
    derived["modelopt"] = {"config": cfg, **extra}
    return derived, weights


# ----------------------------------------------------------------------------------------
# The four formats
# ----------------------------------------------------------------------------------------

TO_OFFICIAL = {"speculators": lambda cfg, state, verifier: speculators_to_official(cfg, state),
               "specforge": specforge_to_official, "modelopt": modelopt_to_official}
FROM_OFFICIAL = {"speculators": lambda raw, state, verifier: official_to_speculators(raw, state, verifier.name),
                 "specforge": official_to_specforge, "modelopt": official_to_modelopt}


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, verifier: str | None = None,
            overwrite: bool = False, source: str | None = None) -> Path:
    """Read the head in ``src`` (its format detected, or ``source``), write it to ``dst`` in
    format ``to``. ``verifier``: the target's directory (or, for speculators, its hub name),
    where a format needs the target (see :data:`FORMAT_TABLE`)."""
    from safetensors.torch import save_file

    for name, value in (("to", to), ("source", source)):
        if value is not None and value not in FORMATS:
            raise ValueError(f"{name} must be one of {', '.join(FORMATS)}, got {value!r}")
    src, dst = Path(src), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise ValueError(f"destination {dst} exists and is not empty (overwrite=True, --overwrite, replaces it)")
    raw, state = _read_config(src), read_weights(src)
    source = source or detect_format(src)
    target = Verifier(verifier)
    if verifier is not None and to == "official":
        raise ValueError("verifier: converting to the official format needs no target (it is read for speculators, "
                         "SpecForge and ModelOpt)")
    if source != "official":
        raw, state = TO_OFFICIAL[source](raw, state, target)
    if to != "official":
        raw, state = FROM_OFFICIAL[to](raw, state, target)
    if dst.exists():  # only now, with the conversion done: a refusal leaves it as it was
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    dst.mkdir(parents=True)
    (dst / CONFIG).write_text(json.dumps(raw, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in state.items()}, dst / SAFETENSORS)
    return dst


# What docs/checkpoint.md shows side by side (tests/test_docs.py holds the page to it).
FORMAT_TABLE = {
    "written by": {"official": "SafeAILab/EAGLE, this project (`save_draft_head`)",
                   "speculators": "speculators (`Eagle3Converter`, its trainer)",
                   "specforge": "SpecForge (`export_to_hf`; `export_to_sglang` writes the official layout)",
                   "modelopt": "ModelOpt (`export_speculative_decoding`, `EagleExporter`)"},
    "loaded by": {"official": "EAGLE, SGLang, vLLM (`LlamaForCausalLMEagle3`), AngelSlim, this project",
                  "speculators": "vLLM (natively), speculators' `Eagle3DraftModel`",
                  "specforge": "SpecForge (`AutoDraftModel`, to train on), SGLang",
                  "modelopt": "vLLM, SGLang, TensorRT-LLM"},
    "files": {f: "`config.json`, `model.safetensors`" for f in FORMATS},
    "decoder layer keys": {"official": "`midlayer.*`", "speculators": "`layers.0.*`", "specforge": "`midlayer.*`",
                           "modelopt": "`layers.0.*`"},
    "other keys": {"official": "`fc`, `norm`, `lm_head`, `d2t`, `t2d`", "speculators": "the same",
                   "specforge": "the same, and `embed_tokens` (the target's, frozen)",
                   "modelopt": "`fc`, `norm`, `lm_head`, `d2t`; no `t2d`"},
    "layer fields": {"official": "top level (`hidden_size`, `head_dim`, `rope_theta`, ...)",
                     "speculators": "`transformer_layer_config`", "specforge": "top level (a `LlamaConfig`)",
                     "modelopt": "top level (its export template)"},
    "tapped layers": {"official": "`eagle3_ref.aux_layer_ids` (`hf`), or vLLM's / SGLang's key",
                      "speculators": "`eagle_aux_hidden_state_layer_ids`, `hf`",
                      "specforge": "`eagle_config.eagle_aux_hidden_state_layer_ids`, `specforge` (one less)",
                      "modelopt": "`eagle_config.eagle_aux_hidden_state_layer_ids`, `modelopt` (one less)"},
    "draft vocabulary": {"official": "`d2t` offsets ascending by target id, `t2d` mask",
                         "speculators": "the same (frequency ties by id, missing tokens the lowest unused ids)",
                         "specforge": "the same; both buffers always present (identity: `d2t` 0, `t2d` all true)",
                         "modelopt": "`d2t` in its own draft order (by frequency); none for a full vocabulary"},
    "what only it holds": {"official": "-",
                           "speculators": "`speculators_config` (the verifier), the `norm_*` / `fc_norm` flags",
                           "specforge": "the target's embedding; `fc_norm`, `norm_output`",
                           "modelopt": "`eagle_config` flags (`use_last_layernorm`, `parallel_draft_step`, ...)"},
    "from official, needs": {"official": "-", "speculators": "`--verifier` (its loader reads the verifier's config)",
                             "specforge": "`--verifier TARGET_DIR` (the embedding to ship)",
                             "modelopt": "`--verifier TARGET_DIR` when the config declares no tapped layers"},
}


def format_table_markdown() -> str:
    """:data:`FORMAT_TABLE` as the markdown table docs/checkpoint.md shows."""
    lines = ["| | " + " | ".join(FORMATS) + " |", "|---" * (len(FORMATS) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(cells[f] for f in FORMATS) + " |" for row, cells in FORMAT_TABLE.items()]
    return "\n".join(lines) + "\n"
