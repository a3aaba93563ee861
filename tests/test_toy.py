"""The toy world's recipe: corpus split, tokenizer, target training (resumable)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from eagle3_ref.cli import main
from eagle3_ref.toy import EOS, corpus_text, split_modules, stdlib_files, train_target, train_tokenizer

pytestmark = pytest.mark.toy


def test_split_is_by_module_and_stable():
    files = stdlib_files()
    assert len(files) > 300 and not any("test" in p.parts for p in files)
    train, held = split_modules(files)
    assert train and held and not set(train) & set(held)
    assert split_modules(files) == (train, held)  # a pure function of the names
    held_packages = {p.parent for p in held if p.name == "__init__.py"}
    assert all(q.parent not in held_packages for q in train)  # no module is split across the two


def test_tokenizer_round_trips_code():
    text = corpus_text(stdlib_files()[:5])
    tok = train_tokenizer(text, vocab_size=400)
    snippet = "def f(x):\n    return x ** 2  # ünïcode\n"
    assert tok.decode(tok(snippet)["input_ids"]) == snippet
    assert tok.convert_tokens_to_ids(EOS) == tok.eos_token_id and len(tok) == 400


def _files():
    train, held = split_modules(stdlib_files())
    return train[:3], held[:1]


def test_train_target_resumes_exactly(tmp_path):
    kw = dict(steps=4, batch_size=2, seq_len=32, warmup=1, save_every=2, progress=False, log=None, files=_files())
    train_target(tmp_path / "straight", **kw)

    def stop_at_two(message):  # the log line comes right after the step-2 checkpoint is on disk
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_target(tmp_path / "cut", **(kw | {"log": stop_at_two}))
    train_target(tmp_path / "cut", **(kw | {"resume": True}))
    a, b = load_file(tmp_path / "straight/model.safetensors"), load_file(tmp_path / "cut/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A plain Hugging Face directory, offline.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "straight")
    tok = AutoTokenizer.from_pretrained(tmp_path / "straight")
    assert model.config.num_hidden_layers == 16 and model.config.vocab_size == len(tok)


def test_cli_refuses_to_clobber(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("1")
    assert main(["toy", "train-target", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_the_shipped_toy_loads_offline_and_drafts_losslessly():
    from eagle3_ref.decoding import autoregressive_generate, speculative_generate
    from eagle3_ref.toy import TOY_DIR, held_out_prompts, load_toy

    size = sum(p.stat().st_size for p in TOY_DIR.rglob("*") if p.is_file())
    assert size < 30 * 2**20, f"the shipped toy is {size / 2**20:.1f} MiB"
    target, tokenizer, head = load_toy()
    assert AutoModelForCausalLM.from_pretrained(TOY_DIR / "target").config.num_hidden_layers == 16
    prompts = held_out_prompts(tokenizer, count=2, length=48)
    assert len(prompts) == 2
    taus = []
    for prompt in prompts:
        plain = autoregressive_generate(target, prompt[None], max_new_tokens=40)
        spec = speculative_generate(target, head, prompt[None], max_new_tokens=40)
        assert torch.equal(spec.sequences, plain.sequences)
        taus.append(spec.tau)
    # A trained head drafts well: several tokens per target forward on code it never saw.
    assert sum(taus) / len(taus) > 2.0, taus


def test_the_sps_draft_lm_recipe_shares_the_target_tokenizer(tmp_path, capsys):
    from eagle3_ref.toy import TOY_DIR

    train_target(tmp_path / "sps", num_layers=2, tokenizer_dir=TOY_DIR / "target", steps=2, batch_size=2, seq_len=32,
                 warmup=1, progress=False, log=None, files=_files())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sps")
    mine, theirs = AutoTokenizer.from_pretrained(tmp_path / "sps"), AutoTokenizer.from_pretrained(TOY_DIR / "target")
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(theirs)
    snippet = "    def close(self):\n        self._closed = True\n"
    assert mine(snippet)["input_ids"] == theirs(snippet)["input_ids"]
    with pytest.raises(ValueError, match="num_layers"):
        train_target(tmp_path / "a", num_layers=0)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        train_target(tmp_path / "b", tokenizer_dir=tmp_path)
    # The shipped SpS draft LM is this recipe's output: 2 layers, the target's vocabulary.
    from eagle3_ref.toy import load_toy_sps

    shipped = load_toy_sps()
    assert shipped.config.num_hidden_layers == 2 and shipped.config.vocab_size == len(theirs)
    assert main(["toy", "train-target", "--out", str(tmp_path / "c"), "--layers", "0", "--quiet"]) == 2
    assert "--layers must be an int >= 1, got 0" in capsys.readouterr().err
