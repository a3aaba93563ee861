"""Batched speculative decoding (eagle3_ref/batch.py): B rows, ragged acceptance.

Proofs:
* greedy: each row of a random, left-padded batch (B = 1..5, three architectures, trees and
  chains, float64) equals ``target.generate`` on that row alone, EOS per row included;
* the batched tree builder equals the per-row builder, on a first call and after a cycle;
* sampling: each row's law over the prefill and one cycle, enumerated through a scripted
  sampler, is what transformers' generate samples from for the same temperature, top-k and
  top-p, for every combination of the three and every way of passing generators (none, one,
  one per row), the other rows drawing from their own streams; with one generator per row,
  each row samples exactly what it samples decoded alone;
* a state machine over many cycles, rows finishing at different times: every active row's
  target cache, draft cache and carried features equal a fresh computation on its text.
"""

import copy
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from transformers import DynamicCache, LlamaConfig

from eagle3_ref.batch import RaggedKV, batch_cycle, build_draft_trees, left_padding_lengths, prefill_batch, row_pickers
from eagle3_ref.decoding import autoregressive_generate, speculative_generate
from eagle3_ref.draft_head import Eagle3Config
from eagle3_ref.fusion import collect_features, default_aux_layer_ids
from eagle3_ref.targets import cache_kwargs
from eagle3_ref.testing.conformance.test_generate import hf_greedy, tree_configs
from eagle3_ref.testing.plugin import examples_per_architecture
from eagle3_ref.testing.strategies import build_draft_head, build_target, head_configs, seeds, target_configs
from eagle3_ref.tree import HeadDrafter, TreeConfig, build_draft_tree

pytestmark = pytest.mark.generate

BATCH_ARCHITECTURES = ("llama", "qwen2", "qwen3_moe")  # full; sliding window on a mix of layers; MoE


def left_pad(prompts: list[list[int]], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of left-padded prompts (``extra`` more padding columns)."""
    T = max(map(len, prompts)) + extra
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@st.composite
def batches(draw, vocab: int, max_rows: int = 5, max_len: int = 12):
    rows = draw(st.integers(1, max_rows), label="B")
    prompts = [draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=max_len)) for _ in range(rows)]
    return prompts, draw(st.integers(0, 2), label="extra padding")


@pytest.mark.parametrize("arch", BATCH_ARCHITECTURES)
@settings(max_examples=2 * examples_per_architecture())
@given(seed=seeds, data=st.data())
def test_each_row_equals_generate_on_that_row_alone(arch, seed, data):
    every_token = data.draw(st.booleans(), label="draft every token")  # so that cycles accept, and raggedly
    tc = data.draw(target_configs(architectures=(arch,), min_layers=2, max_layers=5,
                                  max_vocab=5 if every_token else 24, min_vocab=3))
    target = build_target(tc, seed)
    config = data.draw(head_configs(tc))
    if every_token:
        V, depth = tc.vocab_size, data.draw(st.integers(1, 2))
        config = dataclasses.replace(config, draft_vocab_size=V)
        tree = TreeConfig(num_nodes=1 + V + (depth - 1) * V * V, max_depth=depth, top_k=V)
    else:
        depth = data.draw(st.integers(1, 6), label="chain depth")
        tree = data.draw(st.one_of(tree_configs(config.draft_vocab_size), st.just(TreeConfig.chain(depth))))
    head = build_draft_head(config, seed, None if config.owns_embedding else target.get_input_embeddings().weight)
    prompts, extra = data.draw(batches(tc.vocab_size))
    ids, mask = left_pad(prompts, extra)
    max_new = data.draw(st.integers(1, 16))
    eos = data.draw(st.one_of(st.none(), st.integers(0, tc.vocab_size - 1)))
    out = speculative_generate(target, head, ids, attention_mask=mask, max_new_tokens=max_new, tree=tree,
                               eos_token_id=eos, pad_token_id=-1)
    assert out.sequences.shape[0] == len(prompts) and torch.equal(out.sequences[:, :ids.shape[1]], ids)
    for b, prompt in enumerate(prompts):
        want = hf_greedy(target, torch.tensor([prompt]), max_new, eos)[0, len(prompt):].tolist()
        assert out.new_tokens(b).tolist() == want, f"row {b} of {len(prompts)} ({arch}, {tree}, eos {eos})"
        assert out.sequences[b, ids.shape[1] + len(want):].eq(-1).all(), f"row {b}: not padded after its end"
        assert sum(out.accepted_lengths[b]) + 1 == len(want), f"row {b}: accepted lengths {out.accepted_lengths[b]}"
        assert all(1 <= a <= tree.max_depth + 1 for a in out.accepted_lengths[b])
    alone = speculative_generate(target, head, ids[:1, ids.shape[1] - len(prompts[0]):], max_new_tokens=max_new,
                                 tree=tree, eos_token_id=eos)
    assert alone.new_tokens.tolist() == out.new_tokens(0).tolist()  # and row 0 alone through the B = 1 loop
    plain = autoregressive_generate(target, ids, attention_mask=mask, max_new_tokens=max_new, eos_token_id=eos,
                                    pad_token_id=-1)  # the batched baseline, likewise
    assert torch.equal(plain.sequences, out.sequences), "batched plain decoding differs from batched speculative"


def ragged_cache_row(state: RaggedKV, b: int):
    n = int(state.lengths[b])
    return state.cache.key[b:b + 1, :, state.cache.length - n:], state.cache.value[b:b + 1, :, state.cache.length - n:]


@settings(max_examples=10)
@given(tc=target_configs(max_vocab=24), seed=seeds, data=st.data())
def test_the_batched_tree_builder_equals_the_per_row_builder(tc, seed, data):
    config = data.draw(head_configs(tc))
    head = build_draft_head(config, seed, None if config.owns_embedding else torch.randn(tc.vocab_size, config.hidden_size,
                                                                                          dtype=torch.float64))
    tree = data.draw(tree_configs(config.draft_vocab_size))
    width = config.num_aux_layers * config.target_hidden_size
    prompts, _ = data.draw(batches(tc.vocab_size, max_len=8))
    rows = [p + [data.draw(st.integers(0, tc.vocab_size - 1))] for p in prompts]  # + the root
    state = None
    for call in range(2):  # a first call, then one after each row grew by its own number of tokens
        if call:
            rows = [r + data.draw(st.lists(st.integers(0, tc.vocab_size - 1), min_size=1, max_size=4)) for r in rows]
        seen = [0] * len(rows) if state is None else state.lengths.tolist()
        new = [len(r) - 1 - s for r, s in zip(rows, seen)]
        feats = [torch.randn(1, n, width, dtype=torch.float64) for n in new]
        m = max(new)
        block = torch.cat([torch.cat([torch.full((1, m - n, width), float("nan"), dtype=torch.float64), f], 1)
                           for f, n in zip(feats, new)])  # padding columns NaN: must never leak
        ids, _ = left_pad(rows)
        old = state
        trees, state = build_draft_trees(head, torch.nan_to_num(block), ids, torch.tensor([len(r) for r in rows]),
                                         tree, state)
        for b, row in enumerate(rows):
            cache = None
            if old is not None:
                from eagle3_ref.draft_head import KVCache
                cache = KVCache(*ragged_cache_row(old, b))
            want = build_draft_tree(head, feats[b], torch.tensor([row]), tree, cache)
            got = trees[b]
            assert got.tokens.tolist() == want.tokens.tolist() and got.parents.tolist() == want.parents.tolist(), \
                f"call {call}, row {b}: tree differs"
            torch.testing.assert_close(got.scores, want.scores, rtol=1e-9, atol=1e-9)
            key, value = ragged_cache_row(state, b)
            torch.testing.assert_close(key, want.draft_cache.key, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(value, want.draft_cache.value, rtol=1e-9, atol=1e-9)


def _tiny_pair(vocab: int = 4, seed: int = 3):
    tc = LlamaConfig(vocab_size=vocab, hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0)
    target = build_target(tc, seed)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.3)  # tempered: every token keeps visible mass
    head = build_draft_head(Eagle3Config.for_target(tc, aux_layer_ids=(0, 1, 2)), seed,
                            target.get_input_embeddings().weight)
    return target, head


# Every warper combination, and every way of passing randomness: none (torch's global
# stream), one generator (seeding a stream per row), a list of generators (one per row).
WARPS = [dict(temperature=0.9), dict(temperature=0.9, top_k=2), dict(temperature=1.3, top_p=0.7),
         dict(temperature=0.6, top_k=3, top_p=0.8)]
GENERATOR_KINDS = {"none": lambda: None, "one": lambda: torch.Generator().manual_seed(5),
                   "per-row": lambda: [torch.Generator().manual_seed(40 + b) for b in range(3)]}


@pytest.mark.parametrize("kind", GENERATOR_KINDS)
@pytest.mark.parametrize("warp", WARPS, ids=lambda w: "-".join(w))
def test_each_rows_law_is_what_generate_samples_for_every_warper_and_generator(warp, kind):
    # The oracle is transformers' own processor list for the same generation config
    # (eagle3_ref.testing.law), not the reference's: a batch whose per-row samplers lost top-k
    # or top-p on one of the three generator paths, or applied them in another order, fails.
    # Enumerated through a scripted sampler on one row, over the batched prefill (the first
    # token) and one batched cycle (drafts accepted and the bonus), every other row keeping its
    # own stream; each emitted token's law given the tokens before it must be generate's.
    from eagle3_ref.testing.law import assert_follows_the_generation_law
    from eagle3_ref.testing.sampling import enumerate_runs

    target, head = _tiny_pair()
    layer_ids, tree = (0, 1, 2), TreeConfig(num_nodes=4, max_depth=2, top_k=2)
    prompts = [[1, 3, 2], [2], [3, 1]]
    ids, mask = left_pad(prompts)
    settings_ = dict(temperature=warp["temperature"], top_k=warp.get("top_k", 0), top_p=warp.get("top_p", 1.0))
    row = WARPS.index(warp) % len(prompts)  # a different row under test for each warp

    def run(sampler):
        torch.manual_seed(0)  # torch's global stream, for the rows that use it
        pickers = row_pickers(len(prompts), generator=GENERATOR_KINDS[kind](), **settings_)
        pickers[row] = copy.copy(pickers[row])  # "none" shares one picker between the rows
        pickers[row].sampler = sampler
        state, _ = prefill_batch(target, ids, mask, layer_ids, pickers, set(), 100)
        first = state.tokens[row][-1]
        appended, _ = batch_cycle(target, HeadDrafter(head), state, tree, layer_ids, pickers, set(), [100] * 3,
                                  dict.fromkeys(["draft", "verify", "accept"], 0.0))
        return [first] + appended[row]

    def next_logits(emitted: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return target(torch.tensor([prompts[row] + emitted])).logits[0, -1]

    assert_follows_the_generation_law(enumerate_runs(run), next_logits, settings_,
                                      what=f"row {row} of {len(prompts)}, generator {kind}, {settings_}")


def test_one_generator_per_row_samples_what_each_row_samples_alone():
    target, head = _tiny_pair(vocab=6, seed=5)
    prompts = [[1, 2, 3, 4], [5], [2, 2]]
    ids, mask = left_pad(prompts)
    kw = dict(max_new_tokens=10, tree=TreeConfig(num_nodes=5, max_depth=3, top_k=2), temperature=0.8, top_p=0.95,
              aux_layer_ids=(0, 1, 2))
    out = speculative_generate(target, head, ids, attention_mask=mask,
                               generator=[torch.Generator().manual_seed(10 + b) for b in range(3)], **kw)
    assert len({tuple(out.new_tokens(b).tolist()) for b in range(3)}) == 3
    for b, prompt in enumerate(prompts):
        alone = speculative_generate(target, head, torch.tensor([prompt]), generator=torch.Generator().manual_seed(10 + b),
                                     **kw)
        assert out.new_tokens(b).tolist() == alone.new_tokens.tolist(), f"row {b}"
    # and a row's stream is its own: change row 0's seed, rows 1 and 2 do not move
    again = speculative_generate(target, head, ids, attention_mask=mask,
                                 generator=[torch.Generator().manual_seed(s) for s in (99, 11, 12)], **kw)
    assert [again.new_tokens(b).tolist() for b in (1, 2)] == [out.new_tokens(b).tolist() for b in (1, 2)]
    assert again.new_tokens(0).tolist() != out.new_tokens(0).tolist()
    # one generator seeds a stream per row: a row's sample does not depend on what the others are
    shared = []
    for rows in (prompts, [prompts[0], [3, 3, 3, 3, 3], [4]]):
        ids, mask = left_pad(rows)
        shared.append(speculative_generate(target, head, ids, attention_mask=mask,
                                           generator=torch.Generator().manual_seed(7), **kw))
    assert shared[0].new_tokens(0).tolist() == shared[1].new_tokens(0).tolist()


class RaggedMachine(RuleBasedStateMachine):
    """Many batched cycles with rows leaving at different times (each its own token budget);
    after each, every active row's state equals a fresh computation on its own text."""

    @initialize(data=st.data(), seed=seeds)
    def setup(self, data, seed):
        tc = data.draw(target_configs(architectures=BATCH_ARCHITECTURES, min_layers=7, max_layers=8))
        self.target = build_target(tc, seed)
        self.layer_ids = default_aux_layer_ids(tc.num_hidden_layers)
        V = tc.vocab_size
        config = Eagle3Config.for_target(tc, draft_vocab_size=data.draw(st.integers(3, V)))
        self.head = build_draft_head(config, seed, self.target.get_input_embeddings().weight)
        self.drafter = HeadDrafter(self.head)
        self.start(data)

    def start(self, data):
        """A new batch: rows of different lengths, each with its own token budget."""
        prompts, extra = data.draw(batches(self.head.config.vocab_size, max_rows=4, max_len=10))
        ids, mask = left_pad(prompts, extra)
        self.pickers = row_pickers(len(prompts), 0.0, 0, 1.0, None)
        self.budget = [data.draw(st.integers(1, 30)) for _ in prompts]
        self.batch, _ = prefill_batch(self.target, ids, mask, self.layer_ids, self.pickers, set(), 10**6)
        self.prompt = [len(p) for p in prompts]
        self.finished = [False] * len(prompts)

    @rule(data=st.data())
    def cycle(self, data):
        from eagle3_ref.batch import drop_finished

        if not self.batch.rows:  # every row finished: the next batch
            self.start(data)
        tree = data.draw(tree_configs(self.head.config.draft_vocab_size))
        rooms = [max(self.budget[r] - (len(t) - self.prompt[r]), 1) for r, t in zip(self.batch.rows, self.batch.tokens)]
        timings = dict.fromkeys(["draft", "verify", "accept"], 0.0)
        _, finished = batch_cycle(self.target, self.drafter, self.batch, tree, self.layer_ids, self.pickers, set(), rooms,
                             timings)
        for r, done in zip(self.batch.rows, finished):
            self.finished[r] = done
        if all(finished):
            self.batch.rows = []
        else:
            drop_finished(self.batch, finished)

    @invariant()
    def every_active_row_is_fresh(self):
        if not getattr(self, "batch", None) or not self.batch.rows:
            return
        batch = self.batch
        assert not any(self.finished[r] for r in batch.rows), "a finished row is still in the batch"
        width = max(len(t) - 1 for t in batch.tokens)
        atol = 1e-9
        for i, tokens in enumerate(batch.tokens):
            seq = torch.tensor([tokens[:-1]])
            fresh = DynamicCache(config=self.target.config)
            with torch.no_grad():
                self.target(seq, **cache_kwargs(self.target, fresh), use_cache=True)
            for j, (got, want) in enumerate(zip(batch.cache.layers, fresh.layers)):
                n = want.keys.shape[-2]
                assert got.keys.shape[-2] == min(width, got.keys.shape[-2]) and got.keys.shape[-2] >= n, f"layer {j}"
                torch.testing.assert_close(got.keys[i:i + 1, :, got.keys.shape[-2] - n:], want.keys, rtol=atol, atol=atol)
                torch.testing.assert_close(got.values[i:i + 1, :, got.keys.shape[-2] - n:], want.values, rtol=atol,
                                           atol=atol)
            features = collect_features(self.target, seq, self.layer_ids)
            S = int(batch.draft_state.lengths[i]) if batch.draft_state is not None else 0
            c = int(batch.new[i])
            assert S + c == seq.shape[1], f"row {batch.rows[i]}: every slot seen once"
            torch.testing.assert_close(batch.features[i:i + 1, batch.features.shape[1] - c:], features[:, S:],
                                       rtol=atol, atol=atol)
            if S:
                with torch.no_grad():
                    want = self.head(torch.tensor([tokens[1:S + 1]]), self.head.fuse(features[:, :S]),
                                     torch.arange(S)[None]).cache
                key, value = ragged_cache_row(batch.draft_state, i)
                torch.testing.assert_close(key, want.key, rtol=atol, atol=atol)
                torch.testing.assert_close(value, want.value, rtol=atol, atol=atol)


def test_ragged_state_stays_fresh_over_many_cycles():
    run_state_machine_as_test(RaggedMachine, settings=settings(max_examples=examples_per_architecture() * 2,
                                                               stateful_step_count=12, deadline=None))


def test_bad_batches_are_refused_by_name():
    target, head = _tiny_pair()
    ids, mask = left_pad([[1, 2, 3], [2]])
    with pytest.raises(ValueError, match="not left-padded"):
        speculative_generate(target, head, ids, attention_mask=mask.flip(1), max_new_tokens=3)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        speculative_generate(target, head, ids, attention_mask=mask[:, 1:], max_new_tokens=3)
    with pytest.raises(ValueError, match="2 generators for a batch of"):
        speculative_generate(target, head, torch.cat([ids, ids]), attention_mask=torch.cat([mask, mask]),
                             max_new_tokens=3, temperature=1.0, generator=[torch.Generator()] * 2)
    with pytest.raises(ValueError, match="have no token"):
        left_padding_lengths(torch.tensor([[0, 0], [1, 1]]))


@settings(max_examples=6)
@given(tc=target_configs(min_layers=2, max_layers=3, max_vocab=16), seed=seeds, data=st.data())
def test_any_drafter_runs_row_by_row_in_a_batch(tc, seed, data):
    # A drafter that is not an Eagle3DraftHead (here: one that knows the target's greedy text)
    # drafts each row alone; verification is still one forward. A perfect drafter makes every
    # full cycle accept max_depth + 1 tokens, so the rows' acceptance is as ragged as their ends.
    from eagle3_ref.testing.drafters import OracleDrafter

    target = build_target(tc, seed)
    depth = data.draw(st.integers(1, 3))
    prompts, extra = data.draw(batches(tc.vocab_size, max_rows=3, max_len=6))
    ids, mask = left_pad(prompts, extra)
    max_new = data.draw(st.integers(1, 10))
    out = speculative_generate(target, OracleDrafter(target), ids, attention_mask=mask, max_new_tokens=max_new,
                               tree=TreeConfig(depth + 1, depth, 1), aux_layer_ids=(0,), pad_token_id=-1)
    for b, prompt in enumerate(prompts):
        assert out.new_tokens(b).tolist() == hf_greedy(target, torch.tensor([prompt]), max_new, None)[0, len(prompt):].tolist()
        assert out.accepted_lengths[b][:-1] == [depth + 1] * (len(out.accepted_lengths[b]) - 1)


def test_a_target_that_reads_positions_from_the_cache_is_refused_for_batches():
    from transformers import Llama4TextConfig

    tc = Llama4TextConfig(vocab_size=16, hidden_size=8, intermediate_size=8, intermediate_size_mlp=8, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=4, attention_chunk_size=4,
                          num_local_experts=1, num_experts_per_tok=1, no_rope_layers=[0, 1], attn_temperature_tuning=True,
                          max_position_embeddings=64)
    target = build_target(tc, 0)
    head = build_draft_head(Eagle3Config.for_target(tc, aux_layer_ids=(0, 1)), 0, target.get_input_embeddings().weight)
    ids, mask = left_pad([[1, 2, 3], [4]])
    with pytest.raises(ValueError, match="attn_temperature_tuning"):
        speculative_generate(target, head, ids, attention_mask=mask, max_new_tokens=3)


@pytest.mark.parametrize("warp", [dict(top_k=1), dict(top_p=1e-6)], ids=["top_k=1", "top_p=1e-6"])
@pytest.mark.parametrize("generators", ["one", "one per row", "none"])
def test_a_warper_that_leaves_one_token_makes_every_batched_path_greedy(warp, generators):
    # With top-k 1, or a top-p that keeps only the most likely token, sampling at any temperature
    # is greedy decoding: every row must equal generate's greedy text, whatever the generators.
    # A batched path whose per-row samplers lost top-k / top-p (temperature only) samples instead;
    # the law properties above build their samplers by hand and could not see it.
    target, head = _tiny_pair(vocab=6, seed=5)
    prompts = [[1, 2, 3, 4], [5], [2, 2]]
    ids, mask = left_pad(prompts)
    generator = {"one": torch.Generator().manual_seed(0), "none": None,
                 "one per row": [torch.Generator().manual_seed(b) for b in range(3)]}[generators]
    kw = dict(attention_mask=mask, max_new_tokens=8, temperature=1.5, generator=generator, pad_token_id=0, **warp)
    spec = speculative_generate(target, head, ids, tree=TreeConfig(num_nodes=5, max_depth=3, top_k=2),
                                aux_layer_ids=(0, 1, 2), **kw)
    plain = autoregressive_generate(target, ids, **kw)
    for b, prompt in enumerate(prompts):
        want = hf_greedy(target, torch.tensor([prompt]), 8, None)[0, len(prompt):].tolist()
        assert spec.new_tokens(b).tolist() == want, f"speculative, row {b}"
        assert plain.new_tokens(b).tolist() == want, f"plain, row {b}"
