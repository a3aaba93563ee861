"""Converting heads between checkpoint formats (eagle3_ref/tools/convert.py): official, speculators,
SpecForge and ModelOpt.

Proofs: A -> B -> A gives back A's config.json and weights exactly, for every pair of the four
formats, for random heads written as this project, vLLM and SGLang write them, and for heads as
speculators', SpecForge's and ModelOpt's own writers shape them (ModelOpt's draft vocabulary in
its own order); what a destination cannot mean is refused by name; and a head converted to the
speculators format loads into speculators' own ``Eagle3DraftModel`` (0.9.0, installed by CI) and
computes the reference head's draft logits.
"""

import copy
import dataclasses
import importlib.util
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from eagle3_ref.checkpoint import save_draft_head
from eagle3_ref.draft_head import Eagle3DraftHead
from eagle3_ref.testing.strategies import head_configs, seeds, target_configs
from eagle3_ref.tools.check_head import declared_layer_ids
from eagle3_ref.tools.convert import (
    FORMATS,
    STASH,
    convert,
    detect_format,
    official_to_speculators,
    speculators_to_official,
)
from eagle3_ref.vocab import build_vocab_mapping

pytestmark = pytest.mark.checkpoint
speculators_installed = pytest.mark.skipif(importlib.util.find_spec("speculators") is None,
                                           reason="speculators is not installed (pip install --no-deps "
                                                  "speculators==0.9.0, and openai datasets hs-connectors loguru)")


def _files(path):
    return json.loads((path / "config.json").read_text()), load_file(str(path / "model.safetensors"))


def _same(a, b, what):
    (ca, wa), (cb, wb) = _files(a), _files(b)
    assert ca == cb, f"{what}: config.json differs:\n{ca}\n{cb}"
    assert wa.keys() == wb.keys(), f"{what}: keys {sorted(wa.keys() ^ wb.keys())}"
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and torch.equal(wa[k], wb[k]), f"{what}: {k} differs"


@pytest.mark.parametrize("engine", [None, "vllm", "sglang"], ids=["eagle3-ref", "vllm-export", "sglang-export"])
@settings(max_examples=10)
@given(tc=target_configs(min_layers=7, max_layers=12), seed=seeds, data=st.data())
def test_every_round_trip_gives_back_the_head_exactly(tmp_path_factory, engine, tc, seed, data):
    config = data.draw(head_configs(tc))
    if engine == "sglang" and config.aux_layer_ids and min(config.aux_layer_ids) == 0:
        config = dataclasses.replace(config, aux_layer_ids=None)  # SGLang cannot spell layer 0's input
    torch.manual_seed(seed)
    head = Eagle3DraftHead(config).to(data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16])))
    tmp = tmp_path_factory.mktemp("convert")
    official = save_draft_head(head, tmp / "official", engine=engine, num_target_layers=tc.num_hidden_layers)
    verifier = data.draw(st.sampled_from([None, "meta-llama/Llama-3.1-8B-Instruct"]))
    spec = convert(official, tmp / "spec", "speculators", verifier=verifier)
    assert detect_format(spec) == "speculators" and detect_format(official) == "official"
    back = convert(spec, tmp / "back", "official")
    _same(official, back, "official -> speculators -> official")
    # and from the speculators side, whatever it holds that official cannot comes back too
    _same(spec, convert(back, tmp / "spec2", "speculators", verifier=verifier), "speculators -> official -> speculators")
    cfg, weights = _files(spec)
    declared = set(declared_layer_ids(_files(official)[0]).values())  # what each convention says, as hidden_states ids
    assert cfg["eagle_aux_hidden_state_layer_ids"] == (list(declared.pop()) if declared else None)
    assert any(k.startswith("layers.0.") for k in weights) and not any(k.startswith("midlayer.") for k in weights)


def _speculators_head(tmp_path, **changes):
    """A head as speculators' converter writes one (its config fields, layers.0.* keys, a verifier)."""
    torch.manual_seed(0)
    head = Eagle3DraftHead(_small_config())
    layer = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-5,
             "max_position_embeddings": 4096, "hidden_act": "silu", "tie_word_embeddings": False,
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "architectures": ["LlamaForCausalLM"],
             "initializer_range": 0.02, "attention_bias": False, "mlp_bias": False}
    config = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3", "speculators_version": "0.9.0",
              "transformer_layer_config": layer, "draft_vocab_size": 30, "norm_before_residual": False,
              "target_hidden_size": None, "eagle_aux_hidden_state_layer_ids": [2, 4, 6], "norm_before_fc": False,
              "fc_norm": False, "norm_output": False, "embed_requires_grad": False, "dtype": "float32",
              "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                     "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 5}],
                                     "verifier": {"name_or_path": "meta-llama/Llama-3.1-8B-Instruct",
                                                  "architectures": ["LlamaForCausalLM"]}}}
    for key, value in changes.items():
        target = config["transformer_layer_config"] if key in layer or key in ("sliding_window", "layer_types") else config
        target[key] = value
    path = tmp_path / "speculators"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    weights = {("layers.0." + k[9:] if k.startswith("midlayer.") else k): v for k, v in head.state_dict().items()}
    save_file(weights, path / "model.safetensors")
    return path


def _small_config():
    from eagle3_ref.draft_head import Eagle3Config

    return Eagle3Config(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
                        draft_vocab_size=30, aux_layer_ids=(2, 4, 6))


def test_a_speculators_head_round_trips_through_official(tmp_path):
    spec = _speculators_head(tmp_path)
    official = convert(spec, tmp_path / "official", "official")
    raw, weights = _files(official)
    assert raw["eagle_aux_hidden_state_layer_ids"] == [2, 4, 6] and raw["draft_vocab_size"] == 30
    assert raw["speculators"]["fields"]["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 5
    assert "midlayer.self_attn.q_proj.weight" in weights
    _same(spec, convert(official, tmp_path / "back", "speculators"), "speculators -> official -> speculators")
    # the official loader reads the converted head as the layers it was trained on
    from eagle3_ref.checkpoint import load_draft_head

    assert load_draft_head(official).config.aux_layer_ids == (2, 4, 6)


@pytest.mark.parametrize("change, named", [
    ({"norm_before_residual": True}, "norm_before_residual"), ({"norm_before_fc": True}, "norm_before_fc"),
    ({"fc_norm": True}, "fc_norm"), ({"norm_output": True}, "norm_output"),
    ({"model_type": "qwen3"}, "model_type"), ({"num_hidden_layers": 2}, "num_hidden_layers"),
    ({"sliding_window": 64}, "sliding_window"), ({"layer_types": ["sliding_attention"]}, "sliding_window"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_what_official_cannot_mean_is_refused_by_name(tmp_path, change, named):
    spec = _speculators_head(tmp_path, **change)
    with pytest.raises(ValueError, match=named):
        convert(spec, tmp_path / "official", "official")
    assert not (tmp_path / "official").exists()  # nothing half-written


def test_weights_without_a_place_are_refused_and_layer_ids_must_agree(tmp_path):
    spec = _speculators_head(tmp_path)
    raw, weights = _files(spec)
    with pytest.raises(ValueError, match="layers.1.mlp.up_proj.weight"):
        speculators_to_official(raw, {**weights, "layers.1.mlp.up_proj.weight": torch.zeros(2)})
    official = copy.deepcopy(speculators_to_official(raw, weights)[0])
    official.pop("speculators")
    official["eagle3_ref"] = {"aux_layer_ids": [1, 4, 6]}  # vLLM's key says (2, 4, 6)
    with pytest.raises(ValueError, match="different tapped layers"):
        official_to_speculators(official, weights)
    with pytest.raises(ValueError, match="exists and is not empty"):
        convert(spec, spec, "official")
    with pytest.raises(ValueError, match="to must be one of"):
        convert(spec, tmp_path / "x", "hf")


@speculators_installed
def test_a_converted_head_loads_into_speculators_and_computes_the_same_logits(tmp_path):
    # speculators' own model, from the files convert wrote: its Eagle3DraftModel.from_pretrained
    # (which reads the verifier's config: a tiny Llama written here), then one step of its forward
    # with the reference head's inputs, logits taken from its lm_head. Its positions default to
    # 1 + arange (given here as the reference's 0-based ones) and it embeds with its own embedding
    # (loaded from the verifier when the head has none: the target's, as the reference's).
    from speculators.models.eagle3.config import Eagle3SpeculatorConfig
    from speculators.models.eagle3.core import Eagle3DraftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    target = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                                          num_attention_heads=4, num_key_value_heads=2))
    target.save_pretrained(tmp_path / "target")
    head = Eagle3DraftHead(_small_config())
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(3.0)  # logits of some size
    official = save_draft_head(head, tmp_path / "official")
    spec = convert(official, tmp_path / "spec", "speculators", verifier=str(tmp_path / "target"))
    config = Eagle3SpeculatorConfig.from_pretrained(spec)
    config.transformer_layer_config._attn_implementation = "sdpa"  # its default, flex attention, needs a GPU
    model = Eagle3DraftModel.from_pretrained(spec, config=config).eval()
    # The head has no embedding of its own, so speculators should take the verifier's. Its loader
    # does so only if its embedding holds a NaN ("NaN means uninitialized"), and transformers 5
    # leaves a weight missing from the checkpoint as uninitialised memory, NaN or not: which one
    # depends on what ran before in the process (the test below keeps the defect). The embedding
    # is the verifier's by construction, so it is set here, in the open.
    with torch.no_grad():
        model.embed_tokens.weight.copy_(target.get_input_embeddings().weight)
    T = 7
    features, ids = torch.randn(1, T, 3 * 32), torch.randint(0, 50, (1, T + 1))
    captured = []
    model.lm_head.register_forward_hook(lambda module, args, out: captured.append(out))
    head.embed_weight = target.get_input_embeddings().weight
    with torch.no_grad():
        model(hidden_states=features, input_ids=ids[:, 1:], document_ids=torch.zeros(1, T, dtype=torch.long),
              position_ids=torch.arange(T)[None], ttt_steps=1)
        want = head(ids[:, 1:], head.fuse(features), torch.arange(T)[None]).logits
    torch.testing.assert_close(captured[0], want, rtol=1e-5, atol=1e-5)
    assert model.config.eagle_aux_hidden_state_layer_ids == [2, 4, 6]
    assert int(model.t2d.sum()) == 30 and torch.equal(model.d2t, head.d2t)


# ----------------------------------------------------------------------------------------
# All four formats
# ----------------------------------------------------------------------------------------


def _verifier(path, vocab, width, layers, dtype=torch.float32):
    """A target directory as a conversion reads it: its depth, and its token embedding."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": layers}))
    save_file({"model.embed_tokens.weight": torch.randn(vocab, width).to(dtype)}, path / "model.safetensors")
    return str(path)


def _with_vocabulary(head, generator=None):
    """A head whose draft vocabulary was set (a random one, as training sets it)."""
    c = head.config
    if c.draft_vocab_size < c.vocab_size:
        mapping = build_vocab_mapping(torch.randint(0, 1000, (c.vocab_size,), generator=generator), c.draft_vocab_size)
        head.d2t.copy_(mapping.d2t)
        head.t2d.copy_(mapping.t2d)
    return head


# What a format cannot hold, refused by name: SpecForge's fc reads three layers; ModelOpt's is
# sized by the target's width; neither can spell layer 0's input; a never-set d2t.
CANNOT_HOLD = {"specforge": ("SpecForge's fc is 3 x", "has no 'specforge' spelling"),
               "modelopt": ("ModelOpt's fc and embedding are sized", "has no 'modelopt' spelling", "d2t: all zeros")}


@settings(max_examples=8, deadline=None)
@given(tc=target_configs(min_layers=7, max_layers=12), seed=seeds, data=st.data())
def test_every_pair_of_the_four_formats_round_trips_exactly(tmp_path_factory, tc, seed, data):
    config = data.draw(head_configs(tc))
    engine = data.draw(st.sampled_from([None, "vllm", "sglang"]), label="written as")
    if engine == "sglang" and config.aux_layer_ids and min(config.aux_layer_ids) == 0:
        config = dataclasses.replace(config, aux_layer_ids=None)
    torch.manual_seed(seed)
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), label="dtype")
    head = _with_vocabulary(Eagle3DraftHead(config)).to(dtype)
    tmp = tmp_path_factory.mktemp("formats")
    declared = data.draw(st.booleans(), label="layer ids written")
    official = save_draft_head(head, tmp / "official", engine=engine,
                               num_target_layers=tc.num_hidden_layers if declared else None)
    verifier = _verifier(tmp / "target", config.vocab_size, config.hidden_size, tc.num_hidden_layers, dtype)
    heads = {"official": official}
    for fmt in FORMATS[1:]:
        try:
            heads[fmt] = convert(official, tmp / fmt, fmt, verifier=verifier)
        except ValueError as err:
            assert any(reason in str(err) for reason in CANNOT_HOLD.get(fmt, ())), (fmt, err)
            continue
        assert detect_format(heads[fmt]) == fmt
    for a in heads:
        for b in heads:
            if a != b:
                there = convert(heads[a], tmp / f"{a}-{b}", b, verifier=None if b == "official" else verifier)
                back = convert(there, tmp / f"{a}-{b}-{a}", a, verifier=None if a == "official" else verifier)
                _same(heads[a], back, f"{a} -> {b} -> {a}")


def _native(src, dst, *, drop=(STASH, "eagle3ref"), permute=None):
    """A head as its own writer shapes it: no block of ours, and (``permute``) ModelOpt's draft
    vocabulary in its own order (by frequency, not by target id), ``lm_head`` rows with it."""
    cfg, weights = _files(src)
    for key in (STASH, "eagle3_ref"):
        cfg.pop(key, None)
    if permute is not None:
        targets = torch.arange(weights["d2t"].shape[0]) + weights["d2t"]
        weights["d2t"] = targets[permute] - torch.arange(len(permute))
        weights["lm_head.weight"] = weights["lm_head.weight"][permute]
    dst.mkdir()
    (dst / "config.json").write_text(json.dumps(cfg))
    save_file(weights, dst / "model.safetensors")
    return dst


def test_heads_as_specforge_and_modelopt_write_them_round_trip_and_mean_the_same_head(tmp_path):
    from eagle3_ref.checkpoint import load_draft_head

    torch.manual_seed(0)
    head = _with_vocabulary(Eagle3DraftHead(_small_config()))
    official = save_draft_head(head, tmp_path / "official")
    verifier = _verifier(tmp_path / "target", 50, 32, 8)
    order = torch.randperm(30)
    native = {"specforge": _native(convert(official, tmp_path / "sf", "specforge", verifier=verifier),
                                   tmp_path / "native-sf"),
              "modelopt": _native(convert(official, tmp_path / "mo", "modelopt"), tmp_path / "native-mo",
                                  permute=order)}
    for fmt, path in native.items():
        assert detect_format(path) == fmt
        for other in FORMATS:
            if other != fmt:
                there = convert(path, tmp_path / f"{fmt}-{other}", other,
                                verifier=None if other == "official" else verifier)
                _same(path, convert(there, tmp_path / f"{fmt}-{other}-{fmt}", fmt, verifier=verifier),
                      f"native {fmt} -> {other} -> {fmt}")
        # Read as an official head, it is the head it was made from: every weight, and d2t/t2d in the
        # official order (ModelOpt's rows put back in ascending target-id order).
        loaded = load_draft_head(convert(path, tmp_path / f"{fmt}-read", "official"))
        for k, v in head.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), (fmt, k)
        assert loaded.config.aux_layer_ids == (2, 4, 6)
    raw = _files(tmp_path / "modelopt-official")[0]
    assert raw["modelopt"]["draft_order"] == torch.argsort(order).tolist()
    # ModelOpt keeps no t2d; SpecForge ships the verifier's embedding.
    assert "t2d" not in _files(native["modelopt"])[1]
    assert torch.equal(_files(native["specforge"])[1]["embed_tokens.weight"],
                       load_file(tmp_path / "target" / "model.safetensors")["model.embed_tokens.weight"])


def _modelopt_head(tmp_path, name="mo", cfg_change=None, weight_change=None):
    torch.manual_seed(0)
    official = save_draft_head(_with_vocabulary(Eagle3DraftHead(_small_config())), tmp_path / f"{name}-official")
    path = _native(convert(official, tmp_path / f"{name}-0", "modelopt"), tmp_path / name)
    cfg, weights = _files(path)
    for key, value in (cfg_change or {}).items():
        (cfg["eagle_config"] if key in cfg["eagle_config"] else cfg)[key] = value
    weights.update(weight_change(weights) if weight_change else {})
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(weights, path / "model.safetensors")
    return path


@pytest.mark.parametrize("change, named", [
    ({"use_last_layernorm": False}, "eagle_config.use_last_layernorm"),
    ({"use_aux_hidden_state": False}, "eagle_config.use_aux_hidden_state"),
    ({"parallel_draft_step": 3}, "eagle_config.parallel_draft_step"),
    ({"use_mtp_layernorm": True}, "eagle_config.use_mtp_layernorm"),
    ({"architectures": ["Eagle3DeepseekV2ForCausalLM"]}, "architectures"),
    ({"num_hidden_layers": 2}, "num_hidden_layers"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"eagle_aux_hidden_state_layer_ids": []}, "eagle_aux_hidden_state_layer_ids"),
])
def test_what_official_cannot_mean_in_a_modelopt_head_is_refused_by_name(tmp_path, change, named):
    path = _modelopt_head(tmp_path, cfg_change=change)
    with pytest.raises(ValueError, match=named):
        convert(path, tmp_path / "out", "official")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights, named", [
    (lambda w: {"d2t": torch.zeros_like(w["d2t"])}, "d2t: all zeros"),  # ModelOpt's buffer, never set
    (lambda w: {"d2t": torch.cat([w["d2t"][:1], w["d2t"][:1] - 1, w["d2t"][2:]])}, "two draft ids to the same"),
    (lambda w: {"d2t": w["d2t"] + 100}, "outside the target vocabulary"),
    (lambda w: {"layers.1.mlp.up_proj.weight": torch.zeros(2)}, "layers.1.mlp.up_proj.weight"),
])
def test_a_modelopt_vocabulary_that_cannot_be_right_is_refused(tmp_path, weights, named):
    with pytest.raises(ValueError, match=named):
        convert(_modelopt_head(tmp_path, weight_change=weights), tmp_path / "out", "official")


def test_a_kept_config_never_undoes_an_edit_and_the_verifier_is_checked(tmp_path):
    torch.manual_seed(0)
    official = save_draft_head(_with_vocabulary(Eagle3DraftHead(_small_config())), tmp_path / "official")
    verifier = _verifier(tmp_path / "target", 50, 32, 8)
    mo = convert(official, tmp_path / "mo", "modelopt")
    cfg, weights = _files(mo)
    cfg["rms_norm_eps"] = 1e-3  # edited after the conversion: the kept official config says 1e-6
    (mo / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"rms_norm_eps: changed since .* {STASH}"):
        convert(mo, tmp_path / "back", "official")
    # SpecForge ships the target's embedding: no verifier, no conversion; another target's, refused.
    with pytest.raises(ValueError, match="verifier: SpecForge's layout ships the target's token embedding"):
        convert(official, tmp_path / "sf0", "specforge")
    sf = _native(convert(official, tmp_path / "sf", "specforge", verifier=verifier), tmp_path / "native-sf")
    back = convert(sf, tmp_path / "sf-official", "official")
    other = _verifier(tmp_path / "other", 50, 32, 8)
    with pytest.raises(ValueError, match="not the one this SpecForge head shipped"):
        convert(back, tmp_path / "sf-again", "specforge", verifier=other)
    # An official head that declares no tapped layers: EAGLE-3's default for the verifier's depth.
    bare = save_draft_head(_with_vocabulary(Eagle3DraftHead(dataclasses.replace(_small_config(), aux_layer_ids=None))),
                           tmp_path / "bare")
    with pytest.raises(ValueError, match="verifier: the tapped layers"):
        convert(bare, tmp_path / "bare-mo", "modelopt")
    cfg, _ = _files(convert(bare, tmp_path / "bare-mo", "modelopt", verifier=verifier))
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]  # sorted({1, 8//2-1, 8-4})
    # What SpecForge and the official format cannot mean.
    for flag, value in (("fc_norm", True), ("norm_output", False)):
        cfg, weights = _files(sf)
        cfg[flag] = value
        bad = tmp_path / f"sf-{flag}"
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps(cfg))
        save_file(weights, bad / "model.safetensors")
        with pytest.raises(ValueError, match=flag):
            convert(bad, tmp_path / f"sf-{flag}-out", "official")


def test_modelopts_default_layers_are_eagle3s_in_its_convention():
    from eagle3_ref.fusion import default_aux_layer_ids, to_convention

    for n in range(7, 81):  # ModelOpt: sorted({1, max(0, n//2-1), max(0, n-4)}), forward hooks on layers[L]
        assert list(to_convention(default_aux_layer_ids(n), "modelopt")) == sorted({1, max(0, n // 2 - 1),
                                                                                       max(0, n - 4)})


def test_the_command_line_knows_every_format():
    from eagle3_ref.cli.convert import FORMATS as CLI_FORMATS

    assert CLI_FORMATS == FORMATS


def test_the_shipped_head_converts_to_each_format_and_back_bit_for_bit_from_the_command_line(tmp_path, capsys):
    # The toy head was trained by eagle3-ref train; SpecForge's layout takes the toy target's embedding.
    from eagle3_ref.cli import main
    from eagle3_ref.toy import TOY_DIR

    for fmt in FORMATS[1:]:
        assert main(["convert", str(TOY_DIR / "head"), str(tmp_path / fmt), "--to", fmt,
                     "--verifier", str(TOY_DIR / "target")]) == 0
        assert main(["convert", str(tmp_path / fmt), str(tmp_path / f"{fmt}-back"), "--to", "official"]) == 0
        out = capsys.readouterr().out
        assert f"converted {fmt} -> official" in out, out
        _same(TOY_DIR / "head", tmp_path / f"{fmt}-back", f"the toy head -> {fmt} -> official")
    # Without the target, SpecForge's layout cannot be written, and nothing is.
    assert main(["convert", str(TOY_DIR / "head"), str(tmp_path / "sf-none"), "--to", "specforge"]) == 2
    assert "SpecForge's layout ships the target's token embedding" in capsys.readouterr().err
    assert not (tmp_path / "sf-none").exists()


def test_a_source_read_in_the_wrong_format_is_refused_by_its_keys(tmp_path):
    from eagle3_ref.toy import TOY_DIR

    for source, keys in (("modelopt", "layers.0."), ("speculators", "layers.0.")):
        with pytest.raises(ValueError, match=f"no {keys}\\* weights: not a"):
            convert(TOY_DIR / "head", tmp_path / source, "official", source=source)
    mo = convert(TOY_DIR / "head", tmp_path / "mo", "modelopt")
    with pytest.raises(ValueError, match="no midlayer.\\* weights: not a SpecForge head"):
        convert(mo, tmp_path / "sf", "official", source="specforge")
