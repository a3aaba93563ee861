"""``bench --shape``: a target shape timed with random weights (eagle3_ref.tools.shapes).

What could go wrong: the named shape is not the model it names (a typo in one field makes every
GPU timing a different model's), the head is not shaped like the released one, a plain step's
time includes the prefill or a cycle's includes it (both make a tree look better or worse than
it is), or the break-even tau and the speedups disagree with the times they come from.
"""

import json

import pytest
import torch

from eagle3_ref.checkpoint import expected_shapes
from eagle3_ref.cli import main
from eagle3_ref.costaware.costs import CostModel
from eagle3_ref.decoding import speculative_generate
from eagle3_ref.generate import GenerationOutput
from eagle3_ref.tools import shapes
from eagle3_ref.tree import TreeConfig

TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 8,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 1024}


def test_the_named_shape_is_llama_3_1_8b_and_its_head_the_released_one():
    # built on the meta device: no memory, no time
    target, head = shapes.random_pair(shapes.shape_config("llama-3.1-8b"), device="meta", dtype=torch.bfloat16,
                                      draft_vocab_size=shapes.DRAFT_VOCAB["llama-3.1-8b"])
    assert sum(p.numel() for p in target.parameters()) == 8_030_261_248  # Llama-3.1-8B's parameter count
    assert next(target.parameters()).dtype == torch.bfloat16
    got = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert got == expected_shapes(head.config)
    assert got["fc.weight"] == (4096, 12288)  # three tapped layers: EAGLE-3's defaults for 32 layers
    assert got["midlayer.self_attn.q_proj.weight"] == (4096, 8192)
    assert got["midlayer.self_attn.k_proj.weight"] == (1024, 8192)
    assert got["midlayer.mlp.gate_proj.weight"] == (14336, 4096)
    assert got["lm_head.weight"] == (32000, 4096)
    assert got["t2d"] == (128256,)
    assert head.config.aux_layer_ids is None  # (2, 16, 29) at run time
    assert head.embed_weight.shape == (128256, 4096)


def test_a_config_file_or_directory_is_a_shape_and_layers_can_be_cut(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "model_type": "qwen2", "use_sliding_window": True,
                                                      "sliding_window": 16, "max_window_layers": 4}))
    full = shapes.shape_config(str(tmp_path))
    assert full.model_type == "qwen2" and full.num_hidden_layers == 8
    cut = shapes.shape_config(str(tmp_path / "config.json"), num_layers=5)
    assert cut.num_hidden_layers == 5
    assert cut.layer_types == full.layer_types[:5]  # a hybrid target keeps the kind of each kept layer
    assert "sliding_attention" in cut.layer_types and "full_attention" in cut.layer_types
    assert shapes.shape_config("llama-3.1-8b", num_layers=2).num_hidden_layers == 2


@pytest.mark.parametrize("shape, layers, message", [
    ("llama-3.1-9b", None, "neither a known shape (llama-3.1-8b) nor a config.json"),
    ("<not json>", None, "is not valid JSON"),
    ("<no model_type>", None, "has no model_type"),
    ('{"model_type": "nonesuch"}', None, "model_type 'nonesuch': not a model type transformers knows"),
    ('{"model_type": "llama", "hidden_size": 30, "num_attention_heads": 4}', None,
     "not a multiple of the number of attention heads"),
    ("llama-3.1-8b", 0, "--shape-layers must be in [1, 32]"),
    ("llama-3.1-8b", 33, "--shape-layers must be in [1, 32]"),
])
def test_a_shape_that_cannot_be_built_is_named(shape, layers, message, tmp_path):
    (tmp_path / "bad.json").write_text("{model_type: llama")
    (tmp_path / "untyped.json").write_text(json.dumps({"hidden_size": 8}))
    shape = {"<not json>": str(tmp_path / "bad.json"), "<no model_type>": str(tmp_path / "untyped.json")}.get(shape,
                                                                                                            shape)
    if shape.startswith("{"):
        (tmp_path / "given.json").write_text(shape)
        shape = str(tmp_path / "given.json")
    with pytest.raises(ValueError) as err:
        shapes.shape_config(shape, layers)
    assert message in str(err.value)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A config.json of a tiny Llama (8 layers)."""
    path = tmp_path_factory.mktemp("shape") / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


@pytest.mark.parametrize("layers", [1, 2, 3, 6, 7])
def test_a_target_of_few_layers_still_has_a_head_that_drafts(layers, tiny):
    # EAGLE-3's default tapped layers (2, N//2, N-3) need 7 layers; below that the head taps distinct others
    target, head = shapes.random_pair(shapes.shape_config(tiny, layers))
    ids = head.config.aux_layer_ids
    assert (ids is None) == (layers >= 7)
    assert ids is None or (list(ids) == sorted(set(ids)) and ids[-1] == layers - 1 and len(ids) == min(3, layers))
    out = speculative_generate(target, head, torch.randint(0, TINY["vocab_size"], (1, 12)), max_new_tokens=6,
                               tree=TreeConfig(8, 3, 2))
    assert out.sequences.shape[1] == 18
    assert head.embed_weight.data_ptr() == target.get_input_embeddings().weight.data_ptr()  # the target's, no copy


def test_a_plain_step_and_a_cycle_are_timed_without_what_happens_once(monkeypatch):
    """The arithmetic, on a scripted clock: a prefill of 50 ms (70 in a longer run: noise), plain
    steps of 2 ms, a first cycle whose head forward reads the prompt (30 ms more), then cycles
    whose phases are known. A plain
    step timed over all new tokens would read (50 + 2 (n - 1)) / n; a cycle timed with the prefill
    or the first cycle would read more, by less the more tokens follow."""
    clock = [0.0]
    monkeypatch.setattr(shapes.time, "perf_counter", lambda: clock[0])

    def plain(target, prompt, new_tokens):
        return 0.050 + 0.002 * (new_tokens - 1)

    def speculative(target, head, prompt, *, max_new_tokens, tree):
        cycles = max_new_tokens - 1  # one token each, as a random head's
        levels = tree.max_depth  # each cycle: 1 ms a level drafting, 5 ms verifying, 1 accepting, 0.5 of loop
        prefill = 0.050 if max_new_tokens == 2 else 0.070  # a prefill's time varies from run to run
        timings = {"prefill": prefill, "draft": 0.030 + cycles * 0.001 * levels, "verify": cycles * 0.005,
                   "accept": cycles * 0.001}
        clock[0] += sum(timings.values()) + cycles * 0.0005
        return GenerationOutput(prompt, [1] * cycles, timings)

    costs = CostModel({1: 4.0}, {1: 1.0}, 1.0, 10)
    monkeypatch.setattr(shapes, "plain_seconds", plain)
    monkeypatch.setattr(shapes, "speculative_generate", speculative)
    monkeypatch.setattr(shapes, "measure_costs", lambda target, head: costs)
    target = torch.nn.Linear(2, 2)
    text_config = type("TextConfig", (), {"vocab_size": 9, "num_hidden_layers": 3})()
    target.config = type("Config", (), {"get_text_config": lambda self: text_config})()
    timing = shapes.time_shape(target, None, {"deep": TreeConfig(8, 3, 2), "chain": TreeConfig.chain(1)},
                               prompts=2, new_tokens=9, runs=2)
    assert timing.plain_ms == pytest.approx(2.0)
    assert timing.cycles["deep"] == pytest.approx({"cycle": 9.5, "draft": 3.0, "verify": 5.0, "accept": 1.5})
    assert timing.cycles["chain"]["cycle"] == pytest.approx(7.5)
    assert timing.break_even("deep") == pytest.approx(4.75)  # 9.5 ms a cycle pays once it appends 4.75 tokens
    assert timing.speedup("deep", 4.75) == pytest.approx(1.0)
    assert timing.speedup("chain", 3.0) == pytest.approx(0.8)
    assert timing.costs is costs and timing.meta["layers"] == 3
    assert timing.predicted("deep") is None  # 2 wide: the cost model's drafting was measured 10 wide
    wide = shapes.ShapeTiming(2.0, {"wide": {"cycle": 20.0}}, {"wide": TreeConfig(21, 4, 10).describe()},
                              CostModel({1: 4.0, 41: 12.0}, {1: 1.0, 5: 5.0}, 0.5, 10), {})
    assert wide.predicted("wide") == pytest.approx(4.0 + 8.0 + 0.5)  # draft 4 levels, verify 21 tokens, accept
    with pytest.raises(ValueError, match="new_tokens must be at least 4"):
        shapes.time_shape(target, None, {}, new_tokens=3)
    monkeypatch.setattr(shapes, "speculative_generate", lambda *a, **k: GenerationOutput(torch.zeros(1, 1), [8], {
        "prefill": 0.0, "draft": 0.0, "verify": 0.0, "accept": 0.0}))  # a first cycle that makes every token
    with pytest.raises(ValueError, match="deep: its first cycle made all 8 new tokens"):
        shapes.time_shape(target, None, {"deep": TreeConfig(8, 3, 2)}, new_tokens=8)


def test_bench_shape_times_each_fixed_tree_and_saves_a_cost_model(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    # 16 new tokens: the cycles are the difference of 16 and of 2; with 4, one 20 ms hiccup of a loaded
    # CI machine made a cycle negative (-19.6 ms)
    assert main(["bench", "--shape", tiny, "--shape-layers", "2", "--prompts", "1", "--runs", "1",
                 "--max-new-tokens", "16", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Timing only: random weights" in text and "(2 decoder layers)" in text
    data = json.loads((out / "shape.json").read_text())
    assert set(data["cycles_ms"]) == {"EAGLE-3 chain (top_k=1, 7 deep)", "EAGLE-3 tree 24/6/4",
                                      "EAGLE-3 tree 60/8/10 (default)"}
    assert "The cost model below prices a cycle of EAGLE-3 tree 60/8/10 (default) at" in text
    assert text.count("The cost model below prices") == 1  # the one tree as wide as its drafting was measured
    for name, ms in data["cycles_ms"].items():
        assert f"| {name} | {ms['cycle']:.2f} |" in text
        assert ms["cycle"] == pytest.approx(ms["draft"] + ms["verify"] + ms["accept"])
        assert 0 < ms["verify"] < ms["cycle"]
    assert data["meta"]["layers"] == 2 and data["shape"] == tiny
    costs = CostModel.load(out / "costs.json")
    assert costs.verify_ms == {int(k): v for k, v in data["costs"]["verify_ms"].items()}
    assert (out / "shape.md").read_text() == text.split("\n\nwritten:")[0] + "\n"


@pytest.mark.parametrize("flag, value", [("--target", "x"), ("--draft", "x"), ("--prompts-file", "x"),
                                         ("--assistant", "x"), ("--batch-sizes", "1,2"), ("--chat", None),
                                         ("--no-profile", None), ("--no-auto", None),
                                         ("--calibration-prompts", "4"), ("--temperatures", "0")])
def test_bench_shape_refuses_what_does_not_apply(flag, value, tiny, capsys):
    argv = ["bench", "--shape", tiny, flag] + ([value] if value else [])
    assert main(argv) == 2
    assert f"error: {flag} does not apply with --shape" in capsys.readouterr().err


def test_a_plain_step_is_timed_over_exactly_the_tokens_asked_for(tiny):
    """Random text may reach the config's EOS at once; transformers' generate would then stop and
    the plain step would be timed over fewer tokens than it is divided by."""
    target, _ = shapes.random_pair(shapes.shape_config(tiny, 2))
    prompt = torch.randint(0, TINY["vocab_size"], (1, 8))
    first = int(target(prompt).logits[0, -1].argmax())
    target.generation_config.eos_token_id = target.config.eos_token_id = first  # the very first token ends it
    forwards = []
    handle = target.register_forward_hook(lambda *_: forwards.append(1))
    try:
        assert shapes.plain_seconds(target, prompt, 5) > 0
    finally:
        handle.remove()
    assert len(forwards) == 5


@pytest.mark.parametrize("config, message", [
    ({"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
      "num_hidden_layers": 2, "vocab_size": 100}, "cannot find the decoder layers of BertLMHeadModel"),
    ({"model_type": "qwen3_next", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
      "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100, "head_dim": 8},
     "Qwen3NextForCausalLM cannot verify a draft tree: layers [0, 1, 2] are 'linear_attention'"),
])
def test_bench_shape_refuses_a_shape_the_loop_cannot_draft_for(config, message, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["bench", "--shape", str(tmp_path), "--prompts", "1", "--runs", "1", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "cannot build a causal LM and an EAGLE-3 head of this shape" in err and message in err


def test_bench_shape_refuses_too_few_new_tokens_by_name_before_building_anything(tiny, capsys, monkeypatch):
    monkeypatch.setattr(shapes, "random_pair", lambda *a, **k: pytest.fail("built a model before refusing"))
    assert main(["bench", "--shape", tiny, "--max-new-tokens", "3"]) == 2
    assert "error: --max-new-tokens must be at least 4 with --shape" in capsys.readouterr().err
