"""AngelSlim 0.5.0's EAGLE-3 inference (a packaged port of the official ``EaModel``), judged on its
decoding loop: tree drafting, verification and cache bookkeeping, many cycles in a row.

AngelSlim (Tencent, ``pip install --no-deps angelslim==0.5.0``) decodes with
``angelslim.compressor.speculative.inference.models.eagle3.eagle3_model.Eagle3Model``: a forked
KV-cache target (``target/modeling_llama_kv.py``, ``modeling_qwen3_kv.py``), the drafter
``Llama3Eagle3Drafter`` (``topK_genrate``: the official tree growth), and the official helpers
``initialize_tree``, ``tree_decoding``, ``evaluate_posterior`` and ``update_inference_inputs``
(``angelslim/compressor/speculative/utils/util.py``). The adapter calls that code; nothing of
it is copied.

How it is run here (each step is AngelSlim's own ``Eagle3Model.from_pretrained``, in order):

* Imports. ``import angelslim`` fails without its full dependency set (its top ``__init__``
  imports quantisation code and ``datasets``). The inference modules themselves need none of it:
  the adapter registers the parent packages ``angelslim``, ``angelslim.compressor``,
  ``angelslim.compressor.speculative`` and ``angelslim.utils`` as bare packages (their
  ``__init__`` not run) and imports the modules it calls.
* The target is written to a temporary directory (``save_pretrained``, with the
  ``model.safetensors.index.json`` its embedding loader reads) and loaded by AngelSlim's loader
  into its forked KV-cache class; the head is written in the official format by
  :func:`eagle3_ref.checkpoint.save_draft_head` and its weights loaded as ``from_pretrained``
  loads them (``strict=False``); the adapter then checks that every weight but the embedding
  (taken from the target) was matched.
* The tokenizer is only where ``Eagle3Model`` reads the EOS id (and its thinking-mode tokens, unused
  here): a plain object carrying ``eos_token_id`` stands in for it.
* Tree shape: ``total_token`` = ``num_nodes`` (root included), ``depth`` = ``max_depth - 1``
  (EAGLE counts expansion rounds after level 1), ``top_k``.

Defects found (``tests/test_peers.py`` keeps each as ``xfail(strict=True)``; docs/peers.md has
standalone reproductions). Three are transformers 5 against code written for transformers 4; the
adapter gets round two of them in the open, or nothing could be judged:

* No head config builds the drafter: ``config.rope_scaling`` is the v5 ``rope_parameters`` dict,
  never None, and ``_init_rope`` indexes it with ``["type"]`` (``KeyError: 'type'``). The adapter
  sets the head config's ``rope_scaling`` to None and its ``rope_theta`` from ``rope_parameters``
  before it builds the drafter: the v4 reading of the same plain RoPE (:data:`ROPE_CONFIG_DEFECT`).
  It reads a plain-RoPE target's config the same way.
* Its KV-cache Llama cannot be loaded from a plain-RoPE config (``KeyError: 'default'``), nor
  its KV-cache Qwen3 from any (every Qwen3 uses plain RoPE): Qwen3 is not supported here.
* Loaded by ``from_pretrained``, its KV-cache models keep RoPE frequencies the loader never
  initialises, so the target's logits are wrong (:data:`INV_FREQ_DEFECT`). The adapter builds the
  class with its own constructor and loads the target's weights with ``load_state_dict``
  (:meth:`AngelSlimAdapter.target_model`).
* A head whose ``config.json`` names ``target_hidden_size`` but whose checkpoint carries no
  ``embed_tokens.weight`` drafts with a randomly initialised embedding, without an error.
  (eagle3-ref's own writer wrote that key for every head until this was found.)
* From the second tree level on, ``_get_topk_tokens`` returns the first frontier node's
  log-probs for all of them (``topk.values[0]``): wrong path scores, wrong trees.
* Among tied path scores its rerank (``torch.topk``) can keep a node without its parent: the
  output is then not the target's.
* Its loop stops only once it has *more* than ``max_new_tokens`` new tokens and never cuts a
  cycle's tokens back; and it stops on an EOS only after appending the whole cycle the EOS was
  accepted in. The adapter returns what AngelSlim returns: ``tests/test_peers.py`` judges the
  tokens it emits up to ``max_new_tokens`` (and up to the first EOS) against ``generate``.

* Its warpers (``prepare_logits_processor``, the official code's) apply top-p before top-k;
  transformers' ``generate`` applies top-k first, so with both set it samples another law.

Pieces: ``generate``, greedy and sampled; ``tests/test_peers.py`` also compares the tree its
drafter grows (``build`` gives the model, whose ``eagle_layer.topK_genrate`` it calls) with the
reference's. Its verification draws from Python's global ``random`` and ``torch.multinomial``
without a generator: :meth:`AngelSlimAdapter.decode` seeds both from the caller's generator for
each call (and puts torch's global state back), so sampling is judged statistically; the
conformance suite's scripted sampler cannot drive it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import random
import sys
import tempfile
import types
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import torch

from eagle3_ref.testing.adapter import Unsupported

__all__ = ["AngelSlimAdapter", "ADAPTER", "angelslim_modules", "ROPE_CONFIG_DEFECT",
           "INV_FREQ_DEFECT", "TAPS", "SUPPORTED_ARCHITECTURES"]

VERSION = "0.5.0"
ROPE_CONFIG_DEFECT = ("AngelSlim 0.5.0 on transformers 5: the drafter's _init_rope reads config.rope_scaling['type'], "
                      "but v5 configs hold rope_parameters there (KeyError: 'type')")
INV_FREQ_DEFECT = ("AngelSlim 0.5.0 on transformers 5: KV-cache models loaded by from_pretrained keep RoPE "
                   "frequencies (inv_freq) the loader never initialises, so the target's logits are wrong")
TAPS = ("AngelSlim's KV-cache targets tap hidden_states[2], [N//2] and [N-3] whatever the head's config names: heads "
        "tapping other layers, or targets of fewer than 7 layers (where those repeat), are not supported")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


@cache
def angelslim_modules() -> SimpleNamespace:
    """AngelSlim's EAGLE-3 inference modules, imported without running its package ``__init__``s."""
    spec = importlib.util.find_spec("angelslim")
    if spec is None:
        raise ImportError(f"angelslim is not installed (pip install --no-deps angelslim=={VERSION})")
    root = Path(spec.submodule_search_locations[0])
    for name in ("angelslim", "angelslim.compressor", "angelslim.compressor.speculative", "angelslim.utils"):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            package.__spec__.submodule_search_locations = package.__path__
            sys.modules[name] = package
    base = "angelslim.compressor.speculative.inference.models.eagle3"
    model = importlib.import_module(f"{base}.eagle3_model")
    return SimpleNamespace(
        model=model,
        Eagle3Model=model.Eagle3Model,
        ModelLoader=model.ModelLoader,
        Config=importlib.import_module(f"{base}.configuration_eagle3_model").Eagle3Config,
        Drafter=importlib.import_module(f"{base}.draft").Llama3Eagle3Drafter,
        util=importlib.import_module("angelslim.compressor.speculative.utils.util"),
    )


def _is_llama3_rope(config) -> bool:
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_type") == "llama3"


class AngelSlimAdapter:
    """AngelSlim 0.5.0's ``Eagle3Model`` decoding loop (module docstring)."""

    name = f"angelslim {VERSION}"
    precision = "float32"
    pieces = ("generate",)

    def load_head(self, config, state_dict, embed_weight):
        """The head as AngelSlim gets it: the official files (written when a target is given)."""
        return SimpleNamespace(config=dict(config), state_dict=dict(state_dict), embed_weight=embed_weight,
                               aux_layer_ids=None)

    def build(self, target, head, folder: Path, *, num_nodes: int, max_depth: int, top_k: int,
              eos_token_id: int | None = None):
        """AngelSlim's ``Eagle3Model`` for ``target`` and ``head``, its files in ``folder``."""
        from safetensors.torch import save_file

        architecture = (getattr(target.config, "architectures", None) or [type(target).__name__])[0]
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise Unsupported(f"AngelSlim's KV-cache targets tried here: {', '.join(SUPPORTED_ARCHITECTURES)}; "
                              f"not {architecture}")
        n = target.config.num_hidden_layers
        taps = sorted({2, n // 2, n - 3})  # its KV-cache models tap the inputs of these layers, whatever the head says
        wanted = (head.config.get("eagle3_ref") or {}).get("aux_layer_ids") or taps
        if len(taps) != 3 or list(wanted) != taps:
            raise Unsupported(TAPS)
        mods = angelslim_modules()
        target_dir, head_dir = folder / "target", folder / "head"
        target.save_pretrained(target_dir)
        index = {"metadata": {}, "weight_map": {k: "model.safetensors" for k in target.state_dict()}}
        (target_dir / "model.safetensors.index.json").write_text(json.dumps(index))
        head_dir.mkdir(parents=True)
        (head_dir / "config.json").write_text(json.dumps(head.config))  # the official files, as the suite gives them
        save_file({k: v.contiguous() for k, v in head.state_dict.items()}, head_dir / "model.safetensors")

        dtype = next(target.parameters()).dtype
        base = self.target_model(target, mods.ModelLoader.SUPPORTED_ARCHITECTURES[architecture]).to(dtype).eval()
        config = mods.Config.from_pretrained(str(head_dir))
        config.rope_theta = (config.rope_parameters or {}).get("rope_theta", 10000.0)
        config.rope_scaling = None  # ROPE_CONFIG_DEFECT: the v4 reading of the same plain RoPE
        drafter = mods.Drafter(config, total_tokens=num_nodes, depth=max_depth - 1, top_k=top_k, threshold=1.0,
                               path=str(target_dir), load_emb=True)
        if config.vocab_size == config.draft_vocab_size:  # as from_pretrained does
            del drafter.d2t
            del drafter.t2d
        missing, unexpected = drafter.load_state_dict(
            mods.ModelLoader.load_eagle_state_dict(str(head_dir), torch.device("cpu")), strict=False)
        stray = [k for k in missing if k != "embed_tokens.weight"] + [k for k in unexpected if k not in ("d2t", "t2d")]
        if stray:  # the handoff, not AngelSlim: every weight of the head must reach the drafter
            raise AssertionError(f"AngelSlim's drafter did not take the head's weights: missing/unexpected {stray}")
        drafter.to(device=next(base.parameters()).device, dtype=dtype)
        drafter.init_tree()
        # no EOS: an id no token has (its stop check compares the new tokens with eos_token_id, and None fails there)
        tokenizer = SimpleNamespace(eos_token_id=-1 if eos_token_id is None else eos_token_id, stop_think_id=None,
                                    step_split_ids=[])
        return mods.Eagle3Model(base, tokenizer, drafter)

    @staticmethod
    def target_model(target, kv_class):
        """AngelSlim's KV-cache class for ``target``, built by its own constructor and given the
        target's weights (INV_FREQ_DEFECT: built by ``from_pretrained`` on transformers 5, its RoPE
        frequencies are left uninitialised). A plain-RoPE config is read as v4 did (ROPE_CONFIG_DEFECT)."""
        config = type(target.config).from_dict(target.config.to_dict())
        if not _is_llama3_rope(config):
            rope = getattr(config, "rope_parameters", None) or {}
            if rope.get("rope_type", "default") != "default":
                raise Unsupported(f"RoPE type {rope.get('rope_type')!r}: only plain RoPE and llama3 are read here")
            config.rope_theta = rope.get("rope_theta", 10000.0)
            config.rope_scaling = None
        with torch.device("cpu"):
            model = kv_class(config)
        missing, unexpected = model.load_state_dict(target.state_dict(), strict=False)
        stray = [k for k in missing if not k.endswith("inv_freq")] + list(unexpected)
        if stray:
            raise AssertionError(f"AngelSlim's {kv_class.__name__} did not take the target's weights: {stray}")
        return model.to(next(target.parameters()).device)

    def generate(self, target, head, input_ids, *, max_new_tokens, num_nodes, max_depth, top_k, eos_token_id=None,
                 temperature=0.0, generator=None, sampling_top_k=0, sampling_top_p=1.0):
        """AngelSlim's ``eagle_generate``: (sequences, tokens appended by each cycle after the
        prefill), as it returns them (it may run past ``max_new_tokens``: module docstring)."""
        if input_ids.shape[0] != 1:
            raise Unsupported("AngelSlim decodes one sequence")
        with tempfile.TemporaryDirectory(prefix="angelslim-") as folder:
            model = self.build(target, head, Path(folder), num_nodes=num_nodes, max_depth=max_depth, top_k=top_k,
                               eos_token_id=eos_token_id)
            return self.decode(model, input_ids, max_new_tokens=max_new_tokens, num_nodes=num_nodes,
                               temperature=temperature, generator=generator, sampling_top_k=sampling_top_k,
                               sampling_top_p=sampling_top_p)

    @staticmethod
    def decode(model, input_ids, *, max_new_tokens, num_nodes, temperature=0.0, generator=None, sampling_top_k=0,
               sampling_top_p=1.0):
        """One ``eagle_generate`` of a built model. Sampling draws from Python's global ``random``
        (acceptance) and torch's global generator (``torch.multinomial``), as the official code
        does: both are seeded from ``generator`` for the call, and torch's global state is put
        back afterwards, so a seeded run is reproducible and leaves the caller's stream alone."""
        room = input_ids.shape[1] + max_new_tokens + 2 * num_nodes + 32  # its KV cache and step bound
        # its warpers: temperature, then top-p (0 = off), then top-k (0 = off)
        kwargs = dict(temperature=float(temperature), top_p=float(sampling_top_p) if sampling_top_p < 1 else 0.0,
                      top_k=int(sampling_top_k), max_new_tokens=max_new_tokens, max_length=room, log=True)
        if temperature == 0:
            sequences, _, _, accepted = model.eagle_generate(input_ids, **kwargs)
        else:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None \
                else random.randrange(2**31 - 1)
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                torch.manual_seed(seed)
                sequences, _, _, accepted = model.eagle_generate(input_ids, **kwargs)
        return sequences, [int(a) + 1 for a in accepted]

ADAPTER = AngelSlimAdapter()
