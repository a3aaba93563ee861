"""Training-time test (EAGLE-3, "training-time test"): train the head on its own outputs.

At test time the head drafts several tokens in a row, each step fed the head's *own*
previous output instead of a target feature. A head trained only on target features never
sees such inputs. Training-time test simulates the drafting during training, K steps at
once, for every slot in parallel:

* slot ``i`` pairs the target feature at position ``i`` with token ``x_{i+1}``;
* step 0 feeds ``fc(features)``; step ``k`` feeds the head's own pre-norm output of step
  ``k-1`` at the same slot, with the ground-truth token ``x_{i+k+1}``, at position ``i+k``,
  and predicts ``x_{i+k+2}``;
* attention at step ``k``, slot ``i``: the step-0 keys of slots ``j <= i`` (causal,
  padding respected), plus the keys of steps ``1..k`` *at slot i only*: exactly the keys a
  chain drafted from the prefix ending at slot ``i`` would have in its KV cache.

That last point is the whole trick, and ``eagle3_ref/testing/conformance/test_ttt.py`` proves it: the parallel
K-step logits equal drafting each chain step by step with the cached head.

Two implementations of the attention, proven equal: ``dense`` builds the (K*T)^2 mask over
the keys of all steps (:func:`ttt_attention_mask`, the one a student draws); ``diagonal``
never does: it scores the step-0 keys causally (T x T) and each later step's key only
against its own slot (T x k), and softmaxes the two together.

(An earlier official version also hid the nearest ``k`` prefix keys at step ``k``; that
was a bug, fixed upstream. The tests show such a mask breaks the equality.)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.llama.modeling_llama import repeat_kv

from ._checks import check_float_tensor, check_int, check_token_ids
from .draft_head import Eagle3DraftHead, attention_naive
from .vocab import draft_to_target

__all__ = ["TTTOutput", "TTTLoss", "ttt_attention_mask", "ttt_forward", "ttt_loss", "ttt_loss_naive",
           "shift_left", "STEP_WEIGHT"]

STEP_WEIGHT = 0.8  # loss weight of step k is 0.8 ** k


class TTTOutput(NamedTuple):
    logits: list[Tensor]  # K tensors (B, T, V_d): step k, slot i predicts x_{i+k+2}
    hidden: list[Tensor]  # K tensors (B, T, H): pre-norm outputs (step k's are step k+1's inputs)


class TTTLoss(NamedTuple):
    loss: Tensor  # scalar: sum_k 0.8**k * loss_k
    step_losses: list[Tensor]  # K scalars
    step_accuracy: list[float]  # K top-1 accuracies in target ids over the counted positions
    step_counts: list[int]  # K numbers of counted positions


def shift_left(x: Tensor, k: int, fill=0) -> Tensor:
    """``out[:, i] = x[:, i + k]`` (``fill`` beyond the end). EAGLE's ``padding(x, left=False)``, k times."""
    if k == 0:
        return x
    pad = torch.full_like(x[:, :k], fill)
    return torch.cat([x[:, k:], pad], dim=1)[:, : x.shape[1]]


def ttt_attention_mask(seq_len: int, steps: int, attention_mask: Tensor | None = None) -> Tensor:
    """The dense mask, bool ``(B, 1, K*T, K*T)``; query/key index ``k*T + i`` = step ``k``, slot ``i``.

    ``attention_mask (B, T)``: 1 = real token. No slot sees a padding key but its own (a
    padding slot's outputs are never counted; an all-masked row would be NaN).
    """
    T, K = seq_len, steps
    device = attention_mask.device if attention_mask is not None else None  # built where the mask lives
    slot = torch.arange(T, device=device)
    causal = slot[None, :] <= slot[:, None]  # (T, T) [i, j]: j <= i
    diagonal = torch.eye(T, dtype=torch.bool, device=device)
    mask = torch.zeros(K * T, K * T, dtype=torch.bool, device=device)
    for k in range(K):
        rows = slice(k * T, (k + 1) * T)
        mask[rows, :T] = causal  # step-0 keys at slots j <= i
        for s in range(1, k + 1):
            mask[rows, s * T:(s + 1) * T] = diagonal  # steps 1..k, own slot only
    mask = mask[None, None]
    if attention_mask is not None:
        real = attention_mask.bool()  # (B, T)
        keys_real = torch.cat([real] + [torch.ones_like(real)] * (K - 1), dim=1)  # later steps: own slot
        own_step0 = torch.zeros(K * T, K * T, dtype=torch.bool, device=device)
        for k in range(K):
            own_step0[k * T:(k + 1) * T, :T] = diagonal
        mask = mask & (keys_real[:, None, None, :] | own_step0[None, None])
    return mask


def _diagonal_attention(q: Tensor, k0: Tensor, v0: Tensor, later_k: list[Tensor], later_v: list[Tensor],
                        causal: Tensor) -> Tensor:
    """q ``(B, nh, T, d)``; k0/v0 and each later step's k/v ``(B, nkv, T, d)``; causal (B, 1, T, T).
    Memory: the T x T step-0 scores and T x k diagonal scores, nothing of size (K*T)^2."""
    rep = q.shape[1] // k0.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores0 = (q @ repeat_kv(k0, rep).transpose(-1, -2)) * scale  # (B, nh, T, T)
    scores0 = scores0.masked_fill(~causal, float("-inf"))
    if not later_k:
        return torch.softmax(scores0, dim=-1) @ repeat_kv(v0, rep)
    ks = torch.stack([repeat_kv(k, rep) for k in later_k], dim=-2)  # (B, nh, T, k, d)
    diag = (q[..., None, :] * ks).sum(-1) * scale  # (B, nh, T, k): q_i . k_i of each later step
    probs = torch.softmax(torch.cat([scores0, diag], dim=-1), dim=-1)
    vs = torch.stack([repeat_kv(v, rep) for v in later_v], dim=-2)  # (B, nh, T, k, d)
    T = q.shape[2]
    return probs[..., :T] @ repeat_kv(v0, rep) + (probs[..., T:, None] * vs).sum(-2)


def ttt_forward(head: Eagle3DraftHead, features: Tensor, input_ids: Tensor, steps: int = 7,
                attention_mask: Tensor | None = None, implementation: str = "diagonal",
                dense_mask: Tensor | None = None) -> TTTOutput:
    """The parallel K-step forward.

    ``features (B, T, k*H_t)``: target features at positions 0..T-1; ``input_ids (B, T)``:
    the tokens ``x_0..x_{T-1}`` (slot ``i`` of step ``k`` reads ``x_{i+k+1}``; beyond the
    end, 0: those predictions have no target and are never counted). ``dense_mask``
    overrides the dense mask (for tests that break it on purpose).
    """
    if implementation not in ("diagonal", "dense"):
        raise ValueError(f"implementation must be 'diagonal' or 'dense', got {implementation!r}")
    check_int("steps", steps, 1)
    check_token_ids("input_ids", input_ids, head.config.vocab_size)
    check_float_tensor("features", features, 3, head.fc.weight.dtype)
    B, T = input_ids.shape
    if steps > T:  # and K*T queries each: a step count typed wrong would allocate without end
        raise ValueError(f"steps ({steps}) must be at most the sequence length ({T}): slot i of step k reads "
                         f"x_(i+k+1), so a step past the sequence has no token to read")
    if tuple(features.shape[:2]) != (B, T):
        raise ValueError(f"features cover {tuple(features.shape[:2])} (B, T), input_ids {(B, T)}: they must match")
    if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {(B, T)}: they must match")
    layer, attn = head.midlayer, head.midlayer.self_attn
    positions = torch.arange(T, device=input_ids.device)[None].expand(B, T)
    if implementation == "dense" or dense_mask is not None:
        full = dense_mask if dense_mask is not None else ttt_attention_mask(T, steps, attention_mask)
        full = full.to(input_ids.device)
    else:
        real = torch.ones(B, T, dtype=torch.bool, device=input_ids.device) if attention_mask is None \
            else attention_mask.bool()
        eye = torch.eye(T, dtype=torch.bool, device=input_ids.device)
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril() & (real[:, None, :] | eye)
        causal = causal[:, None]  # (B, 1, T, T): real keys j <= i, plus each slot's own
    # --- assignment ttt: step 0 starts from head.fuse(features). For k in range(steps): feed the tokens shifted
    #   left by k + 1 (shift_left) at positions i + k; the queries of step k attend to the step-0 keys causally
    #   and to slot i's own keys of steps 1..k (use _diagonal_attention with the causal mask above, or
    #   attention_naive with rows of the dense mask `full`); layer.finish gives the pre-norm hidden, which is
    #   the next step's input; head.compute_logits gives the step's logits.
    hidden = head.fuse(features)  # step 0: target features through fc
    keys, values, logits, hiddens = [], [], [], []
    for k in range(steps):
        x = layer.attention_input(head.embed(shift_left(input_ids, k + 1)), hidden)  # (B, T, 2H)
        q, key, value = attn.qkv(x, positions + k)  # step k runs at position i + k
        keys.append(key), values.append(value)
        if implementation == "dense" or dense_mask is not None:
            rows = full[:, :, k * T:(k + 1) * T, :(k + 1) * T]
            out = attention_naive(q, torch.cat(keys, dim=2), torch.cat(values, dim=2), rows)
        else:
            out = _diagonal_attention(q, keys[0], values[0], keys[1:], values[1:], causal)
        hidden = layer.finish(hidden, attn.output(out))  # pre-norm output: next step's input
        hiddens.append(hidden)
        logits.append(head.compute_logits(hidden))
    return TTTOutput(logits, hiddens)
    # --- end assignment


def _step_targets(target_logits: Tensor, loss_mask: Tensor, k: int, t2d: Tensor):
    """For step k: the target logits each slot is trained toward (``target_logits[i+k+1]``)
    and which slots count: ``loss_mask[i+k]`` (EAGLE's alignment), a target inside the
    sequence, and a target argmax inside the draft vocabulary."""
    T = target_logits.shape[1]
    target = shift_left(target_logits, k + 1)  # (B, T, V)
    inside = (torch.arange(T, device=target.device) + k + 1 < T)[None].expand(target.shape[0], T)
    counted = inside & shift_left(loss_mask, k).bool() & t2d.to(target.device)[target.argmax(-1)]
    return target, counted


def ttt_loss(logits: list[Tensor], target_logits: Tensor, loss_mask: Tensor, t2d: Tensor, d2t: Tensor,
             step_weight: float = STEP_WEIGHT) -> TTTLoss:
    """Soft cross entropy to the target distribution restricted to the draft vocabulary and
    renormalised, per step; normalised by ``B*T`` like the official ``.mean()``; steps
    weighted ``step_weight ** k``. ``target_logits (B, T, V)``: the target's logits at
    positions 0..T-1; ``loss_mask (B, T)``."""
    t2d = t2d.to(target_logits.device)
    total, losses, accuracy, counts = 0.0, [], [], []
    for k, step_logits in enumerate(logits):
        target, counted = _step_targets(target_logits, loss_mask, k, t2d)
        wide = torch.promote_types(step_logits.dtype, torch.float32)  # fp32 math for bf16, exact in fp64
        p = torch.softmax(target[..., t2d].to(wide), dim=-1)  # (B, T, V_d), draft ids ascend with target ids
        log_q = torch.log_softmax(step_logits.to(wide), dim=-1)
        loss_k = -torch.where(counted[..., None], p * log_q, 0.0).sum() / counted.numel()
        losses.append(loss_k)
        total = total + step_weight**k * loss_k
        n = int(counted.sum())
        hits = draft_to_target(step_logits.argmax(-1), d2t) == target.argmax(-1)
        accuracy.append(float((hits & counted).sum()) / n if n else float("nan"))
        counts.append(n)
    return TTTLoss(total, losses, accuracy, counts)


def ttt_loss_naive(logits: list[Tensor], target_logits: Tensor, loss_mask: Tensor, t2d: Tensor,
                   step_weight: float = STEP_WEIGHT) -> Tensor:
    """The same loss, one position and one step at a time, with plain Python control flow."""
    B, T, _ = target_logits.shape
    kept = t2d.nonzero().flatten().tolist()
    total = target_logits.new_zeros(())
    for k, step_logits in enumerate(logits):
        loss_k = target_logits.new_zeros(())
        for b in range(B):
            for i in range(T):
                t = i + k + 1  # the target position this slot predicts from
                if t >= T or not loss_mask[b, i + k] or not t2d[int(target_logits[b, t].argmax())]:
                    continue
                p = F.softmax(target_logits[b, t, kept], dim=-1)
                loss_k = loss_k - (p * F.log_softmax(step_logits[b, i], dim=-1)).sum()
        total = total + step_weight**k * loss_k / (B * T)
    return total
