"""Follow-ups of CUT's PatchNCE, each as a small function (book/reference.md, last section).

    hard_negative_weights, hdce   Hneg-SRC (Jung et al. CVPR 2022): hard negatives, positive decoupled
    src_loss                      Hneg-SRC: semantic-relation consistency between input and output
    ot_negative_weights, monce    MoNCE (Zhan et al. CVPR 2022): negatives reweighted by optimal transport
    entropy_selection, route      QS-Attn (Hu et al. CVPR 2022): low-entropy queries, attention-routed features

cutlib.nce.multilayer_patch_nce calls them through its ``hooks`` (cutlib.nce.NCEHooks). Shapes as in
cutlib.nce: queries q and keys k are (N, C) rows, N = G * P' (G groups of P' patches: one group per
image, or a single group for negatives from the whole batch), unit length; l_ij = q_i . k_j.
Every function takes the keys as given: the caller detaches them (no gradient through the key branch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DIAGONAL_FILL = -10.0  # as cutlib.nce: the positive j == i among the "negatives" is masked with -10


def _groups(x: Tensor, groups: int) -> Tensor:
    """(G * P', C) -> (G, P', C), with a clear error when N is not a multiple of G."""
    if x.dim() != 2 or x.shape[0] % groups:
        raise ValueError(f"features must have shape (G*P', C) with G={groups}, got {tuple(x.shape)}")
    return x.view(groups, x.shape[0] // groups, x.shape[1])


def _eye(p: int, device) -> Tensor:
    return torch.eye(p, dtype=torch.bool, device=device)


# ------------------------------------------------------------------ Hneg-SRC: hDCE and SRC


def hard_negative_weights(feat_k: Tensor, gamma: float, groups: int = 1) -> Tensor:
    """Hard-negative weights of hDCE (Hneg-SRC, the weights of hDCE), from the relations of the input's patches.

    w_ij = softmax_j(k_i . k_j / gamma) / max_j softmax_j(k_i . k_j / gamma),  j != i (k_i . k_i := -10),
    so each row's largest weight is 1: patches similar to patch i in the INPUT are its hard negatives.
    Returns (G, P', P'), no gradient. gamma: the paper's curriculum runs it from 50 down to 10.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    k = _groups(feat_k, groups).detach()
    rel = (k @ k.transpose(1, 2)).masked_fill(_eye(k.shape[1], k.device), DIAGONAL_FILL)
    w = torch.softmax(rel / gamma, dim=-1)
    return w / w.amax(dim=-1, keepdim=True)


def hdce(feat_q: Tensor, feat_k: Tensor, weights: Tensor | None, tau: float = 0.07, groups: int = 1) -> Tensor:
    """Decoupled contrastive loss with hard-negative weighting, hDCE (Hneg-SRC). Per query (N,).

    loss_i = -log( exp(l_ii / tau) / sum_{j != i} exp(w_ij l_ij / tau) )
           = logsumexp_{j != i} ((w_ij l_ij - l_ii) / tau):
    the positive is left out of the denominator (DCE), each negative similarity is scaled by w_ij.
    weights: (G, P', P') from hard_negative_weights, or None for plain DCE (w = 1).
    """
    q, k = _groups(feat_q, groups), _groups(feat_k, groups)
    l_pos = (q * k).sum(-1, keepdim=True)  # (G, P', 1)
    l_neg = q @ k.transpose(1, 2)  # (G, P', P')
    if weights is not None:
        l_neg = l_neg * weights
    logits = ((l_neg - l_pos) / tau).masked_fill(_eye(q.shape[1], q.device), float("-inf"))
    return torch.logsumexp(logits, dim=-1).flatten()


def _jsd_rows(p: Tensor, r: Tensor) -> Tensor:
    """Jensen-Shannon divergence of each row pair of two row-stochastic matrices, (..., n)."""
    m = 0.5 * (p + r)
    return 0.5 * ((p * (p.log() - m.log())).sum(-1) + (r * (r.log() - m.log())).sum(-1))


def src_loss(feat_q: Tensor, feat_k: Tensor, groups: int = 1) -> Tensor:
    """Semantic relation consistency, SRC (Hneg-SRC): a scalar.

    The relation of patch i to all patches of its image, in the input and in the output:
        p_i = softmax_j(q_i . q_j),  r_i = softmax_j(k_i . k_j)   (no temperature, j == i included)
    L_SRC = sum_i JSD(p_i || r_i), summed over every patch of every image (the code's reduction='sum').
    Only the output's relations p carry gradient.
    """
    q, k = _groups(feat_q, groups), _groups(feat_k, groups).detach()
    p = torch.softmax(q @ q.transpose(1, 2), dim=-1)
    r = torch.softmax(k @ k.transpose(1, 2), dim=-1)
    return _jsd_rows(p, r).sum()


def hdce_gamma(epoch: int, total_epochs: int, gamma: float, gamma_min: float) -> float:
    """The curriculum of Hneg-SRC's code: gamma falls linearly from ``gamma`` to ``gamma_min`` over training.

    gamma(e) = gamma + (gamma_min - gamma) * e / total_epochs, e the (1-based) epoch.
    """
    return gamma + (gamma_min - gamma) * epoch / max(total_epochs, 1)


# ------------------------------------------------------------------ MoNCE: optimal-transport weights


def sinkhorn(kernel: Tensor, iters: int = 50) -> Tensor:
    """Sinkhorn-Knopp scaling of a positive kernel K (G, n, m) to a plan u_i K_ij v_j (G, n, m).

    Alternately u = a / (K v), v = 1 / (K^T u), a = m / n: every column of the plan sums to 1
    (exactly, after the last v update) and every row to a (in the limit).
    """
    g, n, m = kernel.shape
    u, v = kernel.new_ones(g, n), kernel.new_ones(g, m)
    a = m / n
    for _ in range(iters):
        u = a / (kernel @ v.unsqueeze(-1)).squeeze(-1)
        v = 1.0 / (u.unsqueeze(1) @ kernel).squeeze(1)
    return u.unsqueeze(-1) * kernel * v.unsqueeze(1)


def ot_negative_weights(feat_q: Tensor, feat_k: Tensor, eps: float = 0.1, cost: str = "hard",
                        iters: int = 50, groups: int = 1) -> Tensor:
    """The transport plan of MoNCE (the weights of its loss) between queries and keys, (G, P', P').

    K_ij = exp(s_ij / eps) with s_ij = l_ij ("hard": similar negatives weigh more) or 1 - l_ij ("easy"),
    s_ii := -10 (the positive takes no mass); plan = sinkhorn(K). Gradient flows through the queries
    (as in the authors' code; the keys are the caller's, detached).
    """
    if cost not in ("hard", "easy"):
        raise ValueError(f"cost must be 'hard' or 'easy', got {cost!r}")
    if eps <= 0 or iters < 1:
        raise ValueError(f"need eps > 0 and iters >= 1, got eps={eps}, iters={iters}")
    q, k = _groups(feat_q, groups), _groups(feat_k, groups)
    sim = q @ k.transpose(1, 2)
    score = sim if cost == "hard" else 1 - sim
    score = score.masked_fill(_eye(q.shape[1], q.device), DIAGONAL_FILL)
    return sinkhorn(torch.exp(score / eps), iters)


def monce(feat_q: Tensor, feat_k: Tensor, plan: Tensor, tau: float = 0.07, neg_weight: float = 1.0,
          groups: int = 1) -> Tensor:
    """Modulated NCE, MoNCE. Per query (N,).

    loss_i = -log( exp(l_ii/tau) / (exp(l_ii/tau) + sum_{j != i} f_ij exp(l_ij/tau)) ),
    f_ij = Q (P' - 1) plan_ij + 1e-8: the plan's unit row mass spread over the P' - 1 negatives, so that
    uniform weights give back PatchNCE (times Q, the paper's weight of the negative term).
    """
    q, k = _groups(feat_q, groups), _groups(feat_k, groups)
    p = q.shape[1]
    f = plan * (p - 1) * neg_weight + 1e-8
    l_pos = (q * k).sum(-1, keepdim=True)
    l_neg = (q @ k.transpose(1, 2) + tau * torch.log(f)).masked_fill(_eye(p, q.device), DIAGONAL_FILL)
    logits = torch.cat([l_pos, l_neg], dim=-1).flatten(0, 1) / tau
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction="none")


# ------------------------------------------------------------------ QS-Attn: query selection


def entropy_selection(feat_k: Tensor, num_patches: int) -> tuple[Tensor, Tensor]:
    """QS-Attn's global query selection on a key map (B, C, H, W).

    A = softmax_j(f_i . f_j) over the H*W locations of each image (raw features, no temperature);
    H_i = -sum_j A_ij log A_ij; the num_patches rows of lowest entropy are kept.
    Returns (the kept rows of A, (B, P, H*W); their locations, (B, P)), with gradient through A.
    """
    if feat_k.dim() != 4:
        raise ValueError(f"feat_k must have shape (B, C, H, W), got {tuple(feat_k.shape)}")
    f = feat_k.flatten(2).transpose(1, 2)  # (B, HW, C)
    attn = torch.softmax(f @ f.transpose(1, 2), dim=-1)  # (B, HW, HW)
    entropy = torch.special.entr(attn).sum(-1)  # (B, HW); entr(0) = 0
    ids = entropy.argsort(dim=-1, stable=True)[:, :num_patches]
    rows = torch.gather(attn, 1, ids.unsqueeze(-1).expand(-1, -1, attn.shape[-1]))
    return rows, ids


def route(feat: Tensor, attn_rows: Tensor) -> Tensor:
    """Features routed by the selected attention rows: (A_sel F) for a map (B, C, H, W) -> (B*P, C).

    The same rows (computed on the input) route the input's and the output's features (QS-Attn).
    """
    f = feat.flatten(2).transpose(1, 2)  # (B, HW, C)
    if attn_rows.shape[0] != f.shape[0] or attn_rows.shape[2] != f.shape[1]:
        raise ValueError(f"attn_rows must have shape ({f.shape[0]}, P, {f.shape[1]}), got {tuple(attn_rows.shape)}")
    return (attn_rows.to(f.dtype) @ f).flatten(0, 1)
