"""0.1's paths keep working for one release, each with a DeprecationWarning that names the new
one: the modules that moved into eagle3_ref.costaware and eagle3_ref.tools, TreeConfig.auto, and
batches through eagle3_ref.generate. (The suite turns these warnings into errors elsewhere, so
its own code uses the new paths.)"""

import importlib
import sys

import pytest
import torch

from eagle3_ref._compat import MOVED


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_a_moved_module_imports_from_its_old_path_with_a_warning(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)  # the same module: its state and classes agree
    assert module.__spec__.name == new  # not stamped with the old name (reload, pickling)


def test_from_the_package_import_an_old_module_name():
    import eagle3_ref

    sys.modules.pop("eagle3_ref.bench", None)
    vars(eagle3_ref).pop("bench", None)  # set by an earlier import of the old path
    with pytest.warns(DeprecationWarning, match="eagle3_ref.tools.bench"):
        from eagle3_ref import bench
    from eagle3_ref.tools import bench as new

    assert bench is new


def test_tree_config_auto_builds_the_cost_aware_tree_with_a_warning():
    from eagle3_ref.costaware import AutoTreeConfig, Calibration, CostModel
    from eagle3_ref.costaware.auto_tree import EDGES
    from eagle3_ref.tree import TreeConfig

    costs = CostModel({1: 8.0, 64: 20.0}, {1: 2.0, 8: 9.0}, 0.5, 2)
    calibration = Calibration(0.0, tuple([0.3] * len(EDGES)), 0.3, 2)
    with pytest.warns(DeprecationWarning, match="AutoTreeConfig.from_calibration"):
        old = TreeConfig.auto(costs, calibration, max_depth=3)
    assert old == AutoTreeConfig.from_calibration(costs, calibration, max_depth=3)


def test_a_batch_through_eagle3_ref_generate_still_decodes_with_a_warning(tiny_pair):
    from eagle3_ref import generate
    from eagle3_ref.decoding import speculative_generate

    target, head = tiny_pair
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.warns(DeprecationWarning, match="eagle3_ref.speculative_generate"):
        old = generate.speculative_generate(target, head, ids, max_new_tokens=4)
    new = speculative_generate(target, head, ids, max_new_tokens=4)
    assert torch.equal(old.sequences, new.sequences)
    with pytest.warns(DeprecationWarning, match="eagle3_ref.autoregressive_generate"):
        plain = generate.autoregressive_generate(target, ids, max_new_tokens=4)
    assert plain.sequences.shape == (2, 7)


@pytest.fixture
def tiny_pair():
    from transformers import LlamaConfig, LlamaForCausalLM

    from eagle3_ref import Eagle3Config, Eagle3DraftHead

    torch.manual_seed(0)
    target = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=8,
                                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)).eval()
    head = Eagle3DraftHead(Eagle3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_key_value_heads=2, target_hidden_size=16)).eval()
    head.attach_embedding(target.get_input_embeddings().weight)
    return target, head
