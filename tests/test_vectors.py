"""Golden vectors: exported from fixed seeds, checked against the reference and against
each deliberately buggy implementation, and their expected outputs re-derived
independently where a second derivation exists (transformers' greedy decoding; the exact
law of speculative sampling as a product of target probabilities)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from eagle3_ref.cli import main
from eagle3_ref.testing import buggy
from eagle3_ref.testing.vectors import SCHEMA_VERSION, check

pytestmark = pytest.mark.vectors


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors")
    assert main(["vectors", "export", str(out)]) == 0
    return out


def _manifest(vectors):
    return json.loads((vectors / "manifest.json").read_text())


def test_manifest_covers_what_the_issue_asks(vectors):
    m = _manifest(vectors)
    assert m["schema_version"] == SCHEMA_VERSION and "layer_ids" in m["conventions"]
    assert {c["piece"] for c in m["cases"]} == {"fusion", "head", "vocab", "ttt", "tree", "verify", "generate"}
    names = {c["name"] for c in m["cases"]}
    assert {"tree_chain", "tree_dynamic", "verify_greedy", "verify_sampling_law", "fusion_llama_left_padded",
            "generate_batch_ragged"} <= names
    head = json.loads((vectors / m["models"]["head"]["path"] / "config.json").read_text())
    assert head["num_key_value_heads"] < head["num_attention_heads"], "GQA"
    assert head["draft_vocab_size"] < head["vocab_size"], "a draft vocabulary smaller than the target's"
    for case in m["cases"]:  # every tensor the manifest names is in the case's file, as described
        tensors = load_file(vectors / case["file"])
        for kind in ("inputs", "outputs"):
            for name, spec in case[kind].items():
                t = tensors[f"{kind[:-1]}.{name}"]
                assert list(t.shape) == spec["shape"] and str(t.dtype) == f"torch.{spec['dtype']}", (case["name"], name)


def test_the_reference_passes_every_case(vectors, capsys):
    assert main(["vectors", "check", str(vectors)]) == 0
    assert "13 of 13 cases agree" in capsys.readouterr().out


def test_a_piece_the_adapter_does_not_declare_is_reported_not_implemented(vectors, capsys, tmp_path, monkeypatch):
    # vectors check printed PASS for pieces an adapter did not declare: they ran the reference's
    # own code, inherited from ReferenceAdapter.
    (tmp_path / "vocab_only.py").write_text("from eagle3_ref.testing.adapter import ReferenceAdapter\n\n\n"
                                            "class VocabOnly(ReferenceAdapter):\n    pieces = ('vocab',)\n\n\n"
                                            "ADAPTER = VocabOnly()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["vectors", "check", str(vectors), "--impl", "vocab_only"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL", "SKIP"))]
    assert lines and all(line.startswith("PASS  vocab") or ("not implemented by" in line and line.startswith("SKIP"))
                         for line in lines), out
    assert any(line.startswith("PASS  vocab") for line in lines) and "SKIP  tree" in out


def test_an_adapter_without_batches_is_reported_batch_1_only(vectors, capsys):
    from eagle3_ref.testing.adapter import ReferenceAdapter

    class BatchOne(ReferenceAdapter):
        generate_batch = None

    results = check(vectors, BatchOne(), only="generate")
    assert {r.name: r.skipped for r in results if r.skipped} == {
        name: "batch 1 only: the adapter has no generate_batch"
        for name in ("generate_batch_ragged", "generate_batch_every_token_drafted")}
    assert all(r.ok for r in results)
    wrong = {r.name for r in check(vectors, buggy.ROW_OFFSET_FROM_WIDTH, only="generate") if not r.ok}
    assert wrong == {"generate_batch_ragged"}, "the per-row offset bug is caught by the batched case alone"


@pytest.mark.parametrize("bug, piece", sorted((b, p) for b, p in buggy.BUGS.items() if b not in buggy.BEYOND_VECTORS))
def test_each_buggy_implementation_fails_its_pieces_cases(vectors, bug, piece):
    results = check(vectors, getattr(buggy, bug))
    failed = {r.piece for r in results if not r.ok}
    assert failed == {piece}, f"{bug}: failed pieces {failed}"
    assert all("first divergence" in r.error for r in results if not r.ok)


@pytest.mark.parametrize("bug", sorted(buggy.BEYOND_VECTORS))
def test_the_vectors_say_truly_which_bugs_they_cannot_see(vectors, bug):
    # The limit, stated: these pass every case (the conformance suite catches them, test_oracle.py).
    assert all(r.ok for r in check(vectors, getattr(buggy, bug))), f"{bug} is caught by the vectors after all"


def test_generate_cases_equal_transformers_greedy(vectors):
    from transformers import AutoModelForCausalLM

    m = _manifest(vectors)
    for case in (c for c in m["cases"] if c["piece"] == "generate"):
        target = AutoModelForCausalLM.from_pretrained(vectors / m["models"][case["models"]["target"]]["path"],
                                                      dtype=torch.float64)
        target.generation_config.eos_token_id = None
        t = load_file(vectors / case["file"])
        p = case["params"]
        ids, mask = t["input.input_ids"], t.get("input.attention_mask", torch.ones_like(t["input.input_ids"]))
        for b in range(ids.shape[0]):  # a batched case: each row against that row decoded alone
            row = ids[b:b + 1, int((mask[b] == 0).sum()):]
            want = target.generate(row, do_sample=False, max_new_tokens=p["max_new_tokens"],
                                   eos_token_id=p["eos_token_id"], pad_token_id=0, attention_mask=torch.ones_like(row))
            got = t["output.sequences"][b:b + 1, ids.shape[1] - row.shape[1]:]
            assert torch.equal(got[:, :want.shape[1]], want), f"{case['name']}, row {b}"
            assert bool((got[:, want.shape[1]:] == p.get("pad_token_id", 0)).all()), f"{case['name']}, row {b}: padding"
    lengths = load_file(vectors / "cases/generate_every_token_drafted.safetensors")["output.accepted_lengths"]
    assert lengths[:-1].min() >= 2, "that case must exercise acceptance (and so cache compaction)"


def test_sampling_law_is_the_product_of_target_probabilities(vectors):
    t = load_file(vectors / "cases/verify_sampling_law.safetensors")
    tokens, parents, probs = t["input.tokens"].tolist(), t["input.parents"].tolist(), t["input.target_probs"]
    assert float(t["output.probabilities"].sum()) == pytest.approx(1.0, abs=1e-12)
    for seq, prob in zip(t["output.sequences"].tolist(), t["output.probabilities"].tolist()):
        seq = [x for x in seq if x >= 0]
        node, want = 0, 1.0
        for token in seq[:-1]:  # accepted drafts: each a child of the node before
            want *= float(probs[node, token])
            node = next(c for c in range(len(tokens)) if parents[c] == node and tokens[c] == token)
        children = {tokens[c] for c in range(len(tokens)) if parents[c] == node}
        assert seq[-1] not in children, "the bonus can never be a token the walk would have accepted"
        want *= float(probs[node, seq[-1]])
        assert prob == pytest.approx(want, abs=1e-12), seq


def test_wrong_directories_are_named(tmp_path, vectors, capsys):
    assert main(["vectors", "check", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    m = _manifest(vectors) | {"schema_version": 999}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    assert main(["vectors", "check", str(tmp_path)]) == 2
    assert "schema_version 999" in capsys.readouterr().err
    assert main(["vectors", "export", str(vectors)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["vectors", "check", str(vectors), "--only", "tree"]) == 0
    assert main(["vectors", "check", str(vectors), "--only", "nothing"]) == 2


def test_a_damaged_case_fails_alone_and_a_damaged_manifest_is_named(tmp_path, vectors, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(vectors, copy)
    victim = next(c for c in _manifest(vectors)["cases"] if c["piece"] == "tree")
    data = (copy / victim["file"]).read_bytes()
    (copy / victim["file"]).write_bytes(data[: len(data) // 2])  # an interrupted copy
    results = check(copy, only="tree")
    failed = [r for r in results if not r.ok]
    assert [r.name for r in failed] == [victim["name"]] and "cannot be read" in failed[0].error
    assert len(results) > 1 and all(r.ok for r in results if r.name != victim["name"])  # the others still ran
    (copy / "manifest.json").write_text('{"schema_version": ')
    assert main(["vectors", "check", str(copy)]) == 2
    assert "manifest.json is damaged" in capsys.readouterr().err
