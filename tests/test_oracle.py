"""The conformance suite as an oracle for other implementations.

Run against each deliberately buggy implementation in ``eagle3_ref.testing.buggy`` (one
classic bug per core piece, and bugs the field shipped), the suite must fail, and the
failure must name the implementation under test, the first divergence with both values,
and (for property tests) the shrunk counterexample hypothesis found. Each run is a
separate pytest process, exactly as a user would type it, from a directory outside the
repository.

Each bug runs declaring float32 internals (``<BUG>_FLOAT32``), so it is judged by the
float32 tolerances: a bug caught within those is caught within float64's tighter ones too
(every comparison is "difference beyond tolerance").
"""

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from eagle3_ref.testing.adapter import load_adapter
from eagle3_ref.testing.buggy import BUGS
from eagle3_ref.testing.divergence import assert_same, first_divergence

pytestmark = pytest.mark.oracle


def test_every_classic_bug_is_caught_and_located(tmp_path, run_conformance):
    specs = {name: f"eagle3_ref.testing.buggy:{name}_FLOAT32" for name in BUGS}
    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip(BUGS, pool.map(lambda n: run_conformance(specs[n], BUGS[n], tmp_path, "-x"), BUGS)))
    for name, (code, out) in runs.items():
        assert code == 1, f"{name}: the {BUGS[name]} tests did not fail (exit {code}):\n{out[-3000:]}"
        assert "1 failed" in out, f"{name}: {out[-2000:]}"
        assert "eagle3 implementation under test" in out and specs[name] in out, f"{name}: module not named"
        assert "precision float32" in out, f"{name}: the summary does not say the declared precision:\n{out[-2000:]}"
        assert "first divergence at" in out and "reference" in out and "implementation" in out, \
            f"{name}: no first divergence in words:\n{out[-3000:]}"
        if BUGS[name] != "verify":  # verify also has a fixed two-children case, with no counterexample to shrink
            # hypothesis' heading for the shrunk case: "Falsifying example", "Failing test case" since 6.16x
            assert "Falsifying example" in out or "Failing test case" in out, f"{name}: no counterexample:\n{out[-3000:]}"


def test_load_adapter_names_what_is_wrong(tmp_path, monkeypatch):
    assert load_adapter("eagle3_ref.testing.buggy:TTT_SEES_FUTURE").name.startswith("buggy")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        load_adapter("no_such_module_xyz")
    with pytest.raises(ValueError, match="defines no ADAPTER"):
        load_adapter("eagle3_ref.testing.buggy")
    (tmp_path / "half_adapter.py").write_text("class A:\n    def build_tree(self, *a): pass\nADAPTER = A()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="lacks .*'collect_features'"):
        load_adapter("half_adapter")


def test_a_typo_in_the_implementation_is_one_usage_error(tmp_path, run_conformance):
    # A misspelt --eagle3-impl printed the same error in every test (61 errors over 5,433 lines).
    code, out = run_conformance("eagle3_ref.testing.adaptr", "tree or verify", tmp_path)
    assert code == 4, out  # pytest's usage error
    assert out.count("cannot import 'eagle3_ref.testing.adaptr'") == 1 and len(out.splitlines()) < 10, out


def test_a_tree_scored_wrong_below_the_first_level_points_at_the_depth(tmp_path, run_conformance):
    # The report once said only "first divergence at node 3: reference -2.7786, implementation
    # -2.7776" for a mask that let siblings see each other: now the node's depth and parent, what
    # still agrees, and from which depth the scores go wrong.
    (tmp_path / "deep_scores.py").write_text(
        "from eagle3_ref.testing.adapter import ReferenceAdapter\n\n\n"
        "class DeepScores(ReferenceAdapter):\n"
        "    def build_tree(self, *args, **kw):\n"
        "        tree = super().build_tree(*args, **kw)\n"
        "        return tree._replace(scores=tree.scores + 1e-3 * (tree.tree_position_ids >= 2))\n\n\n"
        "ADAPTER = DeepScores()\n")
    code, out = run_conformance("deep_scores", "tree", tmp_path, "-k", "brute_force")
    assert code == 1, out
    assert re.search(r"tokens and parents agree, the scores differ from depth 2 on: .*first divergence at node \d+ "
                     r"\(depth 2, parent \d+\)", out), out[-3000:]


def test_a_foreign_head_handle_gives_d2t_and_its_tapped_layers():
    # The head-handle contract (eagle3_ref/testing/handle.py) without a real engine: what the
    # reference's tree builder and loop read off a handle, and the refusals when it is missing.
    from types import SimpleNamespace

    from eagle3_ref.testing.adapter import ReferenceAdapter
    from eagle3_ref.testing.handle import AdapterHead

    d2t = torch.zeros(4, dtype=torch.long)
    official = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, vocab_size=12)
    for config, layers in [({**official, "eagle_config": {"eagle_aux_hidden_state_layer_ids": [0, 2, 4]}}, (1, 3, 5)),
                           ({**official, "eagle_aux_hidden_state_layer_ids": [1, 3, 5]}, (1, 3, 5)),  # vLLM's
                           (official, None), (None, None)]:
        assert AdapterHead.of(ReferenceAdapter(), SimpleNamespace(d2t=d2t, config=config)).aux_layer_ids == layers
    with pytest.raises(TypeError, match="no d2t tensor"):
        AdapterHead.of(ReferenceAdapter(), SimpleNamespace(config=official))
    with pytest.raises(ValueError, match="names no tapped layers"):
        ReferenceAdapter().generate(None, SimpleNamespace(d2t=d2t, config=official), torch.tensor([[1]]),
                                    max_new_tokens=1, num_nodes=2, max_depth=1, top_k=1)


def test_first_divergence_in_words():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([[1.0, 2.0], [3.0, 4.5]], [[1.0, 2.0], [3.0, 4.0]]) == ((1, 1), 4.5, 4.0)
    assert first_divergence([1.0, float("nan")], [1.0, 2.0])[0] == (1,)
    assert first_divergence([1.0, 2.0 + 1e-9], [1.0, 2.0], atol=1e-6) is None
    with pytest.raises(AssertionError, match=r"tree_mask: first divergence at row 2, column 0: reference False, "
                                             r"implementation True; 1 of 9"):
        assert_same(torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]]).bool(),
                    torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]]).bool(), "tree_mask", where=("row", "column"))
    with pytest.raises(AssertionError, match=r"shape is \(2,\), the reference's \(3,\)"):
        assert_same([1, 2], [1, 2, 3], "tokens")


PARTIAL_ADAPTER = '''
from eagle3_ref.testing.adapter import ReferenceAdapter, Unsupported


class VocabOnly(ReferenceAdapter):
    name = "vocab-only engine"
    pieces = ("vocab",)
    precision = "float32"

    def supports_head(self, config):
        # Refuses about half the reduced heads the vocab properties load: never none of 20.
        if config["draft_vocab_size"] % 2 and config["draft_vocab_size"] < config["vocab_size"]:
            return "odd reduced draft vocabularies"
        return True

    def build_vocab(self, token_counts, draft_vocab_size):
        if draft_vocab_size == 1:
            raise Unsupported("a one-token draft vocabulary")
        return super().build_vocab(token_counts, draft_vocab_size)


ADAPTER = VocabOnly()
'''


def test_an_adapter_declares_its_pieces_precision_and_scope(tmp_path, run_conformance):
    # Pieces it does not implement are skipped as "not implemented", never failed; examples out
    # of its scope are filtered and counted; the closing summary names the adapter and says both.
    (tmp_path / "partial_engine.py").write_text(PARTIAL_ADAPTER)
    code, out = run_conformance("partial_engine", "vocab or head", tmp_path, "-rs")
    assert code == 0, out[-3000:]
    assert "not implemented by vocab-only engine: head" in out and " failed" not in out, out[-3000:]
    assert "implementation under test: vocab-only engine (partial_engine), precision float32" in out, out[-3000:]
    assert "not implemented (their tests skipped): fusion, head, ttt, tree, verify, generate" in out, out[-3000:]
    assert "examples filtered as out of scope:" in out and "x odd reduced draft vocabularies" in out, out[-3000:]


NARROW_ADAPTER = """
from eagle3_ref.testing.adapter import ReferenceAdapter, Unsupported


class Narrow(ReferenceAdapter):
    name = "narrow engine"
    pieces = ("vocab",)

    def supports_head(self, config):
        return "another architecture"

    def build_vocab(self, token_counts, draft_vocab_size):
        raise Unsupported("another architecture")


ADAPTER = Narrow()
"""


def test_a_test_whose_every_example_is_out_of_scope_is_not_supported_not_failed(tmp_path, run_conformance):
    # Hypothesis gives up on a test whose examples are all filtered (a health check): for an
    # adapter that declines whole configurations (a peer's architecture, a vocabulary it cannot
    # hold), that is "not supported", skipped and counted, never a failure.
    (tmp_path / "narrow_engine.py").write_text(NARROW_ADAPTER)
    code, out = run_conformance("narrow_engine", "vocab", tmp_path, "-rs")
    assert code == 0 and " failed" not in out, out[-3000:]
    assert "not supported by narrow engine: every example drawn was out of its scope" in out, out[-3000:]
    assert "tests not supported (every example out of scope, skipped):" in out, out[-3000:]


def test_load_adapter_asks_only_for_the_declared_pieces(tmp_path, monkeypatch):
    (tmp_path / "tree_only.py").write_text("class A:\n    pieces = ('tree',)\n    def build_tree(self, *a): pass\n"
                                           "    def load_head(self, *a): pass\nADAPTER = A()\n")
    (tmp_path / "odd_precision.py").write_text("from eagle3_ref.testing.adapter import ReferenceAdapter\n"
                                               "class A(ReferenceAdapter):\n    precision = 'float16'\nADAPTER = A()\n")
    (tmp_path / "odd_piece.py").write_text("from eagle3_ref.testing.adapter import ReferenceAdapter\n"
                                           "class A(ReferenceAdapter):\n    pieces = ('trees',)\nADAPTER = A()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_adapter("tree_only").pieces == ("tree",)
    with pytest.raises(ValueError, match="precision must be one of .*'float16'"):
        load_adapter("odd_precision")
    with pytest.raises(ValueError, match=r"pieces \['trees'\] are not among"):
        load_adapter("odd_piece")


PRODUCTION_ENGINE = '''
from eagle3_ref.testing.adapter import ReferenceAdapter


class ProductionOnly(ReferenceAdapter):
    name = "production-shapes engine"
    head_shapes = "production"

    def supports_head(self, config):
        if config["eagle3_ref"]["num_aux_layers"] != 3:
            return "fewer than three tapped layers"
        if config["hidden_size"] != config["num_attention_heads"] * config.get("head_dim", 0):
            return "head_dim not dividing the hidden size"
        return True


ADAPTER = ProductionOnly()
'''


def test_an_engine_that_refuses_exotic_heads_is_not_drawn_them(tmp_path, run_conformance):
    # Before production shapes, an engine refusing these filtered 65-78 % of its head examples.
    (tmp_path / "production_engine.py").write_text(PRODUCTION_ENGINE)
    code, out = run_conformance("production_engine", "head", tmp_path)
    assert code == 0, out[-3000:]
    assert "implementation under test: production-shapes engine" in out and "filtered" not in out, out[-3000:]


def test_every_mutant_still_applies_to_the_code():
    # docs/testing.md's mutation table is only true while each mutant's source is in the code
    from eagle3_ref.testing.mutants import MUTANTS, PACKAGE
    from eagle3_ref.testing.plugin import CONFORMANCE_MARKERS

    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        assert (PACKAGE / m.file).read_text().count(m.old) == 1, f"{m.name}: its source is not in {m.file} exactly once"
        assert m.piece in CONFORMANCE_MARKERS, m.name
        assert m.old != m.new, m.name


def test_a_mutant_is_caught_through_the_adapter_alone():
    # The batch sampled with one generator that drops top-k / top-p (#31): the whole loop of the
    # mutants runner (a mutated copy of the package, the conformance suite run on it in its own
    # process, the verdict read from its exit), on one mutant, restricted to the test that must
    # catch it. And an unmutated copy passes the same test, so the verdict is the mutant's.
    from eagle3_ref.testing.mutants import MUTANTS, Mutant, run_mutant

    mutant = next(m for m in MUTANTS if m.name == "ONE_GENERATOR_LOSES_WARPERS")
    only = ("-k", "one_generator_follows_the_warped_law")
    result = run_mutant(mutant, extra=only)
    assert result.outcome == "caught", result
    assert result.first_failure == "test_a_batch_sampled_with_one_generator_follows_the_warped_law"
    same = Mutant("NONE", mutant.piece, mutant.file, mutant.old, mutant.old, "no change")
    assert run_mutant(same, extra=only).outcome == "missed"


def test_the_mutation_table_in_the_docs_lists_every_mutant():
    from pathlib import Path

    from eagle3_ref.testing.mutants import MUTANTS

    doc = (Path(__file__).parents[1] / "docs" / "testing.md").read_text()
    missing = [m.name for m in MUTANTS if f"`{m.name}`" not in doc]
    assert not missing, f"docs/testing.md's mutation table lacks {missing}: rerun python -m eagle3_ref.testing.mutants"
