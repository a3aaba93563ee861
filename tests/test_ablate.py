"""The ablation's arithmetic and reports (the runs themselves: notebook 08, and the shipped
results in docs/paper/).

* n-α is the paper's conditional rate: the n-th draft's acceptance among cycles whose first
  n-1 drafts were accepted; a prompt's last cycle, which the token budget may cut, is left
  out (counting it would bias every rate down);
* the command documents its four variants and refuses bad budgets by name, before any work;
* the reports hold every finished run of the output directory, by data size then variant.
"""

import json
from pathlib import Path

import pytest
import torch

from eagle3_ref.cli import main
from eagle3_ref.tools.ablate import (
    DEFAULT_VARIANTS,
    VARIANTS,
    AblateConfig,
    finished_runs,
    n_alpha,
    plot_results,
    results_markdown,
)

pytestmark = pytest.mark.train


def test_n_alpha_is_the_conditional_acceptance_rate_by_draft_step():
    # Two prompts; appended tokens per cycle = accepted drafts + 1; each prompt's last cycle is dropped.
    runs = [[3, 1, 4, 8, 2], [1, 2, 5]]  # drafts counted: 2, 0, 3, 7 and 0, 1
    alpha = n_alpha(runs, depth=7)
    # n=1: drafts >= 1 among all 6 cycles: 2,3,7,1 -> 4/6; n=2: >= 2 among those >= 1: 2,3,7 of 4 -> 3/4;
    # n=3: >= 3 among >= 2: 3,7 of 3 -> 2/3; n=4..7: only the 7 -> 1/2, then 1/1, 1/1, 1/1.
    assert alpha == pytest.approx([4 / 6, 3 / 4, 2 / 3, 1 / 2, 1.0, 1.0, 1.0])
    assert n_alpha([[1, 1, 1, 9]], depth=3) == [0.0, None, None]  # nobody reached step 2
    assert n_alpha([[5]], depth=2) == [None, None]  # one cycle per prompt: all cut


@pytest.mark.parametrize("kwargs, match", [
    (dict(variants=("eagle3", "eagle4")), "variants must be some of"),
    (dict(variants=()), "variants must be some of"),
    (dict(steps=0), "steps must be a positive int"),
    (dict(data_sizes=(300, 0)), "data_sizes must be positive ints"),
    (dict(seq_len=64, prompt_tokens=64), "prompt_tokens must be in"),
    (dict(lr=-1.0), "lr must be a finite number > 0"),
    (dict(lr=float("inf")), "lr must be a finite number > 0"),
    (dict(eval_new_tokens=1), "eval_new_tokens must be at least 2"),
])
def test_bad_budgets_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AblateConfig(out_dir="x", **kwargs)


def test_the_command_documents_its_variants_and_refuses_before_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["ablate", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in VARIANTS) and "--data-sizes 300,600,1200,2400" in text
    assert main(["ablate", "--out", str(tmp_path / "a"), "--variants", "eagle3,medusa"]) == 2
    assert "variants must be some of" in capsys.readouterr().err
    assert main(["ablate", "--out", str(tmp_path / "a"), "--data-sizes", "300,lots"]) == 2
    assert "--data-sizes must be comma-separated ints" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def _result(variant, size, tau, eval_prompts=0):
    return {"variant": variant, "label": VARIANTS[variant].label, "sequences": size, "steps": 10,
            "train_accuracy": 0.5, "tau_tree": tau, "tau_chain": tau - 0.5, "n_alpha": [0.8, 0.7, None, 0, 0, 0, 0],
            "n_alpha_cycles": [90, 72, 12, 0, 0, 0, 0], "eval_prompts": eval_prompts, "eval_new_tokens": 96}


def test_reports_cover_every_finished_run_in_order(tmp_path):
    for variant, size, tau in [("eagle2", 600, 2.0), ("eagle3", 600, 3.0), ("eagle3", 300, 2.5), ("eagle2", 300, 1.9)]:
        run = tmp_path / "runs" / f"{variant}-{size}"
        run.mkdir(parents=True)
        (run / "eval.json").write_text(json.dumps(_result(variant, size, tau)))
    (tmp_path / "runs" / "no-ttt-600").mkdir()  # unfinished: no eval.json yet
    results = finished_runs(tmp_path)
    assert [(r["variant"], r["sequences"]) for r in results] == [("eagle3", 300), ("eagle2", 300), ("eagle3", 600),
                                                                 ("eagle2", 600)]
    table = results_markdown(results).splitlines()
    assert len(table) == 2 + 4 + 2 and "| 3.00 | 2.50 |" in table[4] and "| – |" in table[4]
    assert "| 0.80 | 0.70 | – | (0.00) |" in table[4] and "fewer than 30 cycles" in table[-1]  # thin: in parentheses
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # what a notebook's inline backend stands for here: anything but Agg
    try:
        assert [p.name for p in plot_results(results, tmp_path)] == ["tau.png", "n_alpha.png", "scaling.png"]
        # The reports leave the caller's backend alone (matplotlib.use("Agg") in them hid the plots of the
        # notebook that ran an ablation before drawing its own).
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert [p.name for p in plot_results(results[:2], tmp_path)] == ["tau.png", "n_alpha.png"]


def test_an_interrupted_ablation_resumes_each_run_where_it_stopped(tmp_path, monkeypatch):
    """A finished run (its eval.json) is reused; a trained one (history.json) is only evaluated;
    a run with a checkpoint but no history resumes from it; an untouched run starts fresh."""
    import eagle3_ref.tools.ablate as ablate
    from eagle3_ref.train import TrainData

    calls = []

    def fake_train(target, data, config, progress):
        calls.append((Path(config.out_dir).name, config.resume, config.ttt_steps, config.head, config.aux_layer_ids,
                      data.input_ids.shape[0]))
        Path(config.out_dir).mkdir(exist_ok=True)
        (Path(config.out_dir) / "history.json").write_text(json.dumps([{"acc": [0.5]}]))

    monkeypatch.setattr(ablate, "train_head", fake_train)
    monkeypatch.setattr(ablate, "_load_head", lambda variant, run_dir, target: None)
    evaluated = []

    def fake_evaluate(target, head, prompts, max_new_tokens):
        evaluated.append(max_new_tokens)
        return {"tau_tree": 2.0, "tau_chain": 1.5, "n_alpha": [0.5] * 7, "n_alpha_cycles": [50] * 7,
                "eval_prompts": len(prompts), "eval_new_tokens": max_new_tokens}

    monkeypatch.setattr(ablate, "evaluate_head", fake_evaluate)
    monkeypatch.setattr(ablate, "num_decoder_layers", lambda target: 16)
    config = AblateConfig(out_dir=str(tmp_path), data_sizes=(4, 8))
    runs = tmp_path / "runs"
    (runs / "eagle3-8").mkdir(parents=True)
    (runs / "eagle3-8" / "eval.json").write_text(json.dumps(_result("eagle3", 8, 9.0)))  # finished
    (runs / "eagle3-8" / "history.json").write_text(json.dumps([{"acc": [0.75]}]))
    (runs / "no-ttt-8").mkdir()
    (runs / "no-ttt-8" / "history.json").write_text(json.dumps([{"acc": [0.25]}]))  # trained, not evaluated
    (runs / "top-only-8").mkdir()
    (runs / "top-only-8" / "latest").write_text("ckpt-0000050")  # killed mid-way
    data = TrainData(torch.zeros(8, 4, dtype=torch.long), torch.ones(8, 4, dtype=torch.long))
    for size in (4, 8):
        for name in DEFAULT_VARIANTS:
            ablate._run(None, data, [], config, name, size, progress=False)
    assert calls == [("eagle3-4", False, 7, "eagle3", None, 4), ("no-ttt-4", False, 1, "eagle3", None, 4),
                     ("top-only-4", False, 7, "eagle3", (16,), 4), ("eagle2-4", False, 1, "eagle2", None, 4),
                     ("top-only-8", True, 7, "eagle3", (16,), 8), ("eagle2-8", False, 1, "eagle2", None, 8)]
    results = {(r["variant"], r["sequences"]): r for r in finished_runs(tmp_path)}
    assert results[("eagle3", 8)]["tau_tree"] == 9.0 and results[("no-ttt", 8)]["train_accuracy"] == 0.25
    assert len(results) == 8 and len(evaluated) == 7
    # Measured another way (longer generations): every run is evaluated again, none trained again.
    calls.clear()
    ablate._run(None, data, [], AblateConfig(out_dir=str(tmp_path), data_sizes=(4, 8), eval_new_tokens=128), "eagle3",
                8, progress=False)
    assert calls == [] and evaluated[-1] == 128 and finished_runs(tmp_path)[-2]["tau_tree"] == 2.0


def test_a_cached_larger_sample_serves_a_smaller_one_and_nothing_else(tmp_path):
    from safetensors.torch import save_file

    from eagle3_ref.tools.ablate import ablation_data
    from eagle3_ref.train import TrainingError

    ids = torch.arange(8 * 4).view(8, 4)
    stamp = {"n": "8", "seq_len": "4", "seed": "0", "prompt_tokens": "2"}
    save_file({"input_ids": ids, "loss_mask": torch.ones_like(ids)}, tmp_path / "data.safetensors", metadata=stamp)
    data = ablation_data(None, "", None, AblateConfig(out_dir=str(tmp_path), data_sizes=(2, 6), seq_len=4,
                                                      prompt_tokens=2))
    assert torch.equal(data.input_ids, ids[:6])  # the first rows: nested subsets of one sample
    for other in (dict(data_sizes=(9,)), dict(seed=1), dict(prompt_tokens=1)):  # not the same sample: regenerate
        with pytest.raises(TrainingError, match="corpus is empty"):
            ablation_data(None, "", None, AblateConfig(out_dir=str(tmp_path), **{"data_sizes": (4,), "seq_len": 4,
                                                                                "prompt_tokens": 2, **other}))


def test_the_cycles_behind_each_n_alpha_are_counted():
    from eagle3_ref.tools.ablate import reached_steps

    # drafts counted: 2, 0, 3, 7 and 0, 1 (each prompt's last cycle left out)
    assert reached_steps([[3, 1, 4, 8, 2], [1, 2, 5]]) == [6, 4, 3, 2, 1, 1, 1]


def test_early_stopping_trains_each_data_size_until_its_held_out_loss_stops_falling(tmp_path):
    """A real (tiny) scaling run with early stopping: each run's measured head is the one of its
    lowest held-out loss, the report says at which step and where training stopped, and the
    EAGLE-2-style head's held-out loss is measured on the top-layer feature it reads (the
    fused features would not even fit it). Catches: a run trained to the cap regardless, the
    last head measured instead of the best, the wrong features for a variant."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eagle3_ref.testing.tiny import make_tiny_target_dir
    from eagle3_ref.tools.ablate import run_ablation

    stdlib = Path(json.__file__).parent.parent
    corpus = "".join((stdlib / m).read_text() for m in ("json/decoder.py", "json/encoder.py", "json/scanner.py"))
    held = (stdlib / "textwrap.py").read_text()
    path = make_tiny_target_dir(tmp_path / "target", corpus, layers=7, hidden=32)
    target, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    prompts = [tokenizer(held[:400], return_tensors="pt").input_ids[0, :12]]
    config = AblateConfig(out_dir=str(tmp_path / "out"), variants=("eagle3", "eagle2"), data_sizes=(8, 32), steps=400,
                          seq_len=32, prompt_tokens=8, lr=1e-2, warmup_steps=5, eval_prompts=1, eval_new_tokens=8,
                          early_stopping=2, eval_every=5, held_out_sequences=8, head_overrides={"intermediate_size": 64})
    with pytest.raises(ValueError, match="early_stopping needs held_out_text"):
        run_ablation(target, tokenizer, corpus, prompts, config, progress=False)
    results = run_ablation(target, tokenizer, corpus, prompts, config, progress=False, held_out_text=held)
    assert len(results) == 4
    for r in results:
        steps, losses = zip(*r["eval_curve"])
        assert r["stopped_at"] < config.steps and r["stopped_at"] == steps[-1], r  # stopped, not capped
        assert r["eval_loss"] == min(losses) and r["steps"] == steps[losses.index(min(losses))], r
        assert len(steps) - 1 - steps.index(r["steps"]) == config.early_stopping
    text = (tmp_path / "out" / "results.md").read_text()
    assert "held-out loss" in text and f"{results[0]['steps']} (of {results[0]['stopped_at']})" in text
    assert (tmp_path / "out" / "curves.png").exists() and (tmp_path / "out" / "held_out.safetensors").exists()
