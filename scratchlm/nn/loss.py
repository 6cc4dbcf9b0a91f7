"""Next-token losses.

``cross_entropy`` is the plain form: logits (B, T, V), targets (B, T), mean over the targets
that are not ``ignore_index`` (-100 marks padding and prompt tokens).

``linear_token_logprobs`` gives each target's log-probability and each row's entropy the same
way (GRPO's recomputed policy), with the softmax of a chunk of rows made in cache.

``linear_cross_entropy`` computes the same value from the final hidden states and the output
head's weight without ever holding the (B*T, V) logits: rows are processed in chunks, and each
chunk's gradient (softmax - one-hot) is turned into the hidden-state and weight gradients at
once. For GPT-2's 50k vocabulary the logits and their gradient are the largest tensors of a
training step; skipping them saves memory everywhere and about 15% of a small model's CPU step.

    loss = mean_i [ logsumexp_v(h_i . w_v) - h_i . w_{y_i} ]
    dloss/dlogits_i = (softmax(logits_i) - onehot(y_i)) / n_valid
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                  ignore_index: int = -100) -> torch.Tensor:
    """(B, T, V) logits and (B, T) targets -> scalar mean loss over non-ignored targets."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                           ignore_index=ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    """Rows go in blocks of ``block`` (the gradient matmuls run on whole blocks, which keeps
    them efficient) and each block's logits are made ``inner`` rows at a time (so the softmax
    passes stay in cache)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, block, inner, ignore_index):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, vocab = hidden.shape[0], weight.shape[0]
        valid = targets != ignore_index
        n_valid = valid.sum().clamp(min=1)
        scale = (valid / n_valid).to(torch.float32)  # each valid row's share of the mean
        t_safe = targets.clamp(min=0)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        w = weight.to(hidden.dtype)
        buf = hidden.new_empty(min(block, n), vocab, dtype=torch.float32)  # one block's logits
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for b0 in range(0, n, block):
            b1 = min(b0 + block, n)
            for s in range(b0, b1, inner):
                e = min(s + inner, b1)
                logits = buf[s - b0 : e - b0]  # (c, V)
                if hidden.dtype == torch.float32:
                    torch.mm(hidden[s:e], w.T, out=logits)
                else:  # low-precision matmul, float32 softmax
                    logits.copy_(hidden[s:e] @ w.T)
                target_logit = logits.gather(1, t_safe[s:e, None]).squeeze(1)
                m = logits.amax(dim=-1, keepdim=True)
                probs = logits.sub_(m).exp_()  # unnormalised, in place
                sums = probs.sum(dim=-1, keepdim=True)
                lse = (m + sums.log()).squeeze(1)
                total += ((lse - target_logit) * valid[s:e]).sum()
                # dloss/dlogits = (softmax - one-hot) * scale, built in place
                probs.mul_(scale[s:e, None] / sums)
                probs.scatter_add_(1, t_safe[s:e, None], -scale[s:e, None])
            g = buf[: b1 - b0].to(hidden.dtype)
            if need_h:
                torch.mm(g, w, out=grad_h[b0:b1])
            if need_w:
                grad_w.addmm_(g.T, hidden[b0:b1])
        ctx.save_for_backward(grad_h, grad_w)
        return (total / n_valid).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if bool(grad_out != 1):  # the usual loss.backward() passes 1: skip two full passes
            grad_h = grad_h * grad_out if grad_h is not None else None
            grad_w = grad_w * grad_out if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         block: int = 512, inner: int = 128,
                         ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` without materialising
    all the logits at once. hidden (B, T, C) or (N, C); weight (V, C); targets (B, T) or (N,)."""
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight,
                                     targets.reshape(-1), block, inner, ignore_index)


def fusable_head(head) -> bool:
    """Whether ``head_weight`` gives a matrix for ``head`` (without building it): a LoRA head
    over a 4-bit base or with dropout does not."""
    if type(head) is torch.nn.Linear and head.bias is None:
        return True
    has = getattr(head, "has_effective_weight", None)
    return has is not None and has()


def head_weight(head) -> torch.Tensor | None:
    """The (V, C) matrix a bias-free output head multiplies by: a plain Linear's weight, or a
    LoRA head's ``W + scale * B @ A`` (built each step: V*C*r multiply-adds, far fewer than the
    logits' B*T*V*C); None for heads a fused loss cannot stand in for."""
    if type(head) is torch.nn.Linear and head.bias is None:
        return head.weight
    effective = getattr(head, "effective_weight", None)
    return effective() if effective is not None else None


class _LinearDistillation(torch.autograd.Function):
    """The distillation loss of ``finetune/distill.py`` from hidden states, a chunk of rows at a
    time: neither the student's nor the teacher's (N, V) logits exist whole. Per row,

        dloss/dlogits = alpha * (softmax(s) - onehot(y)) + (1 - alpha) * T * (softmax(s/T) - softmax(t/T))

    divided by the number of valid rows."""

    @staticmethod
    def forward(ctx, hidden, weight, t_hidden, t_weight, targets, alpha, temperature, chunk,
                ignore_index):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != ignore_index
        n_valid = valid.sum().clamp(min=1)
        scale = (valid / n_valid).to(torch.float32)[:, None]
        t_safe = targets.clamp(min=0)[:, None]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        w, tw = weight.to(hidden.dtype), t_weight.to(t_hidden.dtype)
        ce = torch.zeros((), dtype=torch.float32, device=hidden.device)
        kl = torch.zeros((), dtype=torch.float32, device=hidden.device)
        T = temperature
        for s in range(0, hidden.shape[0], chunk):
            e = min(s + chunk, hidden.shape[0])
            logits = (hidden[s:e] @ w.T).float()  # (c, V)
            log_p = torch.log_softmax(logits, dim=-1)
            ce -= (log_p.gather(1, t_safe[s:e]) * scale[s:e]).sum()
            log_ps = torch.log_softmax(logits / T, dim=-1) if T != 1 else log_p
            log_pt = torch.log_softmax((t_hidden[s:e] @ tw.T).float() / T, dim=-1)
            p_t = log_pt.exp()
            kl += ((p_t * (log_pt - log_ps)).sum(-1, keepdim=True) * scale[s:e]).sum()
            # the gradient, built in place in the probability buffers
            soft = log_ps.exp_() if T != 1 else None  # softmax(s / T)
            g = log_p.exp_()  # softmax(s)
            kd = (soft if soft is not None else g.clone()).sub_(p_t)
            g.mul_(alpha).scatter_add_(1, t_safe[s:e], torch.full_like(scale[s:e], -alpha))
            g.add_(kd, alpha=(1 - alpha) * T).mul_(scale[s:e])
            g = g.to(hidden.dtype)
            if need_h:
                torch.mm(g, w, out=grad_h[s:e])
            if need_w:
                grad_w.addmm_(g.T, hidden[s:e])
        ctx.save_for_backward(grad_h, grad_w)
        return (alpha * ce + (1 - alpha) * T * T * kl).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        if bool(grad_out != 1):
            grad_h = grad_h * grad_out if grad_h is not None else None
            grad_w = grad_w * grad_out if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None, None, None, None


def linear_distillation_loss(hidden: torch.Tensor, weight: torch.Tensor,
                             t_hidden: torch.Tensor, t_weight: torch.Tensor,
                             targets: torch.Tensor, alpha: float = 0.5,
                             temperature: float = 2.0, chunk: int = 256,
                             ignore_index: int = -100) -> torch.Tensor:
    """``alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)`` of the logits
    ``hidden @ weight.T`` (student) and ``t_hidden @ t_weight.T`` (teacher, no gradient),
    mean over the targets that are not ``ignore_index``, without materialising the logits."""
    c = hidden.shape[-1]
    return _LinearDistillation.apply(hidden.reshape(-1, c), weight,
                                     t_hidden.reshape(-1, t_hidden.shape[-1]).detach(),
                                     t_weight.detach(), targets.reshape(-1), alpha,
                                     temperature, chunk, ignore_index)


class _LinearTokenLogprobs(torch.autograd.Function):
    """Per row: the log-probability of its target and the entropy, under
    ``softmax(h . W^T / T)``, ``chunk`` rows at a time so that each softmax pass stays in
    cache. The probabilities are kept for backward (one (N, V) buffer, as the plain form's
    log-softmax), where, for an upstream gradient g per row,

        dlogp/dlogits = (onehot(y) - softmax) / T

    The entropy is a statistic: it has no gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk):
        n, vocab = hidden.shape[0], weight.shape[0]
        w = weight.to(hidden.dtype)
        probs = torch.empty(n, vocab, dtype=torch.float32, device=hidden.device)
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        if hidden.dtype == torch.float32:  # one GEMM: 64-row pieces ran at half its speed
            torch.mm(hidden, w.T, out=probs)
        exp = torch.empty(min(chunk, n), vocab, dtype=torch.float32, device=hidden.device)
        inv_t = 1.0 / temperature
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            z, p = probs[s:e], exp[: e - s]
            if hidden.dtype != torch.float32:  # low-precision matmul, float32 softmax
                z.copy_(hidden[s:e] @ w.T)
            if inv_t != 1.0:
                z.mul_(inv_t)
            z.sub_(z.amax(dim=-1, keepdim=True))  # z - max: the target's and the entropy's terms
            target = z.gather(1, targets[s:e, None]).squeeze(1)
            # below e^-80 (1e-35) exp gives subnormal numbers, about 8x slower to make and to
            # multiply, and nothing a sum of probabilities can see
            z.clamp_(min=-80.0)
            torch.exp(z, out=p)
            sums = p.sum(dim=-1, keepdim=True)
            log_sums = sums.log().squeeze(1)
            logp[s:e] = target - log_sums
            p_dot_z = torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)  # no (rows, V) product
            entropy[s:e] = log_sums - p_dot_z / sums.squeeze(1)
            torch.div(p, sums, out=z)  # the softmax, kept for backward
        ctx.save_for_backward(hidden, w, targets, probs)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return logp.to(hidden.dtype), entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, w, targets, probs = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = grad_logp.float()[:, None] / ctx.temperature
        grad = probs.mul_(-g)  # in place: the buffer is not needed again
        grad.scatter_add_(1, targets[:, None], g)
        grad = grad.to(hidden.dtype)
        grad_h = grad @ w if need_h else None
        grad_w = (grad.T @ hidden).to(w.dtype) if need_w else None
        return grad_h, grad_w, None, None, None


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          temperature: float = 1.0, chunk: int = 64,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities of ``targets``, entropies), shaped like ``targets``, under
    ``log_softmax(hidden @ weight.T / temperature)``: what RL losses read (GRPO), in one pass
    per chunk of rows instead of separate passes for the division, the log-softmax, the
    gather and the entropy over the whole (N, V) logits."""
    c = hidden.shape[-1]
    logp, ent = _LinearTokenLogprobs.apply(hidden.reshape(-1, c), weight, targets.reshape(-1),
                                           temperature, chunk)
    return logp.view(targets.shape), ent.view(targets.shape)
