"""Every public entry point refuses a malformed argument by name, before any work.

For each public function and each of its arguments, a hypothesis property replaces that
argument with a malformed value (the wrong type, a bool where an int is due, a float token
id, an id outside the vocabulary, a wrong rank, NaN, a negative count...) and asserts a
``ValueError`` or ``TypeError`` whose message names the argument, never another exception
("index out of range in self", "ZeroDivisionError", a raw ``SafetensorError``).
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import LlamaConfig

from eagle3_ref import (Eagle3Config, TreeConfig, autoregressive_generate, build_draft_tree, load_draft_head,
                        save_draft_head, speculative_generate, ttt_forward)
from eagle3_ref.testing.strategies import build_draft_head, build_target
from eagle3_ref.toy import TOY_DIR

pytestmark = pytest.mark.generate

VOCAB = 30
TC = LlamaConfig(vocab_size=VOCAB, hidden_size=8, intermediate_size=16, num_hidden_layers=7, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=64)
TARGET = build_target(TC, 0)
HEAD = build_draft_head(Eagle3Config.for_target(TC), 0, TARGET.get_input_embeddings().weight)
IDS = torch.tensor([[1, 2, 3]])
FEATURES = torch.randn(1, 2, 24, dtype=torch.float64)

NOT_INTS = [True, 2.5, "3", None, torch.tensor(3)]
BAD_IDS = [torch.tensor([[1.0, 2.0]]), torch.tensor([1, 2]), torch.tensor([[1, VOCAB]]), torch.tensor([[-1, 2]]),
           [[1, 2]], torch.tensor([[True, False]])]


def _spec(**kw):
    args = dict(input_ids=IDS, max_new_tokens=4) | kw
    return speculative_generate(TARGET, HEAD, args.pop("input_ids"), **args)


def _plain(**kw):
    args = dict(input_ids=IDS, max_new_tokens=4) | kw
    return autoregressive_generate(TARGET, args.pop("input_ids"), **args)


def _tree(**kw):
    args = dict(features=FEATURES, input_ids=IDS, config=TreeConfig(num_nodes=4, max_depth=2, top_k=2)) | kw
    return build_draft_tree(HEAD, **args)


def _spec_target(target):
    return speculative_generate(target, HEAD, IDS, max_new_tokens=4)


def _load(**kw):
    args = dict(path=str(TOY_DIR / "head")) | kw
    return load_draft_head(**args)


def _ttt(**kw):
    args = dict(features=FEATURES, input_ids=IDS[:, :2], steps=2) | kw
    return ttt_forward(HEAD, **args)


# (entry point, argument, malformed values)
CASES = [
    (_spec, "input_ids", BAD_IDS),
    (_spec, "max_new_tokens", NOT_INTS + [-1, 100]),  # 100: past the 64 positions
    (_spec, "temperature", ["hot", -0.5, math.nan, math.inf]),
    (_spec, "top_p", [0.0, 1.5, "all", math.nan]),
    (_spec, "top_k", NOT_INTS[:-2] + [-1]),
    (_spec, "eos_token_id", ["x", VOCAB, -2, 1.5]),
    (_spec, "tree", [dict(num_nodes=4), None, (4, 2, 2)]),
    (_spec, "generator", [123, "seed", [torch.Generator(), 7]]),
    (_spec_target, "target", ["path/to/model", None]),
    (_plain, "input_ids", BAD_IDS),
    (_plain, "max_new_tokens", NOT_INTS + [-3]),
    (_plain, "eos_token_id", ["x", VOCAB]),
    (_tree, "input_ids", BAD_IDS),
    (_tree, "features", [FEATURES.float(), FEATURES[0], FEATURES.long(), FEATURES.tolist(), FEATURES * math.nan,
                         FEATURES.index_fill(1, torch.tensor([1]), math.inf)]),
    (_tree, "config", [None, dict(num_nodes=4)]),
    (_ttt, "steps", [2.5, 0, True, "2"]),
    (_ttt, "input_ids", BAD_IDS),
    (_ttt, "features", [FEATURES.float(), FEATURES[:, :1], FEATURES[0]]),
    (_load, "path", [None, 3]),
    (_load, "device", ["tpu", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda"])),
    (TreeConfig, "num_nodes", NOT_INTS[:-1] + [1]),
    (TreeConfig, "top_k", NOT_INTS[:-1] + [0]),
    (Eagle3Config, "hidden_size", NOT_INTS[:-1] + [0]),
]


@pytest.mark.parametrize("entry, name, values", CASES,
                         ids=[f"{getattr(e, '__name__', e).lstrip('_')}-{n}" for e, n, _ in CASES])
@given(data=st.data())
def test_a_malformed_argument_is_refused_by_name(entry, name, values, data):
    value = data.draw(st.sampled_from(values), label=f"{getattr(entry, '__name__', entry)}({name}=...)")
    kwargs = {name: value}
    if entry is Eagle3Config:
        kwargs = dict(intermediate_size=16, num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB,
                      hidden_size=8) | kwargs
    with pytest.raises((ValueError, TypeError)) as err:
        entry(**kwargs)
    assert name in str(err.value), f"{type(err.value).__name__}: {err.value}"


def test_a_damaged_head_directory_is_named(tmp_path):
    save_draft_head(HEAD, tmp_path / "head")
    weights = tmp_path / "head" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    with pytest.raises(ValueError, match="the weights cannot be read, the file is damaged or incomplete"):
        load_draft_head(tmp_path / "head")
    (tmp_path / "head" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_draft_head(tmp_path / "head")
    with pytest.raises(ValueError, match="is a file"):
        load_draft_head(weights)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        load_draft_head(tmp_path / "head", dtype="dir")


def test_an_output_directory_is_checked_before_any_work(tmp_path):
    # Unwritable output paths ended in raw OSError tracebacks in train, vectors export, assignment
    # make, ablate and bench (bench after its whole measurement). check_output_dir refuses them
    # first, and creates nothing where it succeeds.
    from eagle3_ref._checks import check_output_dir

    deep = tmp_path / "a" / "b"
    assert check_output_dir("--out", deep) == deep and not (tmp_path / "a").exists() and not list(tmp_path.iterdir())
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"^--out .*/f is a file, not a directory"):
        check_output_dir("--out", tmp_path / "f")
    with pytest.raises(ValueError, match=r"^--out .*/f/g: .*/f is a file, not a directory"):
        check_output_dir("--out", tmp_path / "f" / "g")
    import tempfile

    try:  # sysfs refuses a new file even to root; a machine where it takes one cannot show this
        tempfile.TemporaryFile(dir="/sys/kernel").close()
    except OSError:
        with pytest.raises(ValueError, match=r"^dir /sys/kernel/out/x cannot be written: Permission denied in /sys/kernel$"):
            check_output_dir("dir", "/sys/kernel/out/x")
