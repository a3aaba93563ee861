"""The official EAGLE-3 checkpoint format, and config exports for vLLM and SGLang.

A head directory holds ``config.json`` (LlamaForCausalLM-style fields) and its weights in
``model.safetensors`` (written here) or ``pytorch_model.bin`` (read too), with exactly
these keys (shapes for LLaMA-3.1-8B's released head in brackets)::

    fc.weight                                   [H, 3*H_t]      [4096, 12288]
    midlayer.self_attn.q_proj.weight            [nh*d, 2H]      [4096, 8192]
    midlayer.self_attn.{k,v}_proj.weight        [nkv*d, 2H]     [1024, 8192]
    midlayer.self_attn.o_proj.weight            [H, nh*d]       [4096, 4096]
    midlayer.mlp.{gate,up}_proj.weight          [I, H]          [14336, 4096]
    midlayer.mlp.down_proj.weight               [H, I]          [4096, 14336]
    midlayer.{hidden_norm,input_layernorm,post_attention_layernorm}.weight  [H]
    norm.weight                                 [H]
    lm_head.weight                              [V_draft, H]    [32000, 4096]
    d2t                                         [V_draft] int64 [32000]
    t2d                                         [V] bool        [128256]

No embedding: the head uses the target's, taken from the target at load. (The one
exception: a head narrower than its target owns ``embed_tokens.weight``.)

Released configs are not uniform, and loading tolerates what they do: ``num_hidden_layers``
may say anything (the head has one layer), ``head_dim`` may be explicit,
``draft_vocab_size`` may be absent (then ``= vocab_size`` and ``d2t``/``t2d`` may be
missing: the identity), ``rope_theta`` may be absent (10000).

Loading validates everything (config, key set, shapes, dtypes, the vocabulary mapping,
the fit to the target) *before* it builds the head, so a bad directory raises a
``ValueError`` naming the key or field and leaves nothing half-loaded.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ._checks import check_device
from .draft_head import Eagle3Config, Eagle3DraftHead
from .fusion import default_aux_layer_ids, from_convention, num_decoder_layers, to_convention, validate_aux_layer_ids
from .vocab import validate_vocab_mapping

__all__ = [
    "OFFICIAL_KEYS",
    "expected_shapes",
    "config_to_dict",
    "config_from_dict",
    "engine_config",
    "declared_layer_ids",
    "save_draft_head",
    "load_draft_head",
    "check_head_fits_target",
    "read_weights",
]

OFFICIAL_KEYS: tuple[str, ...] = (
    "fc.weight",
    "midlayer.self_attn.q_proj.weight",
    "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight",
    "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight",
    "midlayer.hidden_norm.weight",
    "midlayer.input_layernorm.weight",
    "midlayer.post_attention_layernorm.weight",
    "norm.weight",
    "lm_head.weight",
    "d2t",
    "t2d",
)
SAFETENSORS, TORCH_BIN, CONFIG = "model.safetensors", "pytorch_model.bin", "config.json"
_CONVENTION_NAME = "hf_hidden_states"  # how this project names tapped layers (see fusion.py)


def expected_shapes(config: Eagle3Config) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a head's checkpoint, computed on the meta device (no memory)."""
    with torch.device("meta"):
        head = Eagle3DraftHead(config)
    return {k: tuple(v.shape) for k, v in head.state_dict().items()}


# ----------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------


def config_to_dict(config: Eagle3Config, dtype: torch.dtype | None = None) -> dict:
    """The official, LlamaForCausalLM-style ``config.json`` of a head."""
    c = config
    d = dict(c.extra)
    d.update(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim, num_hidden_layers=1, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
        max_position_embeddings=c.max_position_embeddings, vocab_size=c.vocab_size,
        draft_vocab_size=c.draft_vocab_size, tie_word_embeddings=False,
    )
    # EAGLE's own loader (and ports of it, AngelSlim's) read the *presence* of target_hidden_size
    # as "this head carries its own embedding" and then skip the target's: written for a head that
    # shares it, the key left such a loader drafting with a random embedding, silently.
    if c.owns_embedding:
        d["target_hidden_size"] = c.target_hidden_size
    else:
        d.pop("target_hidden_size", None)
    if dtype is not None:
        d["torch_dtype"] = str(dtype).removeprefix("torch.")
    ours = {"layer_id_convention": _CONVENTION_NAME, "num_aux_layers": c.num_aux_layers}
    if c.aux_layer_ids is not None:
        ours["aux_layer_ids"] = list(c.aux_layer_ids)
    d["eagle3_ref"] = ours
    return d


_KNOWN = {"hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
          "draft_vocab_size", "target_hidden_size", "head_dim", "rms_norm_eps", "rope_theta",
          "max_position_embeddings", "eagle3_ref", "rope_scaling", "rope_parameters"}


def config_from_dict(d: dict, num_aux_layers: int | None = None) -> Eagle3Config:
    """Parse an official (or released, or exported) head ``config.json``."""
    for name in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"):
        if name not in d:
            raise ValueError(f"config.json: required field {name!r} is missing")
    rope = d.get("rope_scaling") or d.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"config.json: rope scaling {rope_type!r} is not supported by this reference (only plain RoPE)")
    theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
    ours = d.get("eagle3_ref") or {}
    ids = ours.get("aux_layer_ids")
    if ids is None and d.get("eagle_aux_hidden_state_layer_ids"):  # a vLLM export
        ids = from_convention(d["eagle_aux_hidden_state_layer_ids"], "vllm")
    if ids is None and (d.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids"):  # SGLang
        ids = from_convention(d["eagle_config"]["eagle_aux_hidden_state_layer_ids"], "sglang")
    k = num_aux_layers or ours.get("num_aux_layers") or (len(ids) if ids else 3)
    try:
        return Eagle3Config(
            hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            vocab_size=d["vocab_size"], draft_vocab_size=d.get("draft_vocab_size"),
            target_hidden_size=d.get("target_hidden_size"), head_dim=d.get("head_dim"),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            num_aux_layers=k, aux_layer_ids=tuple(ids) if ids else None,
            extra={key: v for key, v in d.items() if key not in _KNOWN},
        )
    except ValueError as err:
        raise ValueError(f"config.json: {err}") from None


def declared_layer_ids(raw: dict) -> dict[str, tuple[int, ...]]:
    """The tapped layer ids a config declares, per place, converted to ``hidden_states``
    indices: ``eagle3_ref`` (this project), ``vllm`` (top-level
    ``eagle_aux_hidden_state_layer_ids``), ``sglang`` (``eagle_config.…``, one less)."""
    out = {}
    ours = (raw.get("eagle3_ref") or {}).get("aux_layer_ids")
    if ours:
        out["eagle3_ref"] = tuple(int(i) for i in ours)
    if raw.get("eagle_aux_hidden_state_layer_ids"):
        out["vllm"] = tuple(from_convention(raw["eagle_aux_hidden_state_layer_ids"], "vllm"))
    sglang = (raw.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if sglang:
        out["sglang"] = tuple(from_convention(sglang, "sglang"))
    return out


def engine_config(config: Eagle3Config, engine: str, num_target_layers: int | None = None) -> dict:
    """``config.json`` for serving the head with ``engine`` ("vllm" or "sglang").

    Both get ``architectures: ["LlamaForCausalLMEagle3"]``. The tapped layers are written
    in the engine's own convention (vLLM: top-level ``eagle_aux_hidden_state_layer_ids``,
    as hidden_states indices; SGLang: ``eagle_config.eagle_aux_hidden_state_layer_ids``,
    one less, since SGLang captures at id + 1). Without explicit ids in the head config,
    ``num_target_layers`` gives EAGLE-3's default ids; with neither, the engine's default
    applies and no ids are written.
    """
    d = config_to_dict(config)
    d["architectures"] = ["LlamaForCausalLMEagle3"]
    ids = config.aux_layer_ids
    if ids is None and num_target_layers is not None:
        ids = default_aux_layer_ids(num_target_layers)
    if engine == "vllm":
        if ids is not None:
            d["eagle_aux_hidden_state_layer_ids"] = list(to_convention(ids, "vllm"))
    elif engine == "sglang":
        if ids is not None:
            d["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": list(to_convention(ids, "sglang")),
                                 "use_aux_hidden_state": True}
    else:
        raise ValueError(f"engine must be 'vllm' or 'sglang', got {engine!r}")
    return d


# ----------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------


def publish(path: str | os.PathLike) -> None:
    """Give a file or directory the permissions the user's umask gives a new one.
    ``tempfile`` makes everything owner-only (0600 / 0700), and a rename keeps that: without
    this, a head written atomically could not be read by another user or a serving container."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def _write_atomically(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        publish(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_draft_head(head: Eagle3DraftHead, path: str | os.PathLike, *, engine: str | None = None,
                    num_target_layers: int | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (official keys, tensors as they
    are: bit-identical on reload). ``engine="vllm"|"sglang"`` writes that engine's config."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    dtype = head.fc.weight.dtype
    config = config_to_dict(head.config, dtype) if engine is None else engine_config(head.config, engine, num_target_layers)
    config.setdefault("torch_dtype", str(dtype).removeprefix("torch."))
    _write_atomically(path / SAFETENSORS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    _write_atomically(path / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return path


def read_weights(path: Path) -> dict[str, Tensor]:
    if (path / SAFETENSORS).exists():
        return load_file(path / SAFETENSORS)
    if (path / TORCH_BIN).exists():
        return torch.load(path / TORCH_BIN, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: neither {SAFETENSORS} nor {TORCH_BIN} found")


def _validate_state(config: Eagle3Config, state: dict[str, Tensor], ignore_keys: tuple[str, ...]) -> dict[str, Tensor]:
    state = {k: v for k, v in state.items() if k not in ignore_keys}
    if config.draft_vocab_size == config.vocab_size and "d2t" not in state and "t2d" not in state:
        state["d2t"] = torch.zeros(config.vocab_size, dtype=torch.long)  # identity mapping
        state["t2d"] = torch.ones(config.vocab_size, dtype=torch.bool)
    shapes = expected_shapes(config)
    missing = [k for k in shapes if k not in state]
    if missing:
        raise ValueError(f"checkpoint is missing key(s) {missing}")
    unexpected = [k for k in state if k not in shapes]
    if unexpected:
        hint = " (the head uses the target's embedding: pass ignore_keys=('embed_tokens.weight',) to drop it)" \
            if unexpected == ["embed_tokens.weight"] else ""
        raise ValueError(f"checkpoint has unexpected key(s) {unexpected}{hint}")
    for k, shape in shapes.items():
        if tuple(state[k].shape) != shape:
            raise ValueError(f"checkpoint key {k!r} has shape {tuple(state[k].shape)}, config implies {shape}")
        if k not in ("d2t", "t2d") and not state[k].is_floating_point():
            raise ValueError(f"checkpoint key {k!r} must be floating point, got {state[k].dtype}")
    validate_vocab_mapping(state["d2t"], state["t2d"], config.vocab_size, config.draft_vocab_size)
    state["d2t"] = state["d2t"].long()
    return state


def check_head_fits_target(config: Eagle3Config, target: nn.Module) -> None:
    """Raise ``ValueError`` unless a head of this config can draft for ``target``."""
    tc = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    rows, width = target.get_input_embeddings().weight.shape
    if config.vocab_size != rows:
        raise ValueError(f"head vocab_size {config.vocab_size} != target vocabulary {rows} (embedding rows)")
    if config.target_hidden_size != tc.hidden_size:
        raise ValueError(f"head target_hidden_size {config.target_hidden_size} != target hidden_size {tc.hidden_size}")
    if not config.owns_embedding and width != config.hidden_size:
        raise ValueError(f"head hidden_size {config.hidden_size} != target embedding width {width}")
    n = num_decoder_layers(target)
    if config.aux_layer_ids is not None:
        validate_aux_layer_ids(config.aux_layer_ids, n)
    elif config.num_aux_layers == 3:
        default_aux_layer_ids(n)
    else:
        raise ValueError(f"head fuses {config.num_aux_layers} layers but names no aux_layer_ids")


def load_draft_head(path: str | os.PathLike, target: nn.Module | None = None, *, dtype: torch.dtype | None = None,
                    device: str | torch.device | None = None, ignore_keys: tuple[str, ...] = (),
                    attn_implementation: str = "sdpa") -> Eagle3DraftHead:
    """Load a head directory in the official format.

    With ``target``, the head is checked against it, takes its embedding, and by default
    its dtype and device. ``ignore_keys`` drops keys some exporters add (e.g. an
    ``embed_tokens.weight`` copied from the target).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a head directory (a str or a path), got {type(path).__name__} {path!r:.60}")
    path = Path(path)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.bfloat16), got {type(dtype).__name__} {dtype!r}")
    if device is not None:
        check_device("device", device)
    if path.is_file():
        raise ValueError(f"{path} is a file: a head is a directory holding {CONFIG} and its weights")
    if not (path / CONFIG).is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG} (not an EAGLE-3 head directory)")
    try:
        raw = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / CONFIG} is not valid JSON ({err})") from None
    try:
        state = read_weights(path)
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError) as err:  # truncated or not weights at all
        raise ValueError(f"{path}: the weights cannot be read, the file is damaged or incomplete "
                         f"({str(err).splitlines()[0][:120]})") from None
    num_aux = None
    if "fc.weight" in state and not (raw.get("eagle3_ref") or {}).get("num_aux_layers"):
        th = raw.get("target_hidden_size") or raw.get("hidden_size")
        if th and state["fc.weight"].shape[-1] % th == 0:
            num_aux = state["fc.weight"].shape[-1] // th  # e.g. 3 for every released head
    config = config_from_dict(raw, num_aux_layers=num_aux)
    state = _validate_state(config, state, tuple(ignore_keys))
    if target is not None:
        check_head_fits_target(config, target)
        embed = target.get_input_embeddings().weight
        dtype = dtype or embed.dtype
        device = device or embed.device
    with torch.device("meta"):
        head = Eagle3DraftHead(config, attn_implementation=attn_implementation)
    head.load_state_dict(state, strict=True, assign=True)
    head = head.to(device=device or "cpu")
    if dtype is not None:
        head = head.to(dtype)  # floating tensors only; d2t/t2d keep their dtypes
    if target is not None and not config.owns_embedding:
        head.attach_embedding(target.get_input_embeddings().weight)
    return head
