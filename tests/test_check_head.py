"""``eagle3-ref check-head``: every problem of a head directory reported, none invented."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from eagle3_ref.checkpoint import save_draft_head
from eagle3_ref.cli import main
from eagle3_ref.draft_head import Eagle3Config, Eagle3DraftHead
from eagle3_ref.tools.check_head import check_head_dir, declared_layer_ids
from eagle3_ref.toy import TOY_DIR
from eagle3_ref.vocab import build_vocab_mapping

pytestmark = pytest.mark.checkpoint

CONFIG = Eagle3Config(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1,
                      vocab_size=40, draft_vocab_size=24, aux_layer_ids=(1, 5, 9))


def _head_dir(tmp_path, name="head", engine=None, config=CONFIG):
    torch.manual_seed(0)
    head = Eagle3DraftHead(config)
    with torch.no_grad():  # as if trained: every weight moved off its initialisation (see test_untrained_weights...)
        for p in head.parameters():
            p.mul_(1.2).add_(torch.randn_like(p) * 0.1)
    if config.draft_vocab_size < config.vocab_size:
        mapping = build_vocab_mapping(torch.arange(config.vocab_size, 0, -1), config.draft_vocab_size)
        head.d2t.copy_(mapping.d2t)
        head.t2d.copy_(mapping.t2d)
    return save_draft_head(head, tmp_path / name, engine=engine, num_target_layers=12)


def _edit(path, weights=None, config=None):
    if weights:
        state = load_file(path / "model.safetensors")
        weights(state)
        save_file(state, path / "model.safetensors")
    if config:
        raw = json.loads((path / "config.json").read_text())
        config(raw)
        (path / "config.json").write_text(json.dumps(raw))
    return path


def test_a_saved_head_is_clean_and_its_ids_are_read_per_engine(tmp_path):
    for engine, place in ((None, "eagle3_ref"), ("vllm", "vllm"), ("sglang", "sglang")):
        check = check_head_dir(_head_dir(tmp_path, f"h-{engine}", engine), target_layers=12)
        declared = declared_layer_ids(json.loads((check.path / "config.json").read_text()))
        assert check.ok and declared == {"eagle3_ref": (1, 5, 9), place: (1, 5, 9)}  # exports keep our block too
        assert "[1, 5, 9] from" in check.engines["eagle3-ref"]
        # (1, 5, 9) is not the 12-layer default (2, 6, 9): an engine that reads no ids would tap the wrong layers.
        for name, own in (("vLLM", "vllm"), ("SGLang", "sglang")):
            assert ("[1, 5, 9] from" in check.engines[name]) == (own == place)
            assert any(w.startswith(f"{name} would tap the default [2, 6, 9]") for w in check.warnings) == (own != place)


def test_every_problem_is_reported_at_once(tmp_path):
    path = _head_dir(tmp_path)

    def corrupt(state):
        del state["norm.weight"]
        state["fc.weight"] = state["fc.weight"][:, :-1].contiguous()
        state["t2d"] = state["t2d"].to(torch.uint8)
        state["extra.bias"] = torch.zeros(3)

    check = check_head_dir(_edit(path, weights=corrupt), target_layers=12)
    text = "\n".join(check.errors)
    assert len(check.errors) == 4, check.errors
    for expected in ("missing key(s): norm.weight", "unexpected key(s): extra.bias", "fc.weight has shape [16, 47]",
                     "t2d must be bool"):
        assert expected in text


@pytest.mark.parametrize("edit, expected", [
    (dict(weights=lambda s: s.__setitem__("d2t", s["d2t"] + 100)), "d2t points outside the target vocabulary"),
    (dict(weights=lambda s: s.__setitem__("t2d", torch.ones(40, dtype=torch.bool))), "t2d marks 40 tokens"),
    (dict(weights=lambda s: s.__setitem__("d2t", s["d2t"].float())), "d2t must be an integer tensor"),
    (dict(weights=lambda s: s.__setitem__("lm_head.weight", s["lm_head.weight"].long())), "must be floating point"),
    (dict(config=lambda c: c.pop("hidden_size")), "required field 'hidden_size' is missing"),
    (dict(config=lambda c: c.update(rope_scaling={"rope_type": "yarn"})), "rope scaling 'yarn'"),
    (dict(config=lambda c: c.update(eagle_aux_hidden_state_layer_ids=[2, 6, 9])), "the declared layer ids disagree"),
    (dict(config=lambda c: c["eagle3_ref"].update(aux_layer_ids=[1, 5, 12])), "do not fit a 12-layer target"),
    # A NaN weight passes every shape check and used to fail only inside the demo's first draft.
    (dict(weights=lambda s: s["midlayer.mlp.up_proj.weight"].__setitem__((0, 0), float("nan"))),
     "non-finite weights (NaN or inf) in midlayer.mlp.up_proj.weight"),
    (dict(weights=lambda s: s.__setitem__("norm.weight", s["norm.weight"].double())), "the weights mix dtypes"),
])
def test_each_defect_is_named(tmp_path, edit, expected):
    check = check_head_dir(_edit(_head_dir(tmp_path), **edit), target_layers=12)
    assert not check.ok and any(expected in e for e in check.errors), check.errors


def test_the_head_is_checked_against_the_target_it_is_for(tmp_path):
    path = _head_dir(tmp_path)
    assert check_head_dir(path, target_config={"num_hidden_layers": 12, "vocab_size": 40, "hidden_size": 16}).ok
    check = check_head_dir(path, target_config={"num_hidden_layers": 12, "vocab_size": 41, "hidden_size": 32})
    assert check.errors == ["the head's vocab_size is 40, the target's vocab_size is 41: this head was not trained "
                            "for this target", "the head's target_hidden_size is 16, the target's hidden_size is 32: "
                            "this head was not trained for this target"]
    assert "do not fit a 4-layer target" in "\n".join(check_head_dir(path, target_config={"num_hidden_layers": 4}).errors)


def test_directory_level_problems(tmp_path):
    assert check_head_dir(tmp_path / "nope").errors == ["no such directory"]
    (tmp_path / "file").write_text("x")
    assert check_head_dir(tmp_path / "file").errors == [
        "is a file: a head is a directory holding config.json and its weights"]
    assert "no config.json" in check_head_dir(tmp_path).errors[0]
    path = _head_dir(tmp_path)
    (path / "config.json").write_text("{not json")
    assert "config.json is not JSON" in check_head_dir(path).errors[0]
    path = _head_dir(tmp_path, "w")
    (path / "model.safetensors").unlink()
    assert any("no weights" in e for e in check_head_dir(path).errors)
    (path / "model.safetensors").write_bytes(b"garbage")
    assert any("cannot be read" in e for e in check_head_dir(path).errors)
    whole_model = check_head_dir(TOY_DIR / "target")
    assert "this looks like a whole model (model.layers.*), not an EAGLE-3 head" in whole_model.errors
    assert "and 140 more" in "\n".join(whole_model.errors)  # long key lists are cut


def test_an_extra_embedding_and_an_identity_vocabulary(tmp_path):
    full = Eagle3Config(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1,
                        vocab_size=40)
    path = _edit(_head_dir(tmp_path, config=full), weights=lambda s: (
        s.pop("d2t"), s.pop("t2d"), s.__setitem__("embed_tokens.weight", torch.zeros(40, 16))))
    check = check_head_dir(path, target_layers=12)
    assert check.ok, check.errors
    assert any("embed_tokens.weight" in w for w in check.warnings)
    assert any("identity mapping" in f for f in check.facts)


def test_the_command(tmp_path, capsys):
    assert main(["check-head", str(TOY_DIR / "head"), "--target", str(TOY_DIR / "target")]) == 0
    out = capsys.readouterr().out
    assert "result: OK" in out and "WARNING" not in out and "the default [2, 8, 13]" in out
    assert main(["check-head", str(TOY_DIR / "target")]) == 1
    assert "ERROR" in capsys.readouterr().out
    assert main(["check-head", str(TOY_DIR / "head"), "--target", str(tmp_path)]) == 2
    assert "--target" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{broken")  # a target whose config is damaged: rc 2, named, not a traceback
    assert main(["check-head", str(TOY_DIR / "head"), "--target", str(tmp_path)]) == 2
    assert "its config.json is not a JSON object" in capsys.readouterr().err
    assert main(["check-head", str(TOY_DIR / "head"), "--target", str(tmp_path / "config.json")]) == 2
    assert "is a file, not a model directory" in capsys.readouterr().err
    # The toy head against a target of another vocabulary and width: errors, rc 1.
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 16, "vocab_size": 40, "hidden_size": 16}))
    assert main(["check-head", str(TOY_DIR / "head"), "--target", str(tmp_path)]) == 1
    assert "this head was not trained for this target" in capsys.readouterr().out



def test_untrained_weights_are_an_error_naming_them(tmp_path):
    # speculators #1114 / #1131: a converter that loads with strict=False saves the weights of
    # the keys it never matched as initialised; the head then drafts at random, without an error
    wide = dataclasses.replace(CONFIG, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                               num_key_value_heads=2)  # matrices of 1024 numbers and more: enough to tell
    path = _head_dir(tmp_path, config=wide)
    assert check_head_dir(path, target_layers=12).ok
    fresh = Eagle3DraftHead(wide).state_dict()  # nn.Linear's uniform init, norms at 1.0

    def unmatched_midlayer(state):
        for k in [k for k in state if k.startswith("midlayer.")]:
            state[k] = fresh[k].clone()
    errors = check_head_dir(_edit(path, weights=unmatched_midlayer), target_layers=12).errors
    assert len(errors) == 1 and errors[0].startswith("10 of 14 weights still at initialisation"), errors
    assert "midlayer.input_layernorm.weight (all 1.0, as RMSNorm starts)" in errors[0]
    assert "midlayer.mlp.down_proj.weight (uniform within ±1/sqrt(128), as nn.Linear starts)" in errors[0]
    assert "; and 6 more." in errors[0]

    def untrained(state):
        state.update({k: fresh[k].clone() for k in state if state[k].is_floating_point()})
    assert check_head_dir(_edit(_head_dir(tmp_path, "h2", config=wide), weights=untrained), target_layers=12).errors[0].startswith(
        "every weight still at initialisation")


def test_what_counts_as_initialised():
    from eagle3_ref.tools.check_head import looks_initialised

    torch.manual_seed(1)
    assert looks_initialised("lm_head.weight", torch.empty(64, 128).normal_(0, 0.02)).startswith("normal(0, 0.02)")
    assert looks_initialised("fc.weight", torch.nn.Linear(96, 64).weight) is not None
    assert looks_initialised("norm.weight", torch.ones(16)) is not None
    # trained-looking: scaled, shifted, heavier tails, small tensors, and integer buffers pass
    assert looks_initialised("lm_head.weight", torch.empty(64, 128).normal_(0, 0.03)) is None
    assert looks_initialised("fc.weight", torch.nn.Linear(96, 64).weight * 1.3) is None
    assert looks_initialised("norm.weight", torch.ones(16) + 1e-3) is None
    assert looks_initialised("lm_head.weight", torch.distributions.StudentT(3).sample((64, 128)) * 0.01) is None
    assert looks_initialised("d2t", torch.zeros(8, dtype=torch.long)) is None
    assert looks_initialised("fc.weight", torch.nn.Linear(8, 8).weight) is None  # too few numbers to tell


def test_with_the_target_a_short_acceptance_measurement(tmp_path, capsys):
    import shutil

    assert main(["check-head", str(TOY_DIR / "head"), "--target", str(TOY_DIR / "target")]) == 0
    out = capsys.readouterr().out
    tau = float(out.split("acceptance on the target: tau ")[1].split()[0])
    assert tau > 3.0 and "accepts almost nothing" not in out
    # a head whose files are all well-formed but which drafts garbage: its lm_head rows rolled
    # (a draft id mapped to another token: what a reordered vocabulary does)
    shutil.copytree(TOY_DIR / "head", tmp_path / "head")
    _edit(tmp_path / "head", weights=lambda s: s.__setitem__("lm_head.weight", s["lm_head.weight"].roll(1, 0)))
    assert main(["check-head", str(tmp_path / "head"), "--target", str(TOY_DIR / "target")]) == 0  # a warning
    out = capsys.readouterr().out
    assert "WARNING the head accepts almost nothing on this target" in out, out


def test_every_format_is_checked_as_the_official_head_it_converts_to(tmp_path, capsys):
    from eagle3_ref.tools.convert import convert

    mapping = build_vocab_mapping(torch.arange(40), 24)  # the most frequent tokens are 16..39
    official = _edit(_head_dir(tmp_path), weights=lambda s: s.update(d2t=mapping.d2t, t2d=mapping.t2d))
    target = tmp_path / "target"
    target.mkdir()
    (target / "config.json").write_text(json.dumps({"num_hidden_layers": 12}))
    save_file({"model.embed_tokens.weight": torch.randn(40, 16)}, target / "model.safetensors")
    for fmt in ("speculators", "specforge", "modelopt"):
        check = check_head_dir(convert(official, tmp_path / fmt, fmt, verifier=str(target)), target_layers=12)
        assert check.ok and f"format: {fmt}" in " ".join(check.facts), (fmt, check.errors)
    # speculators #1114 / #1131: a converter that loaded with strict=False saved the decoder layer it
    # never matched as initialised; the head is well-formed and drafts at random.
    spec = _edit(convert(TOY_DIR / "head", tmp_path / "toy-speculators", "speculators"),
                 weights=lambda s: s.update({k: torch.randn_like(v) * 0.02 for k, v in s.items()
                                             if k.startswith("layers.0.") and v.dim() == 2}))
    check = check_head_dir(spec)
    assert not check.ok and any(e.startswith("7 of 13 weights still at initialisation: midlayer.") and "speculators" not in e
                                for e in check.errors), check.errors
    # ModelOpt's d2t as registered, never set from a vocabulary: the conversion refuses it, and says why.
    _edit(tmp_path / "modelopt", weights=lambda s: s["d2t"].zero_())
    assert main(["check-head", str(tmp_path / "modelopt")]) == 1
    out = capsys.readouterr().out
    assert "a modelopt head the official format cannot hold: d2t: all zeros" in out, out


def test_a_never_set_draft_vocabulary_is_warned_about(tmp_path):
    path = _edit(_head_dir(tmp_path), weights=lambda s: (s["d2t"].zero_(), s["t2d"].zero_(),
                                                         s["t2d"][:24].fill_(True)))
    check = check_head_dir(path)
    assert check.ok and any(w.startswith("d2t is all zeros: the draft vocabulary is target ids 0..23") for w in
                            check.warnings), check.warnings


def test_with_the_target_a_modelopt_export_is_measured_too(tmp_path, capsys):
    from eagle3_ref.tools.convert import convert

    head = convert(TOY_DIR / "head", tmp_path / "modelopt", "modelopt")
    assert main(["check-head", str(head), "--target", str(TOY_DIR / "target")]) == 0
    out = capsys.readouterr().out
    assert "format: modelopt" in out and float(out.split("acceptance on the target: tau ")[1].split()[0]) > 3.0, out
