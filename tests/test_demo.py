"""The main job (``eagle3-ref demo``) and the benchmark (``eagle3-ref bench``) on the toy pair."""

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from transformers import AutoTokenizer

from eagle3_ref.cli import main
from eagle3_ref.decoding import speculative_generate
from eagle3_ref.generate import GenerationOutput
from eagle3_ref.testing.tiny import make_tiny_target_dir
from eagle3_ref.tools.demo import cycle_spans, mark_cycles
from eagle3_ref.toy import TOY_DIR

pytestmark = pytest.mark.demo

ANSI = re.compile(r"\033\[[0-9;]*m")


@pytest.fixture(scope="module")
def toy_tokenizer():
    return AutoTokenizer.from_pretrained(TOY_DIR / "target")


@pytest.fixture(scope="module")
def ascii_ids(toy_tokenizer):
    """Token ids that decode, alone, to visible ASCII (no byte fragment of a longer character)."""
    ids = [i for i in range(len(toy_tokenizer)) if (t := toy_tokenizer.decode([i])).isascii() and t.strip()]
    return torch.tensor(ids)


@given(lengths=st.lists(st.integers(1, 6), max_size=12), seed=st.integers(0, 2**16), colour=st.booleans(),
       ascii_only=st.booleans())
@example(lengths=[1] * 7, seed=6880, colour=False, ascii_only=False)  # a character split over two cycles (CI found it)
def test_marks_cover_exactly_the_accepted_drafts(toy_tokenizer, ascii_ids, lengths, seed, colour, ascii_only):
    # Bugs caught: a token dropped or repeated at a cycle boundary, a bonus token marked as
    # accepted, a cycle with no accepted draft given an empty mark, a character split over
    # two cycles decoded as two replacement characters.
    n = 1 + sum(lengths)
    gen = torch.Generator().manual_seed(seed)
    if ascii_only:
        ids = ascii_ids[torch.randint(0, len(ascii_ids), (1, 3 + n), generator=gen)]
    else:  # any ids: byte fragments of multi-byte characters fall on cycle boundaries
        ids = torch.randint(0, len(toy_tokenizer), (1, 3 + n), generator=gen)
    out = GenerationOutput(ids, lengths, {}, 3)
    text = mark_cycles(toy_tokenizer, out, colour)
    plain = ANSI.sub("", text) if colour else text.replace("«", "").replace("»", "")
    assert plain == toy_tokenizer.decode(ids[0, 3:].tolist())
    spans = cycle_spans(out)
    assert [end - start for start, _, end in spans] == [1] + lengths
    assert [accepted - start for start, accepted, _ in spans] == [0] + [length - 1 for length in lengths]
    marks = re.findall(r"\033\[1;3[26]m(.*?)\033\[0m", text, re.S) if colour else re.findall("«(.*?)»", text, re.S)
    with_drafts = sum(accepted > start for start, accepted, _ in spans)
    assert all(marks), "an empty mark"
    if ascii_only:  # every token shows: one mark per cycle with drafts
        assert len(marks) == with_drafts
    else:  # a cycle whose drafts are only the first bytes of a character shows them with the next one
        assert len(marks) <= with_drafts


def test_demo_with_no_arguments(capsys):
    assert main(["demo", "--max-new-tokens", "24", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "«" in out and "»" in out  # accepted drafts marked (piped: plain marks)
    assert "\033[" not in out
    # Piped, the prompt and the generated text are still told apart (no colour to do it).
    assert re.search(r"--- prompt \(\d+ tokens\) ---\n.+\n--- generated \(24 new tokens\) ---\n", out, re.S)
    assert re.search(r"tau \d\.\d\d: 24 new tokens", out)
    rate = r" +\d+\.\d tokens/s \(\d+\.\d-\d+\.\d\)"  # the median, and the range of the 3 runs
    assert re.search(rf"speculative{rate} +plain \(transformers generate\){rate} .*median of 3 runs", out)
    assert "output equals plain greedy decoding: yes (24 tokens identical)" in out


def test_the_default_prompt_does_not_show_a_loop(toy_tokenizer):
    """The demo's default continuation is code, not the toy target's repetition loop (whose
    tau would flatter the head): at most half of its 4-grams recur in 128 tokens."""
    from eagle3_ref.tools.demo import default_prompt
    from eagle3_ref.toy import load_toy

    target, tokenizer, head = load_toy()
    prompt = tokenizer(default_prompt(), return_tensors="pt").input_ids
    ids = speculative_generate(target, head, prompt, max_new_tokens=128).new_tokens.tolist()
    grams = [tuple(ids[i:i + 4]) for i in range(len(ids) - 3)]
    assert 1 - len(set(grams)) / len(grams) < 0.5


def test_demo_with_the_cost_aware_tree(capsys):
    assert main(["demo", "--tree", "auto", "--max-new-tokens", "24", "--runs", "1", "--color", "never"]) == 0
    captured = capsys.readouterr()
    assert "cost-aware tree (depth and nodes chosen every cycle" in captured.out
    assert "output equals plain greedy decoding: yes" in captured.out
    assert "calibrated at temperature 0" in captured.err
    assert main(["demo", "--tree", "auto", "--chain", "3"]) == 2
    assert "give --tree auto or --chain, not both" in capsys.readouterr().err


def test_demo_colour_chain_and_sampling(capsys):
    assert main(["demo", "--max-new-tokens", "16", "--color", "always", "--chain", "4"]) == 0
    out = capsys.readouterr().out
    assert "\033[1;32m" in out and "chain of 4" in out
    assert main(["demo", "--max-new-tokens", "16", "--temperature", "1", "--top-p", "0.9", "--no-plain",
                 "--prompt", "def add(a, b):\n"]) == 0
    out = capsys.readouterr().out
    assert "sampling at temperature 1.0" in out and "equals" not in out


@pytest.mark.parametrize("argv, message", [
    (["--target", "/nonexistent"], "--target needs --draft"),
    (["--target", "/nonexistent", "--draft", str(TOY_DIR / "head")], "--target /nonexistent: no such directory"),
    (["--draft", str(TOY_DIR)], "not an EAGLE-3 head directory"),
    (["--tree-nodes", "1"], "--tree-nodes counts the root too"),
    (["--tree-top-k", "0"], "--tree-top-k must be a positive int, got 0"),
    (["--chain", "-1"], "--chain must be at least 1 (draft tokens per cycle), got -1"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 2, got 0"),
    (["--max-new-tokens", "1"], "--max-new-tokens must be at least 2, got 1: the prompt's forward"),
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "x", "--prompt-file", "y"], "not both"),
    (["--chat", "--prompt", "hi"], "no chat template"),
])
def test_demo_errors_name_the_argument(argv, message, capsys):
    assert main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err


def test_demo_refuses_a_head_of_another_target(tmp_path, capsys):
    other = make_tiny_target_dir(tmp_path / "other", "def f(x):\n    return x\n" * 50, vocab_size=300)
    assert main(["demo", "--target", str(other), "--draft", str(TOY_DIR / "head")]) == 2
    err = capsys.readouterr().err
    assert f"--draft {TOY_DIR / 'head'} does not fit --target {other}" in err and "vocab" in err


def test_a_damaged_head_is_named_as_damaged_not_as_a_misfit(tmp_path, capsys):
    # A head whose config disagrees with its own weights was reported as "does not fit --target".
    import shutil

    shutil.copytree(TOY_DIR / "head", tmp_path / "head")
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    (tmp_path / "head" / "config.json").write_text(json.dumps(config | {"hidden_size": 2 * config["hidden_size"]}))
    assert main(["demo", "--draft", str(tmp_path / "head"), "--no-plain"]) == 2
    err = capsys.readouterr().err
    assert "the head cannot be loaded, its files disagree or are damaged" in err and "does not fit" not in err, err


def test_bench_keeps_its_results_when_out_cannot_be_written_at_the_end(tmp_path, capsys, monkeypatch):
    # --out is checked before the measurement; if it still fails at the end (the disk filled,
    # the folder went), minutes of results are kept in a temporary folder, and the message says where.
    from eagle3_ref.tools import bench

    out, plot = tmp_path / "out", bench.plot

    def full_disk(results, baseline, path):
        if out in path.parents:
            raise OSError(28, "No space left on device")
        return plot(results, baseline, path)

    monkeypatch.setattr(bench, "plot", full_disk)
    assert main(["bench", "--prompts", "1", "--max-new-tokens", "6", "--runs", "1", "--temperatures", "0",
                 "--no-auto", "--no-profile", "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    rescued = Path(re.search(r"the results are in (\S+)", err).group(1))
    assert f"--out {out} could not be written (No space left on device)" in err
    assert "| EAGLE-3 chain" in (rescued / "bench.md").read_text() and (rescued / "bench.json").is_file()


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["bench", "--prompts", "2", "--max-new-tokens", "12", "--runs", "2", "--out", str(tmp_path),
                 "--calibration-prompts", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["method"], r["temperature"]): r for r in data["results"]}
    names = {m["name"] for m in data["meta"]["methods"]}
    assert {"plain (transformers generate)", "SpS (transformers assisted, 2-layer draft LM)",
            "EAGLE-3 tree 60/8/10 (default)", "EAGLE-3 auto (cost-aware tree)"} <= names
    # the auto rows' cost model and calibrations are saved, readable, and the bound is stated
    from eagle3_ref import Calibration, CostModel

    assert CostModel.load(tmp_path / "costs.json").verify(1) > 0
    assert [Calibration.load(tmp_path / f"calibration_T{t}.json").temperature for t in (0, 1)] == [0.0, 1.0]
    assert set(data["meta"]["auto"]) == {"0", "1"} and out.count("no tree, fixed or chosen per cycle, beats it") == 2
    for t, described in data["meta"]["auto"].items():  # whether each auto row drafted is said, and agrees
        said = "the auto tree drafts" if described["drafts"] else "the auto tree decodes plainly"
        assert re.search(rf"temperature {t}: an oracle.*{said}", out), (t, described)
    assert set(rows) == {(n, t) for n in names for t in (0.0, 1.0)}
    for (name, _), r in rows.items():
        assert len(r["tokens_per_second"]) == 2 and all(v > 0 for v in r["tokens_per_second"])
        assert r["new_tokens"] == 2 * 2 * 12  # no EOS within 12 tokens of these prompts
        if name.startswith("plain"):
            assert r["tau"] == 1.0
        elif name.startswith("SpS"):  # counted target forwards, fewer than tokens when drafts are accepted
            assert 0 < r["target_forwards"] <= r["new_tokens"] and r["tau"] == r["new_tokens"] / r["target_forwards"]
        else:  # every cycle's tokens add up to the new tokens minus the prefill's one, per prompt and run
            assert sum(r["cycle_lengths"]) == r["new_tokens"] - 4 and r["tau"] >= 1
    profile = data["profile_ms_per_cycle"]
    assert profile["drafting (head forwards)"] > 0 and profile["verification (target forward)"] > 0
    assert all(v >= 0 for v in profile.values())
    auto = data["auto_profile_ms_per_cycle"]  # the greedy auto tree's cycle, and what its forwards alone allow
    if data["meta"]["auto"]["0"]["drafts"]:  # (a calibration on 12 tokens could, rarely, find drafting never pays)
        assert auto["drafting (head forwards)"] > 0 and set(auto) == set(profile)
        assert "Where a greedy cycle of the auto tree goes" in out and "the auto tree's forwards alone" in out
    else:
        assert auto is None and "the auto tree's forwards alone" not in out
    costs = data["forward_costs_ms"]
    assert set(costs) == {"target forward, 1 token", "target forward, 8 tokens", "target forward, 16 tokens",
                          "target forward, 60 tokens", "head forward, 10 tokens"} and min(costs.values()) > 0
    table = (tmp_path / "bench.md").read_text()
    assert table.count("\n| ") >= 2 * len(names) and "speedup vs plain" in table and table.strip() in out
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_the_forward_ceiling_counts_the_forwards_and_nothing_else():
    from eagle3_ref.tools.bench import AUTO, Measurement, ceiling_line, forward_ceiling

    profile = {"drafting (head forwards)": 4.0, "tree building (top-k, pool, masks)": 3.0,
               "verification (target forward)": 10.0, "acceptance and cache compaction": 1.0,
               "Python overhead (loop)": 0.5, "prefill (once per prompt, per cycle)": 2.0}
    # 3.5 tokens for 14 ms of forwards, against plain decoding's 10 ms a token (100 tokens/s): 2.5x
    assert forward_ceiling(profile, 3.5, 100.0) == pytest.approx(2.5)
    rows = [Measurement("plain", 0.0, [100.0]), Measurement(AUTO, 0.0, [175.0], [3, 4]),
            Measurement(AUTO, 1.0, [50.0], [1])]  # the T = 1 row is not the one the greedy profile describes
    line = ceiling_line(rows, "plain", profile)
    assert "(14.0 ms a cycle for tau 3.50)" in line and "2.50x plain" in line and "measured: 1.75x" in line


def test_bench_errors(capsys):
    assert main(["bench", "--runs", "0"]) == 2
    assert "--runs must be at least 1" in capsys.readouterr().err
    assert main(["bench", "--temperatures", "0,hot"]) == 2
    assert "--temperatures" in capsys.readouterr().err
    assert main(["bench", "--assistant", "/nonexistent"]) == 2
    assert "--assistant /nonexistent" in capsys.readouterr().err
    assert main(["bench", "--prompts", "100000", "--runs", "1"]) == 2  # not quietly 40
    assert "--prompts 100000: the held-out modules hold 40 prompts" in capsys.readouterr().err
    assert main(["bench", "--max-new-tokens", "1"]) == 2  # was: tau nan in every row
    assert "--max-new-tokens must be at least 2, got 1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU: --device cuda is usable here")
def test_asking_for_cuda_without_one_blames_the_device_not_the_target(capsys):
    assert main(["demo", "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err


def test_the_commands_leave_autograd_as_they_found_it(capsys):
    # main() runs inside other programs (and this test suite): a global
    # torch.set_grad_enabled(False) would break every later backward pass.
    assert torch.is_grad_enabled()
    assert main(["demo", "--max-new-tokens", "4", "--no-plain"]) == 0
    assert main(["bench", "--prompts", "1", "--max-new-tokens", "4", "--runs", "1", "--temperatures", "0",
                 "--no-profile", "--no-auto", "--quiet"]) == 0
    assert torch.is_grad_enabled()


def test_a_difference_from_plain_decoding_is_reported(toy_tokenizer):
    # The equality line must come from comparing the two outputs, and a float32 difference
    # is a failure (exit 1), while a bfloat16 one is explained (exit 0).
    import io

    from eagle3_ref.tools.demo import DemoResult, report
    from eagle3_ref.tree import TreeConfig

    out = GenerationOutput(torch.tensor([[5, 6, 7, 8, 9]]), [2, 1], {}, 2)
    same, other = out.sequences.clone(), torch.tensor([[5, 6, 7, 8, 1]])
    for plain, dtype, status, line in [
        (same, torch.float32, 0, "output equals plain greedy decoding: yes (3 tokens identical)"),
        (other, torch.float32, 1, "NO, first difference at new token 2 (a bug"),
        (other, torch.bfloat16, 0, "NO, first difference at new token 2 (expected now and then in bfloat16"),
    ]:
        text = io.StringIO()
        assert report(DemoResult(out, [1.0], plain, [1.0]), toy_tokenizer, "", TreeConfig(), 0.0, dtype, False, text) \
            == status
        assert line in text.getvalue()


def test_a_cost_aware_tree_that_decodes_plainly_says_so(toy_tokenizer):
    import io

    from eagle3_ref.costaware.auto_tree import EDGES, AutoTreeConfig, Calibration
    from eagle3_ref.costaware.costs import CostModel
    from eagle3_ref.tools.demo import DemoResult, report

    tree = AutoTreeConfig.from_calibration(CostModel({1: 8.0, 64: 20.0}, {1: 2.0, 8: 9.0}, 0.5, 2),
                                           Calibration(1.0, tuple([0.3] * len(EDGES)), 0.3, 2, pool_tau=(1.2, 1.3)))
    out = GenerationOutput(torch.tensor([[5, 6, 7, 8, 9]]), [1, 1], {"draft": 0.0, "verify": 2.0, "accept": 0.0}, 2)
    text = io.StringIO()  # slower than plain by chance: no drafting cycle to blame
    assert report(DemoResult(out, [2.0], out.sequences.clone(), [1.0]), toy_tokenizer, "", tree, 1.0,
                  torch.float32, False, text) == 0
    assert f"decodes plainly here: at best {tree.drafting_gain:.2f}x" in text.getvalue()
    assert "why slower" not in text.getvalue()
    # its steps are plain ones, not "verification cycles" (the demo once reported 127 of those)
    assert "(the prefill and 2 plain decoding steps: nothing was drafted)" in text.getvalue()


def test_timing_is_a_median_and_a_loss_is_explained_from_the_measured_costs(toy_tokenizer):
    import io

    from eagle3_ref.tools.demo import DemoResult, report, why_slower
    from eagle3_ref.tree import TreeConfig

    # 6 new tokens in 3 cycles (tau 2); a cycle spent 30 ms drafting, verifying and accepting.
    out = GenerationOutput(torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]]), [2, 2, 1], {"draft": 0.03, "verify": 0.06},
                           2)
    fast_plain = DemoResult(out, [0.3, 9.0, 0.2], out.sequences.clone(), [0.05, 0.06, 0.04])
    assert fast_plain.spec_seconds == 0.3 and fast_plain.plain_seconds == 0.05  # medians: the 9 s outlier is out
    line = why_slower(fast_plain)  # plain: 6 tokens in 0.05 s, a step is 8.3 ms; a cycle 30 ms = 3.6 steps > tau 2
    assert line.startswith("why slower here: a cycle costs 3.6 plain steps (draft 10.0 ms, verify 20.0 ms") \
        and "tau = 1.67" in line
    text = io.StringIO()
    report(fast_plain, toy_tokenizer, "", TreeConfig(), 0.0, torch.float32, False, text)
    assert "speedup 0.17x" in text.getvalue() and "why slower here" in text.getvalue()
    assert why_slower(DemoResult(out, [0.01], out.sequences.clone(), [0.05])) is None  # faster: nothing to explain


def test_bench_measures_throughput_against_batch_size(tmp_path, capsys):
    assert main(["bench", "--batch-sizes", "1,2", "--prompts", "2", "--max-new-tokens", "8", "--runs", "1",
                 "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "bench_batch.json").read_text())
    rows = {(r["method"], r["batch_size"]): r for r in data["results"]}
    methods = {m for m, _ in rows}
    assert "plain (transformers generate, batched)" in methods and "EAGLE-3 tree 60/8/10 (default)" in methods
    assert set(rows) == {(m, b) for m in methods for b in (1, 2)}
    for m in methods - {"plain (transformers generate, batched)"}:  # the same text at every batch size
        assert rows[m, 1]["tau"] == rows[m, 2]["tau"] > 1, m
    assert all(r["mean_tokens_per_second"] > 0 for r in rows.values())
    assert "| method | B = 1 | B = 2 |" in out and ("stops paying" in out or "beats batched plain" in out)
    assert (tmp_path / "bench_batch.png").stat().st_size > 0 and (tmp_path / "bench_batch.md").exists()
    # a batch size that does not divide the prompts is refused by name
    assert main(["bench", "--batch-sizes", "3", "--prompts", "2", "--quiet"]) == 2
    assert "--batch-sizes 3: each must divide --prompts (2)" in capsys.readouterr().err
