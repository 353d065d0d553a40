"""The training loss without the whole batch's vocabulary-wide logits in memory at once.

mlx-lm's default_loss computes `model(inputs)`: logits of batch × length × vocabulary,
then their cross-entropy and, in the backward pass, a gradient of the same size. With a
large vocabulary those arrays are most of a step's memory (a 65,536-token vocabulary at
batch 4 × 512: 537 MB per copy in float32, several copies alive at the peak).

Here the model's hidden states go through its output head one chunk of positions at a
time. For each chunk the logits, their log-sum-exp, the cross-entropy and the gradient
with respect to the logits ((softmax - one-hot) × mask) are computed together, and the
gradient is turned at once into the chunk's share of the gradients of the hidden states
(d @ W) and of the head's weight (dᵀ @ h, only when the head trains); `mx.depends` makes
each chunk wait for the previous one's gradient, so one chunk's logits are alive at a time.
The gradients reach autodiff through a surrogate, `sum(h · ∂h) + sum(W · ∂W)`, whose value
is subtracted back out (so the loss's value is the cross-entropy's, and its gradients
are the ones computed): the same three matrix products as autodiff's, no recomputation.
Evaluation (the model in eval mode) computes only the chunked loss.

The same numbers as mlx-lm's default_loss up to summation order (in float32: the
cross-entropy is always computed in float32, the logits in the model's dtype as there).
A model whose output is not `head(model.model(x))` (a soft-capped or scaled output, a
quantized or biased head) keeps mlx-lm's loss: `make_loss` checks on a few tokens that the
two agree before using the chunked one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from training.trainer.loop import LossFn, default_loss

# Bytes of float32 logits per chunk: small enough that the few chunk-sized arrays alive at
# once are a small part of a step's memory (bench/chunked_loss.py)...
CHUNK_BYTES = 32 * 1024 * 1024
# ...and positions enough that each pass over the head's weight does real work (a chunk
# reads the whole vocabulary × hidden matrix two or three times).
MIN_CHUNK_POSITIONS = 64


def chunk_tokens(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Positions per chunk: `chunk_bytes` of float32 logits, at least MIN_CHUNK_POSITIONS."""
    return max(MIN_CHUNK_POSITIONS, chunk_bytes // (4 * max(1, vocab_size)))


def output_head(model: nn.Module) -> tuple[Callable[[mx.array], mx.array], Any] | None:
    """(the model without its head, the head's weight holder) when the model's output is
    `head(model.model(inputs))` with a plain float weight: an untied `lm_head` Linear
    without bias, or the input embedding used as the output layer. None otherwise."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, nn.Module):
        return None
    head = getattr(model, "lm_head", None)
    if head is None:
        args = getattr(model, "args", None)
        if not getattr(args, "tie_word_embeddings", False):
            return None
        head = getattr(inner, "embed_tokens", None)
        if type(head) is not nn.Embedding:
            return None
    elif type(head) is not nn.Linear or "bias" in head:
        return None
    weight = head.get("weight")
    if not isinstance(weight, mx.array) or not mx.issubdtype(weight.dtype, mx.floating):
        return None
    return inner, head


def head_is_trained(model: nn.Module, head: nn.Module) -> bool:
    trainable: Any = tree_flatten(model.trainable_parameters())
    ids = {id(v) for _, v in trainable}
    return id(head.weight) in ids


def _mask(lengths: mx.array, length: int) -> mx.array:
    steps = mx.arange(1, length + 1)
    return mx.logical_and(steps >= lengths[:, 0:1], steps <= lengths[:, 1:])


def _chunked_eval(
    hidden: mx.array, weight: mx.array, targets: mx.array, mask: mx.array, chunk: int
) -> mx.array:
    total = mx.array(0.0, dtype=mx.float32)
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        hc = hidden[start:end]
        if start:  # one chunk's logits at a time
            hc = mx.depends(hc, total)
        logits = (hc @ weight.T).astype(mx.float32)
        lse = mx.logsumexp(logits, axis=-1)
        picked = mx.take_along_axis(logits, targets[start:end, None], axis=-1)[:, 0]
        total = total + ((lse - picked) * mask[start:end]).sum()
    return total


def _chunked_train(
    hidden: mx.array,
    weight: mx.array,
    targets: mx.array,
    mask: mx.array,
    chunk: int,
    train_head: bool,
) -> mx.array:
    """The summed cross-entropy, with its gradients computed chunk by chunk (see above)."""
    h, w = mx.stop_gradient(hidden), mx.stop_gradient(weight)
    total = mx.array(0.0, dtype=mx.float32)
    grad_h: list[mx.array] = []
    grad_w: mx.array | None = None
    previous: list[mx.array] = []
    for start in range(0, h.shape[0], chunk):
        end = start + chunk
        hc = h[start:end]
        if previous:  # one chunk's logits at a time: wait for the previous gradient
            hc = mx.depends(hc, previous)
        logits = (hc @ w.T).astype(mx.float32)
        # One exp over the chunk serves the log-sum-exp and the softmax (exp is most of a
        # CPU step's cost; mlx-lm's loss and its backward take it twice).
        top = mx.stop_gradient(logits.max(axis=-1, keepdims=True))
        exps = mx.exp(logits - top)
        sums = exps.sum(axis=-1, keepdims=True)
        lse = top + mx.log(sums)
        tc, mc = targets[start:end, None], mask[start:end, None]
        picked = mx.take_along_axis(logits, tc, axis=-1)
        total = total + ((lse - picked) * mc).sum()
        probs = exps * mx.reciprocal(sums)
        # softmax minus the one-hot target, without a chunk x vocabulary one-hot array
        probs = mx.put_along_axis(probs, tc, mx.take_along_axis(probs, tc, axis=-1) - 1, axis=-1)
        d = (probs * mc).astype(w.dtype)
        gh = d @ w
        grad_h.append(gh)
        previous = [gh, total]  # the loss too: else its chunks' logits wait for the end
        if train_head:
            gw = d.T @ hc
            grad_w = gw if grad_w is None else grad_w + gw
            previous.append(grad_w)
    surrogate = (hidden * mx.concatenate(grad_h, axis=0)).astype(mx.float32).sum()
    if grad_w is not None:
        surrogate = surrogate + (weight * grad_w).astype(mx.float32).sum()
    return mx.stop_gradient(total) + surrogate - mx.stop_gradient(surrogate)


def chunked_loss(
    inner: Callable[[mx.array], mx.array], head: nn.Module, train_head: bool, chunk: int
) -> LossFn:
    """mlx-lm's masked next-token loss (mean over counted targets, count), chunked."""

    def loss(model: nn.Module, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        hidden = inner(inputs)
        mask = _mask(lengths, targets.shape[1])
        ntoks = mask.sum()
        flat_h = hidden.reshape(-1, hidden.shape[-1])
        flat_t, flat_m = targets.reshape(-1), mask.reshape(-1).astype(mx.float32)
        if model.training:
            total = _chunked_train(flat_h, head.weight, flat_t, flat_m, chunk, train_head)
        else:
            total = _chunked_eval(flat_h, head.weight, flat_t, flat_m, chunk)
        return total / ntoks, ntoks

    return loss


def make_loss(model: nn.Module, chunk: int | None = None) -> tuple[LossFn, str]:
    """The chunked loss for this model (`chunk` positions at a time; default from the
    vocabulary, chunk_tokens), or mlx-lm's when the model's output is not a plain head over
    its hidden states (checked on a few tokens); and a line saying which."""
    found = output_head(model)
    if found is None:
        return default_loss, "loss: mlx-lm's (this model's output head is not a plain matrix)"
    inner, head = found
    chunk = chunk or chunk_tokens(int(head.weight.shape[0]))
    loss = chunked_loss(inner, head, head_is_trained(model, head), chunk)
    if not _agrees(model, loss):
        return default_loss, "loss: mlx-lm's (the chunked loss disagreed with this model's output)"
    return loss, f"loss: chunked cross-entropy, {chunk} positions per chunk"


def _agrees(model: nn.Module, loss: LossFn) -> bool:
    """The chunked loss equals mlx-lm's on a few tokens, in eval and train mode alike."""
    vocab = int(model.args.vocab_size) if hasattr(model, "args") else 16
    tokens = (mx.arange(2 * 17) * 7919 % max(2, min(vocab, 1000))).reshape(2, 17)
    lengths = mx.array([[1, 16], [3, 12]])
    was_training = model.training
    try:
        model.eval()
        ref, _ = default_loss(model, tokens, lengths)
        ours, _ = loss(model, tokens, lengths)
        mx.eval(ref, ours)
    finally:
        model.train(was_training)
    a, b = float(ref.item()), float(ours.item())  # type: ignore[arg-type]
    return abs(a - b) <= 1e-4 * max(1.0, abs(a))
