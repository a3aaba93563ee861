"""The official EAGLE-3 checkpoint format.

Proofs: save -> load is bit-identical (safetensors, and pytorch_model.bin on read); the
LLaMA-3.1-8B head's key set and shapes come out of the config alone (meta device); every
kind of bad directory gets an error naming the key or field, before anything is built.
"""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

from eagle3_ref.checkpoint import (
    OFFICIAL_KEYS,
    config_from_dict,
    engine_config,
    expected_shapes,
    load_draft_head,
    save_draft_head,
)
from eagle3_ref.draft_head import Eagle3Config, Eagle3DraftHead
from eagle3_ref.testing.strategies import build_draft_head, build_target, head_configs, seeds, target_configs

pytestmark = pytest.mark.checkpoint

TARGET = LlamaConfig(vocab_size=30, hidden_size=8, intermediate_size=16, num_hidden_layers=7,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
LLAMA31_8B_HEAD = Eagle3Config(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                               num_key_value_heads=8, vocab_size=128256, draft_vocab_size=32000, rms_norm_eps=1e-5)


def test_llama_3_1_8b_head_shapes_without_allocating():
    shapes = expected_shapes(LLAMA31_8B_HEAD)  # meta device: builds in milliseconds, no 1.7 GB
    assert set(shapes) == set(OFFICIAL_KEYS)
    assert shapes["fc.weight"] == (4096, 12288)
    assert shapes["midlayer.self_attn.q_proj.weight"] == (4096, 8192)
    assert shapes["midlayer.self_attn.k_proj.weight"] == (1024, 8192)
    assert shapes["midlayer.self_attn.v_proj.weight"] == (1024, 8192)
    assert shapes["midlayer.self_attn.o_proj.weight"] == (4096, 4096)
    assert shapes["lm_head.weight"] == (32000, 4096)
    assert shapes["d2t"] == (32000,) and shapes["t2d"] == (128256,)
    with torch.device("meta"):
        head = Eagle3DraftHead(LLAMA31_8B_HEAD)
    assert all(p.is_meta for p in head.parameters())
    assert sum(p.numel() for p in head.parameters()) == 4096 * 12288 + 4096 * 8192 + 2 * 1024 * 8192 \
        + 4096 * 4096 + 3 * 14336 * 4096 + 4 * 4096 + 32000 * 4096


@given(config=target_configs(min_layers=3, max_layers=8).flatmap(head_configs), seed=seeds,
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
def test_round_trip_is_bit_identical(tmp_path_factory, config, seed, dtype):
    path = tmp_path_factory.mktemp("head")
    embed = None if config.owns_embedding else torch.randn(config.vocab_size, config.hidden_size)
    head = build_draft_head(config, seed, embed, dtype)
    save_draft_head(head, path)
    assert sorted(load_file(path / "model.safetensors")) == sorted(head.state_dict())
    loaded = load_draft_head(path)
    assert loaded.config == head.config
    for k, v in head.state_dict().items():
        w = loaded.state_dict()[k]
        assert w.dtype == v.dtype and torch.equal(w, v), k


def test_pytorch_model_bin_is_read_too(tmp_path):
    config = Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=20, draft_vocab_size=7)
    head = build_draft_head(config, 1, torch.randn(20, 8), torch.float32)
    save_draft_head(head, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(head.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_draft_head(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in head.state_dict().items())


def test_load_with_target_takes_its_embedding_dtype_and_checks_the_fit(tmp_path):
    tc = TARGET
    target = build_target(tc, 0, torch.float32)
    head = build_draft_head(Eagle3Config.for_target(tc, draft_vocab_size=5), 0, dtype=torch.float64)
    save_draft_head(head, tmp_path)
    loaded = load_draft_head(tmp_path, target)
    assert loaded.fc.weight.dtype == torch.float32
    assert loaded.embed_weight.data_ptr() == target.get_input_embeddings().weight.data_ptr()  # shared, not copied


def _write(path, config: dict, state: dict):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")


def _official(tmp_path, **config_changes):
    config = Eagle3Config(hidden_size=8, intermediate_size=12, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=20, draft_vocab_size=6)
    head = build_draft_head(config, 3, torch.randn(20, 8), torch.float32)
    save_draft_head(head, tmp_path / "ok")
    raw = json.loads((tmp_path / "ok" / "config.json").read_text())
    raw.update(config_changes)
    return raw, dict(head.state_dict())


def test_released_config_quirks_load(tmp_path):
    # A released head: num_hidden_layers != 1, explicit head_dim, no rope_theta, no eagle3_ref block.
    raw, state = _official(tmp_path, num_hidden_layers=40, architectures=["LlamaForCausalLMEagle3"])
    for k in ("rope_theta", "eagle3_ref"):
        raw.pop(k)
    assert "target_hidden_size" not in raw  # a head sharing the target's embedding, as the released ones write it
    _write(tmp_path / "released", raw, state)
    head = load_draft_head(tmp_path / "released")
    assert head.config.rope_theta == 10000.0 and head.config.num_aux_layers == 3
    # No draft_vocab_size and no d2t/t2d: the identity over the full vocabulary.
    raw, state = _official(tmp_path)
    raw.pop("draft_vocab_size")
    state.pop("d2t"), state.pop("t2d")
    state["lm_head.weight"] = torch.randn(20, 8)
    _write(tmp_path / "full", raw, state)
    head = load_draft_head(tmp_path / "full")
    assert head.config.draft_vocab_size == 20 and head.d2t.eq(0).all() and head.t2d.all()


def _bad(tmp_path, name, raw, state, match, **kwargs):
    _write(tmp_path / name, raw, state)
    with pytest.raises(ValueError, match=match):
        load_draft_head(tmp_path / name, **kwargs)


def test_bad_directories_are_named(tmp_path):
    raw, state = _official(tmp_path)
    _bad(tmp_path, "missing", raw, {k: v for k, v in state.items() if k != "norm.weight"}, r"missing key\(s\) \['norm.weight'\]")
    _bad(tmp_path, "unexpected", raw, {**state, "embed_tokens.weight": torch.zeros(20, 8)}, "ignore_keys")
    _bad(tmp_path, "shape", raw, {**state, "fc.weight": torch.zeros(8, 25)}, r"'fc.weight' has shape \(8, 25\)")
    d2t = state["d2t"].clone()
    d2t[-1] = 100
    _bad(tmp_path, "d2t", raw, {**state, "d2t": d2t}, "d2t points outside the target vocabulary")
    t2d = state["t2d"].clone()
    t2d[(~t2d).nonzero()[0]] = True  # one token too many
    _bad(tmp_path, "t2d", raw, {**state, "t2d": t2d}, "t2d marks 7 tokens, but the draft vocabulary has 6")
    _bad(tmp_path, "field", {k: v for k, v in raw.items() if k != "hidden_size"}, state, "'hidden_size' is missing")
    _bad(tmp_path, "rope", {**raw, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, state, "yarn")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_draft_head(tmp_path / "nowhere")
    # An exporter's extra embedding can be dropped on request.
    _write(tmp_path / "extra", raw, {**state, "embed_tokens.weight": torch.zeros(20, 8)})
    assert load_draft_head(tmp_path / "extra", ignore_keys=("embed_tokens.weight",)).config.draft_vocab_size == 6


def test_head_must_fit_its_target(tmp_path):
    tc = TARGET
    target = build_target(tc, 0)
    ok = Eagle3Config.for_target(tc)
    cases = {
        "vocab_size": (ok.__class__(**{**ok.to_dict(), "vocab_size": tc.vocab_size + 1}), "vocab_size"),
        "hidden": (ok.__class__(**{**ok.to_dict(), "target_hidden_size": tc.hidden_size + 2}), "target_hidden_size"),
        "layers": (ok.__class__(**{**ok.to_dict(), "aux_layer_ids": (0, 1, tc.num_hidden_layers)}), "outside"),
    }
    for name, (config, match) in cases.items():
        head = build_draft_head(config, 0)
        save_draft_head(head, tmp_path / name)
        with pytest.raises(ValueError, match=match):
            load_draft_head(tmp_path / name, target)


def test_engine_exports():
    config = Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=20, aux_layer_ids=(2, 16, 29))
    vllm, sglang = engine_config(config, "vllm"), engine_config(config, "sglang")
    assert vllm["architectures"] == sglang["architectures"] == ["LlamaForCausalLMEagle3"]
    assert vllm["eagle_aux_hidden_state_layer_ids"] == [2, 16, 29]
    assert sglang["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 15, 28]
    # Each export reads back as the same three layers.
    assert config_from_dict(vllm).aux_layer_ids == config_from_dict(sglang).aux_layer_ids == (2, 16, 29)
    default = Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1, vocab_size=20)
    assert engine_config(default, "vllm", num_target_layers=32)["eagle_aux_hidden_state_layer_ids"] == [2, 16, 29]
    assert "eagle_aux_hidden_state_layer_ids" not in engine_config(default, "vllm")
    with pytest.raises(ValueError, match="engine"):
        engine_config(config, "trtllm")


def test_saved_config_is_llama_style(tmp_path):
    config = Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=50, draft_vocab_size=10, rms_norm_eps=1e-5)
    head = build_draft_head(config, 0, torch.randn(50, 8))
    save_draft_head(head, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for field in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                  "rope_theta", "max_position_embeddings", "vocab_size", "draft_vocab_size"):
        assert field in raw, field
    assert raw["num_hidden_layers"] == 1 and raw["draft_vocab_size"] == 10 and raw["vocab_size"] == 50
    # EAGLE's loader reads the presence of target_hidden_size as "this checkpoint carries its own
    # embedding" and skips the target's: a head that shares the target's must not write it ...
    assert "target_hidden_size" not in raw


def test_a_head_narrower_than_its_target_writes_its_width_and_its_embedding(tmp_path):
    # ... and one that owns its embedding (hidden_size != target_hidden_size) writes both.
    config = Eagle3Config(hidden_size=8, intermediate_size=8, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=50, draft_vocab_size=10, target_hidden_size=12)
    save_draft_head(build_draft_head(config, 0), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["target_hidden_size"] == 12
    assert "embed_tokens.weight" in load_file(tmp_path / "model.safetensors")
    assert load_draft_head(tmp_path).config.target_hidden_size == 12
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files
