"""The training pipeline.

Proofs: a short run on a tiny target lowers the loss and raises held-out top-1 accuracy well
above chance (fixed seed, explicit bars); an interrupted run, resumed, reproduces the
uninterrupted run's weights bit for bit (in process, and after a real ``kill -9``); bad
input gets a clear error and leaves nothing written.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from eagle3_ref.checkpoint import load_draft_head
from eagle3_ref.cli import main
from eagle3_ref.testing.tiny import make_tiny_target_dir
from eagle3_ref.train import (
    TrainConfig,
    TrainingError,
    evaluate_loss,
    evaluations_since_best,
    prepare_data,
    prepare_held_out,
    regenerate,
    target_pass,
    tokenize_corpus,
    train_head,
)
from eagle3_ref.ttt import ttt_forward, ttt_loss

pytestmark = pytest.mark.train

STDLIB = Path(json.__file__).parent.parent


def corpus(*modules: str) -> str:
    return "".join((STDLIB / m).read_text() for m in modules)


TRAIN_TEXT = corpus("json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py")
HELD_OUT_TEXT = corpus("textwrap.py")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_target_dir(tmp_path_factory.mktemp("target"), TRAIN_TEXT, layers=7, hidden=32)
    return path, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _config(out, **kw):
    base = dict(out_dir=str(out), seq_len=32, batch_size=8, max_steps=150, lr=3e-3, warmup_steps=10, ttt_steps=3,
                draft_vocab_size=128, save_every=50, seed=0)
    return TrainConfig(**(base | kw))


def _held_out_accuracy(target, head, tokenizer, layer_ids):
    ids = tokenize_corpus(HELD_OUT_TEXT, tokenizer, 32)[:32]
    feats, logits = target_pass(target, ids, layer_ids)
    with torch.no_grad():
        out = ttt_forward(head, feats, ids, 1).logits
        return ttt_loss(out, logits, torch.ones_like(ids), head.t2d, head.d2t), logits


def test_a_short_run_learns(tiny, tmp_path):
    _, target, tokenizer = tiny
    config = _config(tmp_path / "run", eval_every=50)
    data = prepare_data(target, TRAIN_TEXT, tokenizer, config, (2, 3, 4))
    held_out = prepare_held_out(target, HELD_OUT_TEXT, tokenizer, config, (2, 3, 4), sequences=12)
    history = []
    head = train_head(target, data, config, log=history.append, progress=False, held_out=held_out)
    before = sum(h["loss"] for h in history[:10]) / 10
    after = sum(h["loss"] for h in history[-10:]) / 10
    assert after < before - 0.02, (before, after)
    # The held-out loss is measured every eval_every steps, and falls.
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [50, 100, 150] and len(evals[0]["eval_acc"]) == config.ttt_steps
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"], evals
    result, logits = _held_out_accuracy(target, head, tokenizer, (2, 3, 4))
    # Chance: the best constant guess, i.e. the most frequent target argmax on the held-out text.
    argmax = logits.argmax(-1)[:, 1:]
    majority = float(torch.bincount(argmax.flatten()).max()) / argmax.numel()
    print(f"held-out top-1 {result.step_accuracy[0]:.3f}, majority {majority:.3f}, loss {before:.3f} -> {after:.3f}")
    assert result.step_accuracy[0] > max(5 / 128, majority + 0.03), (result.step_accuracy, majority)
    # The written head is the official format and loads back.
    loaded = load_draft_head(tmp_path / "run", target)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in head.state_dict().items())


class Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tiny, tmp_path):
    _, target, tokenizer = tiny
    config = _config(tmp_path / "straight", max_steps=24, save_every=8)
    data = prepare_data(target, TRAIN_TEXT, tokenizer, config, (2, 3, 4))
    straight = train_head(target, data, config, progress=False)

    def crash(record):  # dies after step 13: the step-8 checkpoint is the last on disk
        if record["step"] == 13:
            raise Interrupt

    broken = _config(tmp_path / "broken", max_steps=24, save_every=8)
    with pytest.raises(Interrupt):
        train_head(target, data, broken, log=crash, progress=False)
    assert (tmp_path / "broken" / "latest").read_text() == "ckpt-0000008"
    resumed = train_head(target, data, _config(tmp_path / "broken", max_steps=24, save_every=8, resume=True),
                         progress=False)
    for k, v in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k


def test_resume_after_kill_minus_nine(tiny, tmp_path):
    path, target, tokenizer = tiny
    data_file = tmp_path / "train.txt"
    data_file.write_text(TRAIN_TEXT)
    args = ["--target", str(path), "--data", str(data_file), "--steps", "30", "--seq-len", "32", "--batch-size", "8",
            "--lr", "3e-3", "--warmup", "5", "--ttt-steps", "2", "--draft-vocab-size", "128", "--save-every", "4",
            "--quiet"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cli = [sys.executable, "-m", "eagle3_ref.cli", "train"]
    log = (tmp_path / "straight.log").open("w")
    straight = subprocess.Popen(cli + args + ["--out", str(tmp_path / "straight")], env=env,  # meanwhile
                                stdout=log, stderr=subprocess.STDOUT)
    proc = subprocess.Popen(cli + args + ["--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run must die mid-way, not finish"
    assert int((tmp_path / "killed" / "latest").read_text().split("-")[1]) < 30
    subprocess.run(cli + args + ["--out", str(tmp_path / "killed"), "--resume"], check=True, env=env, capture_output=True)
    assert straight.wait() == 0, (tmp_path / "straight.log").read_text()[-2000:]
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_says_where_the_last_checkpoint_is_and_how_to_resume(tiny, tmp_path):
    # Ctrl-C printed a KeyboardInterrupt traceback and no hint.
    import shlex

    from eagle3_ref.train import lock_path

    path, _, _ = tiny
    (tmp_path / "train.txt").write_text(TRAIN_TEXT)
    out = tmp_path / "run"
    args = ["train", "--target", str(path), "--data", str(tmp_path / "train.txt"), "--steps", "5000", "--seq-len", "32",
            "--batch-size", "8", "--ttt-steps", "2", "--draft-vocab-size", "128", "--save-every", "2", "--quiet",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "eagle3_ref.cli", *args], env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    last = out / (out / "latest").read_text().strip()
    assert f"interrupted. The last checkpoint is {last}; continue with:" in err, err
    resume = err.strip().splitlines()[-1].strip()
    assert resume == "eagle3-ref " + shlex.join(args + ["--resume"]), resume
    assert not lock_path(out).exists()  # released on the way out


def test_ablation_switches(tiny, tmp_path):
    _, target, tokenizer = tiny
    config = _config(tmp_path / "abl", max_steps=3, ttt_steps=1, aux_layer_ids=(5,))
    data = prepare_data(target, TRAIN_TEXT[:4000], tokenizer, config, (5,))
    head = train_head(target, data, config, progress=False)
    assert head.config.aux_layer_ids == (5,) and head.fc.weight.shape == (32, 32)
    assert load_draft_head(tmp_path / "abl", target).config.aux_layer_ids == (5,)


def test_the_top_layer_feature_alone(tiny, tmp_path):
    """The ablation's "top layer only" head reads hidden_states[N] (the final normed state)."""
    _, target, tokenizer = tiny
    config = _config(tmp_path / "top", max_steps=2, aux_layer_ids=(7,))
    data = prepare_data(target, TRAIN_TEXT[:4000], tokenizer, config, (7,))
    head = train_head(target, data, config, progress=False)
    assert head.config.aux_layer_ids == (7,) and load_draft_head(tmp_path / "top", target).config.aux_layer_ids == (7,)


def test_the_eagle2_baseline_learns_and_resumes_exactly(tiny, tmp_path):
    """The EAGLE-2-style head through the same loop: its loss falls; killed and resumed it
    reproduces the straight run bit for bit (its own file format, and the noise's RNG state,
    come back); its run loads and decodes like any head."""
    _, target, tokenizer = tiny
    kw = dict(head="eagle2", ttt_steps=1, draft_vocab_size=None, max_steps=24, save_every=8, lr=3e-3)
    config = _config(tmp_path / "straight", **kw)
    data = prepare_data(target, TRAIN_TEXT, tokenizer, config, (7,))
    history = []
    straight = train_head(target, data, config, log=history.append, progress=False)
    assert sum(h["loss"] for h in history[-5:]) < sum(h["loss"] for h in history[:5]) - 0.05, history

    def crash(record):
        if record["step"] == 13:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_head(target, data, _config(tmp_path / "broken", **kw), log=crash, progress=False)
    resumed = train_head(target, data, _config(tmp_path / "broken", resume=True, **kw), progress=False)
    for k, v in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    from eagle3_ref.decoding import autoregressive_generate, speculative_generate
    from eagle3_ref.eagle2 import load_eagle2_head

    head = load_eagle2_head(tmp_path / "broken", target)
    prompt = tokenize_corpus(HELD_OUT_TEXT, tokenizer, 16)[:1]
    assert torch.equal(speculative_generate(target, head, prompt, max_new_tokens=12).sequences,
                       autoregressive_generate(target, prompt, max_new_tokens=12).sequences)


def test_the_lm_head_can_start_as_the_targets(tiny, tmp_path):
    """The ablation's diagnostic: an EAGLE-3 head whose lm_head starts as the target's LM head
    rows of its draft vocabulary (the EAGLE-2-style head reads tokens through the target's)."""
    from eagle3_ref.train import new_head

    _, target, tokenizer = tiny
    config = _config(tmp_path / "lm", init_lm_head_from_target=True)
    data = prepare_data(target, TRAIN_TEXT[:4000], tokenizer, config, (2, 3, 4))
    head = new_head(target, data, config, (2, 3, 4))
    want = target.get_output_embeddings().weight[head.t2d]
    assert head.t2d.sum() == 128 and torch.equal(head.lm_head.weight, want)
    with pytest.raises(TrainingError, match="init_lm_head_from_target needs an EAGLE-3 head"):
        train_head(target, data, _config(tmp_path / "e2", head="eagle2", ttt_steps=1, draft_vocab_size=None,
                                         init_lm_head_from_target=True), progress=False)


def test_cached_target_pass_is_reused(tiny, tmp_path):
    _, target, tokenizer = tiny
    config = _config(tmp_path / "c", cache_dir=str(tmp_path / "cache"))
    first = prepare_data(target, TRAIN_TEXT[:6000], tokenizer, config, (2, 3, 4))
    assert list((tmp_path / "cache").glob("shard_*.safetensors"))
    feats, logits = target_pass(target, first.input_ids[:2], (2, 3, 4))
    torch.testing.assert_close(first.features[:2], feats)
    again = prepare_data(target, TRAIN_TEXT[:6000], tokenizer, config, (2, 3, 4))
    assert torch.equal(again.target_logits, first.target_logits)


def test_self_distillation_regenerates_continuations(tiny, tmp_path):
    _, target, tokenizer = tiny
    config = _config(tmp_path / "r", regenerate_prompt_tokens=8, seq_len=16)
    data = prepare_data(target, TRAIN_TEXT[:3000], tokenizer, config, (2, 3, 4))
    assert data.loss_mask[:, :8].sum() == 0 and bool(data.loss_mask[:, 8:].all())
    # The continuation is the target's own greedy text.
    first = data.input_ids[:1]
    with torch.no_grad():
        assert int(target(first[:, :8]).logits[0, -1].argmax()) == int(first[0, 8])
    # In batches (the last one partial) it is the same text, in the same order.
    sequences = tokenize_corpus(TRAIN_TEXT[:3000], tokenizer, 16)
    batched, _ = regenerate(target, sequences, 8, batch_size=3)
    assert sequences.shape[0] % 3 and torch.equal(batched, data.input_ids)


def test_sampled_self_distillation_is_the_targets_sampled_text_and_seeded(tiny):
    _, target, tokenizer = tiny
    sequences = tokenize_corpus(TRAIN_TEXT[:3000], tokenizer, 16)
    greedy, _ = regenerate(target, sequences, 8)
    sampled, mask = regenerate(target, sequences, 8, temperature=1.0, seed=3)
    assert torch.equal(sampled[:, :8], sequences[:, :8]) and bool(mask[:, 8:].all())
    assert not torch.equal(sampled, greedy)  # a greedy rewrite under a new name would pass everything else
    assert torch.equal(regenerate(target, sequences, 8, temperature=1.0, seed=3)[0], sampled)
    # every sampled token has visible mass under the target (pure sampling: no top-k or top-p cut)
    with torch.no_grad():
        logp = torch.log_softmax(target(sampled).logits[:, 7:-1].double(), -1)
    assert bool((logp.gather(-1, sampled[:, 8:, None]) > -30).all())


def test_the_data_mix_rewrites_each_sequence_once_at_each_temperature(tiny, tmp_path):
    _, target, tokenizer = tiny
    config = _config(tmp_path / "mix", regenerate_prompt_tokens=8, seq_len=16, regenerate_temperature=(0.0, 1.0),
                     seed=3)
    data = prepare_data(target, TRAIN_TEXT[:3000], tokenizer, config, (2, 3, 4))
    sequences = tokenize_corpus(TRAIN_TEXT[:3000], tokenizer, 16)
    n = sequences.shape[0]
    assert data.input_ids.shape[0] == 2 * n  # a mix that kept one temperature would have n
    assert torch.equal(data.input_ids[:n], regenerate(target, sequences, 8)[0])
    assert torch.equal(data.input_ids[n:], regenerate(target, sequences, 8, temperature=1.0, seed=3)[0])
    assert not torch.equal(data.input_ids[:n], data.input_ids[n:])
    # One temperature given as a list is that temperature, recorded the same way.
    assert _config(tmp_path / "one", regenerate_temperature=[0.5]).regenerate_temperature == 0.5
    for bad, message in [((), "one temperature or several distinct"), ((1.0, 1.0), "several distinct"),
                         ((0.0, -1.0), "regenerate_temperature must be a finite number >= 0, got -1.0")]:
        with pytest.raises(TrainingError, match=message):
            _config(tmp_path / "bad", regenerate_prompt_tokens=8, seq_len=16, regenerate_temperature=bad)
    with pytest.raises(TrainingError, match="regenerate_prompt_tokens is 0: nothing is rewritten"):
        _config(tmp_path / "bad", regenerate_temperature=(0.0, 1.0))


def test_a_data_cache_skips_the_rewrite_only_for_the_same_recipe(tiny, tmp_path, monkeypatch):
    # The bug of speculators #1081: a cached vocabulary mapping reused whatever was asked next.
    import eagle3_ref.train as train

    _, target, tokenizer = tiny
    cache = str(tmp_path / "data")
    config = _config(tmp_path / "c", regenerate_prompt_tokens=8, seq_len=16, data_cache=cache, max_sequences=8)
    first = prepare_data(target, TRAIN_TEXT[:3000], tokenizer, config, (2, 3, 4))
    calls = []
    monkeypatch.setattr(train, "regenerate", lambda *a, **k: calls.append(1) or regenerate(*a, **k))
    again = prepare_data(target, TRAIN_TEXT[:3000], tokenizer, config, (2, 3, 4))
    assert not calls and torch.equal(again.input_ids, first.input_ids) and torch.equal(again.loss_mask,
                                                                                       first.loss_mask)
    for change in [dict(regenerate_temperature=1.0), dict(max_sequences=3), dict(seed=1),
                   dict(regenerate_prompt_tokens=6)]:
        calls.clear()
        other = prepare_data(target, TRAIN_TEXT[:3000], tokenizer, _config(tmp_path / "c", **{
            **dict(regenerate_prompt_tokens=8, seq_len=16, data_cache=cache, max_sequences=8), **change}), (2, 3, 4))
        assert calls, change  # (a greedy rewrite of every sequence is the same under another seed: rewritten anyway)
        assert other.input_ids.shape[0] == (3 if "max_sequences" in change else 8)
    calls.clear()
    prepare_data(target, TRAIN_TEXT[:2500], tokenizer, config, (2, 3, 4))  # other text, same settings
    assert calls


def test_the_held_out_loss_in_parts_is_the_loss_of_the_whole_set(tiny, tmp_path):
    # Averaging the parts' losses unweighted would overweight the last, short part (5 = 2 + 2 + 1).
    from eagle3_ref.eagle2 import eagle2_loss
    from eagle3_ref.train import new_head

    _, target, tokenizer = tiny
    for head_kind, steps in (("eagle3", 3), ("eagle2", 1)):
        layers = (2, 3, 4) if head_kind == "eagle3" else (7,)
        config = _config(tmp_path / head_kind, batch_size=2, head=head_kind, ttt_steps=steps,
                         regenerate_prompt_tokens=12, aux_layer_ids=layers)
        held_out = prepare_held_out(target, HELD_OUT_TEXT, tokenizer, config, layers, sequences=5)
        assert held_out.input_ids.shape == (5, 32) and held_out.loss_mask[:, :12].sum() == 0
        torch.manual_seed(0)
        head = new_head(target, held_out, config, layers)
        loss, accuracy = evaluate_loss(head, held_out, config)
        with torch.no_grad():
            args = (held_out.features, held_out.input_ids)
            whole = eagle2_loss(head, *args, held_out.target_logits, held_out.loss_mask, noise_std=0.0) \
                if head_kind == "eagle2" else \
                ttt_loss(ttt_forward(head, *args, steps).logits, held_out.target_logits, held_out.loss_mask,
                         head.t2d, head.d2t)
        assert loss == pytest.approx(whole.loss.item(), rel=1e-5), head_kind
        assert accuracy == pytest.approx(whole.step_accuracy, abs=1e-9), head_kind
    with pytest.raises(TrainingError, match="held-out sequences must be >= 1"):
        prepare_held_out(target, HELD_OUT_TEXT, tokenizer, config, layers, sequences=0)


def test_evaluations_since_best_counts_from_the_first_lowest_held_out_loss():
    history = [{"step": 1}, {"step": 5, "eval_loss": 3.0}, {"step": 10, "eval_loss": 2.0}, {"step": 11},
               {"step": 15, "eval_loss": 2.0}, {"step": 20, "eval_loss": 2.5}]
    assert evaluations_since_best(history) == (10, 2)  # a tie is not an improvement
    assert evaluations_since_best(history[:3]) == (10, 0)
    assert evaluations_since_best(history[:1]) == (None, 0)


def test_a_loss_lower_by_less_than_min_improvement_is_kept_but_does_not_reset_the_count():
    """Catches: a tolerance measured from the last loss instead of the best (a steady fall in
    small steps would then stop the run), an absolute tolerance where a fraction is meant, and
    reporting the last counted improvement as the head to keep instead of the lowest loss."""
    losses = [10.0, 9.0, 8.96, 8.95, 8.5]
    history = [{"step": 10 * (i + 1), "eval_loss": v} for i, v in enumerate(losses)]
    assert evaluations_since_best(history[:4]) == (40, 0)
    assert evaluations_since_best(history[:4], min_improvement=0.01) == (40, 2)  # 8.96, 8.95: < 1 % below 9
    assert evaluations_since_best(history, min_improvement=0.01) == (50, 0)  # 8.5: 5.6 % below 9
    assert evaluations_since_best(history, min_improvement=0.2) == (50, 4)  # nothing 20 % below 10
    # Each 0.4 % below the last: two together clear 0.5 % of the best, so every other one counts.
    creep = [{"step": i, "eval_loss": 10.0 * 0.996 ** i} for i in range(1, 8)]
    assert evaluations_since_best(creep, min_improvement=0.005) == (7, 0)
    assert evaluations_since_best(creep[:6], min_improvement=0.005) == (6, 1)
    assert evaluations_since_best(history[:1], min_improvement=0.5) == (10, 0)


def test_min_improvement_stops_a_run_whose_loss_creeps_down_and_keeps_its_lowest_head(tiny, tmp_path):
    """With a tolerance no loss can beat (half the best), the run stops ``early_stopping``
    evaluations after its first while its loss still falls, and the head kept is the one of
    the lowest loss, which came after the last counted improvement. Catches: saving the head
    only at counted improvements (the first evaluation's head would be kept)."""
    _, target, tokenizer = tiny
    kw = dict(max_steps=300, lr=1e-2, eval_every=5, early_stopping=2, min_improvement=0.5, max_sequences=8,
              ttt_steps=3, draft_vocab_size=128)
    config = _config(tmp_path / "run", **kw)
    data = prepare_data(target, TRAIN_TEXT, tokenizer, config, (2, 3, 4))
    held_out = prepare_held_out(target, HELD_OUT_TEXT, tokenizer, config, (2, 3, 4), sequences=8)
    history = []
    head = train_head(target, data, config, log=history.append, progress=False, held_out=held_out)
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert history[-1]["step"] == 15 and history[-1]["early_stop"] is True
    assert evals[-1] < evals[0]  # still falling, by less than half
    assert evaluate_loss(head, held_out, config)[0] == min(evals)
    more = []  # resumed with a stricter rule (no tolerance), the stopped run trains on
    train_head(target, data, _config(tmp_path / "run", resume=True, **{**kw, "min_improvement": 0.0, "max_steps": 300}),
               log=more.append, progress=False, held_out=held_out)
    assert more and more[0]["step"] == 16
    with pytest.raises(TrainingError, match="min_improvement .* early_stopping is 0"):
        _config(tmp_path / "none", min_improvement=0.01)
    with pytest.raises(TrainingError, match="min_improvement is a fraction"):
        _config(tmp_path / "none", early_stopping=2, eval_every=5, min_improvement=1.0)


@pytest.mark.parametrize("kind", ["eagle3", "eagle2"])
def test_early_stopping_keeps_the_head_of_the_lowest_held_out_loss(tiny, tmp_path, kind):
    """Catches: training on past the patience, counting from the last minimum instead of the
    first (ties), and keeping the last head instead of the best (its held-out loss is higher:
    the run stops because the loss rose). A resumed stopped run trains no further."""
    _, target, tokenizer = tiny
    layers = (2, 3, 4) if kind == "eagle3" else (7,)
    kw = dict(max_steps=300, lr=1e-2, eval_every=5, early_stopping=2, max_sequences=8, head=kind,
              ttt_steps=3 if kind == "eagle3" else 1, draft_vocab_size=128 if kind == "eagle3" else None)
    config = _config(tmp_path / "run", **kw)
    data = prepare_data(target, TRAIN_TEXT, tokenizer, config, layers)
    held_out = prepare_held_out(target, HELD_OUT_TEXT, tokenizer, config, layers, sequences=8)
    history = []
    head = train_head(target, data, config, log=history.append, progress=False, held_out=held_out)
    evals = [h for h in history if "eval_loss" in h]
    assert history[-1]["step"] < config.max_steps and history[-1]["early_stop"] is True
    assert not any(h["early_stop"] for h in evals[:-1])
    best_step, since = evaluations_since_best(history)
    assert since == config.early_stopping
    best = min(h["eval_loss"] for h in evals)
    assert evals[-1]["eval_loss"] > best  # the loss rose: the last head is not the best
    assert evaluate_loss(head, held_out, config)[0] == best
    from eagle3_ref.eagle2 import load_eagle2_head

    written = load_eagle2_head(tmp_path / "run", target) if kind == "eagle2" else load_draft_head(tmp_path / "run", target)
    assert all(torch.equal(written.state_dict()[k], v) for k, v in head.state_dict().items())
    again = []
    train_head(target, data, _config(tmp_path / "run", resume=True, **kw), log=again.append, progress=False,
               held_out=held_out)
    assert again == [] and json.loads((tmp_path / "run" / "history.json").read_text())[-1]["step"] == best_step + \
        config.early_stopping * config.eval_every
    with pytest.raises(TrainingError, match="early_stopping .* needs held-out sequences"):
        train_head(target, data, _config(tmp_path / "none", **kw), progress=False)
    assert not (tmp_path / "none").exists()
    with pytest.raises(TrainingError, match="eval_every is 0"):
        _config(tmp_path / "none", early_stopping=2)


def test_max_sequences_is_a_seeded_sample_of_the_corpus(tiny, tmp_path):
    _, target, tokenizer = tiny
    every = tokenize_corpus(TRAIN_TEXT, tokenizer, 32).tolist()
    picks = [prepare_data(target, TRAIN_TEXT, tokenizer, _config(tmp_path / "m", max_sequences=5, seed=seed),
                          (2, 3, 4)).input_ids.tolist() for seed in (0, 0, 1)]
    assert all(len(p) == 5 and all(row in every for row in p) for p in picks)
    assert picks[0] == picks[1] != picks[2]
    assert [every.index(row) for row in picks[0]] == sorted(every.index(row) for row in picks[0])  # corpus order


def test_bad_inputs_are_named_and_write_nothing(tiny, tmp_path, capsys):
    path, target, tokenizer = tiny
    with pytest.raises(TrainingError, match="empty"):
        tokenize_corpus("   \n", tokenizer, 32)
    with pytest.raises(TrainingError, match="shorter than one sequence"):
        tokenize_corpus("def f(): pass", tokenizer, 32)
    shallow = AutoModelForCausalLM.from_config(target.config.__class__(**{**target.config.to_dict(), "num_hidden_layers": 4}))
    data = prepare_data(target, TRAIN_TEXT[:3000], tokenizer, _config(tmp_path / "x"), (2, 3, 4))
    with pytest.raises(TrainingError, match="N >= 7"):
        train_head(shallow, data, _config(tmp_path / "shallow"), progress=False)
    assert not (tmp_path / "shallow").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(TrainingError, match="--resume"):
        train_head(target, data, _config(busy), progress=False)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    with pytest.raises(TrainingError, match="nothing to resume"):
        train_head(target, data, _config(tmp_path / "fresh", resume=True), progress=False)
    with pytest.raises(TrainingError, match="ttt_steps must be 1"):  # the baseline has no TTT to switch on
        train_head(target, data, _config(tmp_path / "e2", head="eagle2", ttt_steps=7), progress=False)
    with pytest.raises(TrainingError, match="head must be 'eagle3' or 'eagle2'"):
        train_head(target, data, _config(tmp_path / "e4", head="eagle4"), progress=False)
    assert not (tmp_path / "e2").exists() and not (tmp_path / "e4").exists()
    # Steps past the sequence, and a step that cannot fit in memory (--ttt-steps 100000 --seq-len 64
    # once ended in an allocator traceback after two minutes, leaving train_config.json behind).
    with pytest.raises(TrainingError, match=r"ttt_steps \(100\) must be at most seq_len \(32\)"):
        _config(tmp_path / "long", ttt_steps=100)
    with pytest.raises(TrainingError, match=r"batch_size 100000000 x seq_len 32 x ttt_steps 3: .* GiB"):
        train_head(target, data, _config(tmp_path / "huge", batch_size=10**8), progress=False)
    assert not (tmp_path / "huge").exists()
    # The command line says the same, on stderr, with exit code 2.
    (tmp_path / "empty.txt").write_text("")
    for extra, message in [(["--data", str(tmp_path / "nope.txt")], "no such file"),
                           (["--data", str(tmp_path / "empty.txt"), "--overwrite"], "empty"),
                           (["--data", str(tmp_path / "empty.txt")], "--resume"),
                           (["--data", str(tmp_path / "empty.txt"), "--target", str(tmp_path)], "not a Hugging Face")]:
        assert main(["train", "--target", str(path), "--out", str(busy), "--quiet"] + extra) == 2
        assert message in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("flags, message", [
    (["--seq-len", "0"], "--seq-len must be an int >= 2, got 0"),
    (["--seq-len", "-4"], "--seq-len must be an int >= 2, got -4"),
    (["--lr", "-1"], "--lr must be a finite number > 0, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--save-every", "0"], "--save-every must be an int >= 1, got 0"),
    (["--warmup", "-5"], "--warmup must be an int >= 0, got -5"),
    (["--draft-vocab-size", "0"], "--draft-vocab-size must be an int >= 1"),
    (["--draft-vocab-size", "100000"], "--draft-vocab-size (100000) exceeds the target's vocabulary"),
    (["--seq-len", "100000"], "--seq-len (100000) exceeds the target's max_position_embeddings"),
    (["--aux-layer-ids", "a,b"], "--aux-layer-ids must be comma-separated ints, got 'a,b'"),
    (["--regenerate-prompt-tokens", "32"], "--regenerate-prompt-tokens (32) must be below seq_len (32)"),
    (["--eval-data", "missing.txt"], "--eval-data missing.txt: no such file"),
    (["--head", "eagle2", "--ttt-steps", "7"], "ttt_steps must be 1"),
    (["--regenerate-temperature", "0,x"], "--regenerate-temperature: expected a number or comma-separated numbers"),
    (["--regenerate-temperature", "0,1"], "regenerate_prompt_tokens is 0: nothing is rewritten"),
    (["--eval-sequences", "4"], "--eval-sequences needs --eval-data"),
    (["--eval-prompts", "-1"], "--eval-prompts must be >= 0, got -1"),
])
def test_each_bad_option_is_refused_by_name_before_anything_is_written(tiny, tmp_path, capsys, flags, message):
    path, _, _ = tiny
    (tmp_path / "train.txt").write_text(TRAIN_TEXT[:3000])
    out = tmp_path / "out"
    code = main(["train", "--target", str(path), "--data", str(tmp_path / "train.txt"), "--out", str(out),
                 "--seq-len", "32", "--quiet"] + flags)
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_again(tiny, tmp_path):
    """What a kill -9 before the first checkpoint leaves (train_config.json, a half-written
    checkpoint directory) neither blocks a new run nor passes for something to resume."""
    _, target, tokenizer = tiny
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_config.json").write_text("{}")
    (out / ".ckpt-tmp-abc").mkdir()
    config = _config(out, max_steps=2, save_every=2)
    data = prepare_data(target, TRAIN_TEXT[:4000], tokenizer, config, (2, 3, 4))
    with pytest.raises(TrainingError, match="nothing to resume .* run again without --resume"):
        train_head(target, data, _config(out, max_steps=2, save_every=2, resume=True), progress=False)
    train_head(target, data, config, progress=False)
    assert not (out / ".ckpt-tmp-abc").exists() and json.loads((out / "train_config.json").read_text())["max_steps"] == 2


def test_resume_refuses_changed_settings_by_name_and_keeps_the_record(tiny, tmp_path):
    _, target, tokenizer = tiny
    out = tmp_path / "run"
    config = _config(out, max_steps=4, save_every=2)
    data = prepare_data(target, TRAIN_TEXT[:4000], tokenizer, config, (2, 3, 4))
    train_head(target, data, config, progress=False)
    record = (out / "train_config.json").read_text()
    with pytest.raises(TrainingError, match=r"lr: 0.003 -> 0.001, ttt_steps: 3 -> 2"):
        train_head(target, data, _config(out, max_steps=4, save_every=2, lr=1e-3, ttt_steps=2, resume=True),
                   progress=False)
    other = prepare_data(target, TRAIN_TEXT[4000:8000], tokenizer, config, (2, 3, 4))  # --data changed
    with pytest.raises(TrainingError, match=r"data: '\(\d+, 32\) \w+' -> '\(\d+, 32\) \w+'"):
        train_head(target, other, _config(out, max_steps=4, save_every=2, resume=True), progress=False)
    # Where and how often it writes may change; the record of the run does not.
    train_head(target, data, _config(out, max_steps=4, save_every=1, resume=True), progress=False)
    assert (out / "train_config.json").read_text() == record


def test_written_files_follow_the_umask_not_tempfiles_owner_only(tiny, tmp_path):
    _, target, tokenizer = tiny
    old = os.umask(0o022)
    try:
        config = _config(tmp_path / "run", max_steps=2, save_every=1)
        train_head(target, prepare_data(target, TRAIN_TEXT[:4000], tokenizer, config, (2, 3, 4)), config,
                   progress=False)
    finally:
        os.umask(old)
    out = tmp_path / "run"
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes["model.safetensors"] == modes["config.json"] == modes["latest"] == 0o644, modes
    assert all(mode == (0o755 if (out / name).is_dir() else 0o644) for name, mode in modes.items()), modes


def test_a_loss_mask_that_covers_nothing_is_refused(tiny, tmp_path):
    _, target, tokenizer = tiny
    config = _config(tmp_path / "run", max_steps=2)
    data = prepare_data(target, TRAIN_TEXT[:4000], tokenizer, config, (2, 3, 4))
    data.loss_mask.zero_()
    with pytest.raises(TrainingError, match="the loss mask covers no token"):
        train_head(target, data, config, progress=False)
    assert not (tmp_path / "run").exists()


def test_two_processes_equal_one_with_the_same_global_batch(tiny, tmp_path):
    # torchrun (as accelerate launch) sets RANK/WORLD_SIZE: two processes with batch 4 each
    # average their gradients, which must match one process with batch 8 (Gloo on CPU).
    path, _, _ = tiny
    data_file = tmp_path / "train.txt"
    data_file.write_text(TRAIN_TEXT)
    args = ["train", "--target", str(path), "--data", str(data_file), "--steps", "6", "--seq-len", "32",
            "--lr", "3e-3", "--warmup", "2", "--ttt-steps", "2", "--draft-vocab-size", "128", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.Popen([sys.executable, "-m", "eagle3_ref.cli"] + args + ["--batch-size", "8", "--out",
                           str(tmp_path / "one")], env=env, stdout=(tmp_path / "one.log").open("w"),
                           stderr=subprocess.STDOUT)  # meanwhile
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "eagle3_ref.cli"] + args + ["--batch-size", "4", "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[:3000] + "\n...\n" + run.stderr[-1500:]  # a rank's own error comes first
    assert one.wait() == 0, (tmp_path / "one.log").read_text()[-2000:]
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_the_process_group_train_head_creates_is_destroyed_on_success_and_on_error(tiny, tmp_path, monkeypatch):
    # A Gloo group left to the interpreter's exit can abort a process that trained correctly
    # (SIGABRT at teardown, pytorch/pytorch#179291); it once failed the two-process test above.
    # Here the launcher's world of 2 is stood in for by a one-process group on a file store.
    import torch.distributed as dist
    _, target, tokenizer = tiny
    data = prepare_data(target, TRAIN_TEXT[:3000], tokenizer, _config(tmp_path / "d"), (2, 3, 4))
    store = str(tmp_path / "store")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", lambda backend: dist.distributed_c10d.init_process_group(
        backend, store=dist.FileStore(store, 1), rank=0, world_size=1))
    train_head(target, data, _config(tmp_path / "ok", max_steps=1), progress=False)
    assert not dist.is_initialized()
    with pytest.raises(TrainingError, match="ttt_steps"):
        train_head(target, data, _config(tmp_path / "bad", ttt_steps=0), progress=False)
    assert not dist.is_initialized()
    # A group the caller made is the caller's: it is used, and left as it was.
    dist.distributed_c10d.init_process_group("gloo", store=dist.FileStore(store + "2", 1), rank=0, world_size=1)
    try:
        train_head(target, data, _config(tmp_path / "theirs", max_steps=1), progress=False)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_a_prompt_file_is_continued_by_the_target(tiny, tmp_path):
    _, target, tokenizer = tiny
    lines = [json.dumps({"prompt": "def parse(s):\n    return"}), json.dumps({"prompt": "import json\n"})]
    data = prepare_data(target, "\n".join(lines), tokenizer, _config(tmp_path / "p", seq_len=16), (2, 3, 4))
    assert data.input_ids.shape == (2, 16)
    first = tokenizer("def parse(s):\n    return", add_special_tokens=False)["input_ids"][:8]
    assert data.input_ids[0, :len(first)].tolist() == first
    assert data.loss_mask[0, :len(first)].sum() == 0 and bool(data.loss_mask[0, len(first):].all())
    with pytest.raises(TrainingError, match="line 2"):
        prepare_data(target, lines[0] + "\n{\"question\": 1}", tokenizer, _config(tmp_path / "q"), (2, 3, 4))


def test_tau_evaluation_with_a_tiny_draft_vocabulary(tiny, tmp_path):
    # The default tree branches 10 ways: a draft vocabulary of 6 must still be evaluated.
    from eagle3_ref.train import evaluate_tau

    _, target, tokenizer = tiny
    config = _config(tmp_path / "v", max_steps=2, draft_vocab_size=6, eval_every=2, eval_max_new_tokens=4)
    data = prepare_data(target, TRAIN_TEXT[:3000], tokenizer, config, (2, 3, 4))
    history = []
    head = train_head(target, data, config, [data.input_ids[0, :8]], log=history.append, progress=False)
    assert history[-1]["tau"] >= 1.0 and history[-1]["tau_chain"] >= 1.0
    assert evaluate_tau(target, head, [data.input_ids[1, :8]], 4) >= 1.0


def test_one_writer_per_output_folder(tiny, tmp_path):
    # A second `train --out D --overwrite` while the first ran deleted the first's folder, and the
    # first finished into the second's. The folder is locked for the life of a run (a lock beside
    # it, with the owner's pid): a live owner is refused by name before anything is written, a
    # stale lock (its process gone) is taken over, and the lock goes when the run ends.
    import subprocess
    import sys

    from eagle3_ref.train import lock_path

    path, target, tokenizer = tiny
    data = prepare_data(target, TRAIN_TEXT[:3000], tokenizer, _config(tmp_path / "x"), (2, 3, 4))
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt-50").mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(out).write_text(f"{other.pid}\n")
        with pytest.raises(TrainingError, match=rf"out_dir {out} is being written by another run \(process {other.pid}"):
            train_head(target, data, _config(out, overwrite=True, max_steps=2), progress=False)
        assert (out / "ckpt-50").is_dir()  # --overwrite deleted nothing
    finally:
        other.kill()
        other.wait()
    held = []  # stale now: taken over, held while the run logs, gone after it
    train_head(target, data, _config(out, overwrite=True, max_steps=2, save_every=1),
               log=lambda record: held.append(lock_path(out).read_text().strip()), progress=False)
    assert held and set(held) == {str(os.getpid())}
    assert (out / "latest").exists() and not lock_path(out).exists()
