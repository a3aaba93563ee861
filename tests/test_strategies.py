"""The hypothesis strategies keep their promises: every object they draw is valid, and
every case the suite relies on (each architecture, GQA, a head narrower or wider than its
target, a draft vocabulary smaller than and equal to the target's, deep and shallow
trees) is actually drawn. ``find`` fails if a strategy can never produce a case."""

import pytest
import torch
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from eagle3_ref.fusion import default_aux_layer_ids, validate_aux_layer_ids
from eagle3_ref.testing.strategies import (
    aux_layer_ids,
    build_target,
    draft_heads,
    head_configs,
    seeds,
    target_configs,
    targets,
    trees,
)
from eagle3_ref.vocab import validate_vocab_mapping

pytestmark = pytest.mark.strategies
FIND = settings(max_examples=500, suppress_health_check=list(HealthCheck), database=None)


@given(target_configs(architectures=("llama", "qwen2", "mistral")), seeds)
def test_targets_build_and_run(config, seed):
    model = build_target(config, seed)
    assert model.config.num_attention_heads % model.config.num_key_value_heads == 0
    logits = model(torch.randint(0, config.vocab_size, (1, 4))).logits
    assert logits.shape == (1, 4, config.vocab_size) and logits.dtype == torch.float64
    assert logits.std() > 0.1  # widened init: logits are not all ~0


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_every_architecture_is_drawn(arch):
    found = find(target_configs(architectures=("llama", "qwen2", "mistral")), lambda c: c.model_type == arch, settings=FIND)
    assert found.model_type == arch


@given(st.data())
def test_head_configs_fit_their_target(data):
    tc = data.draw(target_configs())
    hc = data.draw(head_configs(tc))
    assert hc.vocab_size == tc.vocab_size and hc.target_hidden_size == tc.hidden_size
    assert 1 <= hc.draft_vocab_size <= hc.vocab_size
    assert hc.num_attention_heads % hc.num_key_value_heads == 0
    if hc.aux_layer_ids is None:
        default_aux_layer_ids(tc.num_hidden_layers)
    else:
        validate_aux_layer_ids(hc.aux_layer_ids, tc.num_hidden_layers)


@pytest.mark.parametrize("case", [
    lambda c: c.num_key_value_heads < c.num_attention_heads,  # GQA
    lambda c: c.num_key_value_heads == c.num_attention_heads,  # MHA
    lambda c: c.target_hidden_size != c.hidden_size,
    lambda c: c.target_hidden_size == c.hidden_size,
    lambda c: c.draft_vocab_size < c.vocab_size,
    lambda c: c.draft_vocab_size == c.vocab_size,
    lambda c: c.aux_layer_ids is None,  # EAGLE-3's default layers
], ids=["gqa", "mha", "narrow-or-wide", "same-width", "small-draft-vocab", "full-draft-vocab", "default-layers"])
def test_every_head_case_is_drawn(case):
    find(target_configs().flatmap(head_configs), case, settings=FIND)


@given(st.data())
def test_draft_heads_are_consistent(data):
    target = data.draw(targets(max_layers=4))
    head = data.draw(draft_heads(target))
    validate_vocab_mapping(head.d2t, head.t2d, head.config.vocab_size, head.config.draft_vocab_size)
    assert head.fc.weight.dtype == torch.float64
    assert (head.embed_weight is None) == head.config.owns_embedding


@given(st.integers(1, 40), st.data())
def test_aux_layer_ids_are_valid(n, data):
    ids = data.draw(aux_layer_ids(n))
    if ids is None:
        assert n >= 7
    else:
        validate_aux_layer_ids(ids, n)


@given(trees(max_nodes=15))
def test_trees_are_rooted_and_topologically_ordered(parents):
    assert parents[0] == -1 and all(0 <= p < i for i, p in enumerate(parents) if i)


def test_trees_include_chains_and_deep_branching():
    find(trees(), lambda p: len(p) >= 5 and all(p[i] == i - 1 for i in range(1, len(p))), settings=FIND)
    find(trees(), lambda p: len(p) >= 6 and len(set(p[1:])) < len(p) - 1 and max(p) >= 2, settings=FIND)


@given(st.data())
def test_production_heads_are_what_engines_build(data):
    # Three distinct tapped layers and hidden = heads x head_dim: what SpecForge, vLLM and
    # SGLang load. The conformance suite draws these for any adapter but the reference.
    tc = data.draw(target_configs(shapes="production"))
    hc = data.draw(head_configs(tc, shapes="production"))
    assert hc.hidden_size == hc.num_attention_heads * hc.head_dim and hc.head_dim % 2 == 0
    ids = hc.aux_layer_ids or default_aux_layer_ids(tc.num_hidden_layers)
    assert len(set(ids)) == 3


@pytest.mark.parametrize("case", [
    lambda c: len(c.aux_layer_ids or (0, 1, 2)) < 3,
    lambda c: c.hidden_size != c.num_attention_heads * c.head_dim,
], ids=["fewer-than-three-layers", "head-dim-not-dividing-hidden"])
def test_the_reference_still_draws_exotic_heads(case):
    find(target_configs().flatmap(head_configs), case, settings=FIND)
