"""InfoNCE and PatchNCE: the contrastive core of CUT (paper Sec. 3.1-3.2, Eq. 2-5).

Shapes used throughout:
    N    queries (rows of the loss)          C    feature channels
    B    images in the minibatch             P    sampled patch locations per image
    M    negatives per query                 L    NCE layers (encoder taps)
Queries come from the OUTPUT image G(x), keys from the INPUT x; query i and key i sit at the same
spatial location, which makes them the positive pair (book/reference.md section 1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cutlib import followups
from cutlib.device import fp16_autocast
from cutlib.losses import full_precision

DIAGONAL_FILL = -10.0  # the reference masks the duplicated positive with -10 before dividing by tau


def _check(name: str, x: Tensor, dims: Sequence[int], expected: str) -> None:
    """Raise a readable error unless ``x`` is a floating tensor with one of ``dims`` dimensions."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() not in dims:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of shape {expected}, got dtype {x.dtype}")


def _check_dtype(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    """Raise a readable error unless ``x`` has the dtype of ``ref`` (mixed dtypes fail deep in matmul)."""
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {x.dtype}: convert one with .to()")


def l2_normalize(x: Tensor, eps: float = 1e-7) -> Tensor:
    """x / (||x|| + eps) along the last dimension, as the reference normalises features."""
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def info_nce(query: Tensor, positive: Tensor, negatives: Tensor, tau: float = 0.07) -> Tensor:
    """The (M+1)-way cross-entropy of Eq. 2, one value per query row.

    query (N, C), positive (N, C), negatives (N, M, C) per query or (M, C) shared by all queries.
    loss_i = -log( exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_j exp(q.k-_j / tau)) ), shape (N,).
    """
    _check("query", query, (2,), "(N, C)")
    _check("positive", positive, (2,), "(N, C)")
    _check("negatives", negatives, (2, 3), "(N, M, C) or (M, C)")
    if positive.shape != query.shape:
        raise ValueError(f"positive must have the query's shape {tuple(query.shape)}, got {tuple(positive.shape)}")
    n, c = query.shape
    if negatives.shape[-1] != c or (negatives.dim() == 3 and negatives.shape[0] != n):
        raise ValueError(f"negatives must have shape ({n}, M, {c}) or (M, {c}), got {tuple(negatives.shape)}")
    _check_dtype("positive", positive, "query", query)
    _check_dtype("negatives", negatives, "query", query)

    l_pos = (query * positive).sum(dim=-1, keepdim=True)  # (N, 1)
    if negatives.dim() == 2:
        l_neg = query @ negatives.t()  # (N, M)
    else:
        l_neg = torch.einsum("nc,nmc->nm", query, negatives)  # (N, M)
    logits = torch.cat([l_pos, l_neg], dim=1) / tau  # (N, 1 + M); the positive is class 0
    target = torch.zeros(n, dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target, reduction="none")


def patch_nce(
    feat_q: Tensor,
    feat_k: Tensor,
    tau: float = 0.07,
    negatives: str | None = "image",
    batch_size: int = 1,
    external: Tensor | None = None,
    detach_keys: bool = True,
) -> Tensor:
    """PatchNCE for one layer (Eq. 4): every other sampled patch is a negative. Per-query loss (B*P,).

    feat_q, feat_k: (B*P, C), batch-major (rows b*P .. b*P+P-1 belong to image b), normalised.
    negatives="image": the other P-1 patches of the same image (CUT); "batch": the other B*P-1
    patches of the whole minibatch (SinCUT); None: no internal negatives (needs ``external``).
    external: (K, C) keys from a momentum queue, shared negatives for every query (section 6).
    Keys are detached: no gradient flows through the key branch.
    """
    _check_patch_nce(feat_q, feat_k, negatives, batch_size, external)
    if detach_keys:  # False only when the caller has already cut the gradient below the key heads
        feat_k = feat_k.detach()
    n, c = feat_q.shape
    groups = batch_size if negatives == "image" else 1
    q = feat_q.view(groups, n // groups, c)  # (G, P', C); P' = P per image, or B*P for the batch
    k = feat_k.view(groups, n // groups, c)

    l_pos = (q * k).sum(dim=-1, keepdim=True)  # (G, P', 1)
    parts = [l_pos]
    if negatives is not None:
        l_neg = q @ k.transpose(1, 2)  # (G, P', P'): query i against every key j of its group
        eye = torch.eye(l_neg.shape[-1], dtype=torch.bool, device=l_neg.device)
        parts.append(l_neg.masked_fill(eye, DIAGONAL_FILL))  # j == i is the positive: mask it
    if external is not None:
        parts.append(q @ external.detach().t())  # (G, P', K)
    logits = torch.cat(parts, dim=-1).flatten(0, 1) / tau  # (B*P, 1 + negatives)
    target = torch.zeros(n, dtype=torch.long, device=feat_q.device)
    return F.cross_entropy(logits, target, reduction="none")


def sample_patches(
    features: Sequence[Tensor],
    num_patches: int,
    patch_ids: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Pick the same ``num_patches`` random locations in every image of the batch, per layer.

    features: list of (B, C, H, W) maps. Returns (list of (B*P, C), list of (P,) location indices
    into H*W). Sampling is without replacement; P = H*W (shuffled) when the map is smaller.
    Pass the returned ids back to sample the query features at the key locations.
    """
    _check_sampling(features, num_patches, patch_ids)
    samples, ids_out = [], []
    for layer, feat in enumerate(features):
        b, c, h, w = feat.shape
        flat = feat.flatten(2)  # (B, C, H*W)
        if patch_ids is None:
            ids = torch.randperm(h * w, generator=generator)[: min(num_patches, h * w)]
        else:
            ids = patch_ids[layer]
        ids = ids.to(feat.device)
        # gather first, then transpose: (B, C, P) -> (B*P, C), batch-major. Transposing the whole map
        # first would hand channels-last gradients back to the encoder, and torch 2.14's CPU instance
        # norm computes a wrong backward for those when B == 1.
        samples.append(flat[:, :, ids].transpose(1, 2).flatten(0, 1))
        ids_out.append(ids)
    return samples, ids_out


class ProjectionHeads(nn.Module):
    """One Linear-ReLU-Linear head per NCE layer, then L2 normalisation (section 2).

    Built eagerly from the channel counts of the taps (the reference builds them on the first
    forward). Initialised like the reference: xavier-normal, gain 0.02, zero bias.
    """

    def __init__(self, channels: Sequence[int], dim: int = 256, init_gain: float = 0.02):
        super().__init__()
        self.channels, self.dim = list(channels), dim
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, dim), nn.ReLU(), nn.Linear(dim, dim)) for c in self.channels
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight, gain=init_gain)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """features: list of (N, C_l). Returns list of (N, dim), unit length."""
        if len(features) != len(self.mlps):
            raise ValueError(f"expected {len(self.mlps)} feature tensors (one per head), got {len(features)}")
        out = []
        for layer, (mlp, feat) in enumerate(zip(self.mlps, features)):
            _check(f"features[{layer}]", feat, (2,), f"(N, {self.channels[layer]})")
            if feat.shape[1] != self.channels[layer]:
                raise ValueError(f"features[{layer}] must have shape (N, {self.channels[layer]}), got {tuple(feat.shape)}")
            if fp16_autocast(feat.device.type):
                # the heads' outputs are small (init gain 0.02), so the gradient of their L2 normalisation is
                # large, beyond fp16's range even before loss scaling: under fp16 the heads run in fp32
                with torch.autocast(feat.device.type, enabled=False):
                    z = mlp(full_precision(feat))
            else:
                z = mlp(feat)
            out.append(l2_normalize(full_precision(z)))  # fp32 from here on: logits and softmax of PatchNCE
        return out


class MomentumQueue(nn.Module):
    """External negatives, MoCo style (section 6): momentum copies of the encoder and heads, and a
    fixed-size FIFO dictionary of past keys per layer.

    ``encoder`` must offer ``encode(x, taps) -> list of (B, C, H, W)`` (cutlib.networks.ResnetGenerator
    does). Per iteration: read() the negatives, compute the loss, update() the copies, then
    enqueue(key_features(x, taps, num_patches)).
    """

    def __init__(self, encoder: nn.Module, heads: ProjectionHeads, size: int = 16384, momentum: float = 0.999):
        super().__init__()
        if size < 1 or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"need size >= 1 and 0 <= momentum <= 1, got size={size}, momentum={momentum}")
        self.size, self.momentum = size, momentum
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.heads = copy.deepcopy(heads).requires_grad_(False)
        layers, dim = len(heads.channels), heads.dim
        self.register_buffer("keys", torch.zeros(layers, size, dim))  # (L, K, dim) ring buffers
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # filled slots

    @torch.no_grad()
    def update(self, encoder: nn.Module, heads: ProjectionHeads) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q for the encoder and head copies."""
        for copy_, live in ((self.encoder, encoder), (self.heads, heads)):
            for p_k, p_q in zip(copy_.parameters(), live.parameters()):
                p_k.mul_(self.momentum).add_(p_q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def key_features(self, x: Tensor, taps: Sequence[str], num_patches: int, generator=None) -> list[Tensor]:
        """Keys of image batch x from the momentum encoder: list of (B*P, dim), one per layer."""
        feats = self.encoder.encode(x, taps)
        samples, _ = sample_patches(feats, num_patches, generator=generator)
        return self.heads(samples)

    @torch.no_grad()
    def enqueue(self, keys: Sequence[Tensor]) -> None:
        """Write a list of (N, dim) keys (one per layer) into the FIFO; the oldest are overwritten."""
        if len(keys) != self.keys.shape[0]:
            raise ValueError(f"expected keys for {self.keys.shape[0]} layers, got {len(keys)}")
        n = keys[0].shape[0]
        if any(k.shape != (n, self.keys.shape[2]) for k in keys):
            raise ValueError(f"every layer's keys must have shape (N, {self.keys.shape[2]}), got {[tuple(k.shape) for k in keys]}")
        keys = [k[-self.size :] for k in keys]  # more keys than slots: only the newest survive
        n = keys[0].shape[0]
        slots = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size
        for layer, k in enumerate(keys):
            self.keys[layer, slots] = k.to(self.keys)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def read(self) -> list[Tensor]:
        """The stored keys per layer, oldest first: list of (count, dim)."""
        count = int(self.count)
        start = int(self.ptr) - count
        order = (torch.arange(count, device=self.keys.device) + start) % self.size
        return [self.keys[layer, order] for layer in range(self.keys.shape[0])]


class NCEResult(NamedTuple):
    loss: Tensor  # scalar: lambda * mean over layers of the mean over queries (+ lambda_src * SRC)
    per_layer: list[Tensor]  # scalar per layer (before lambda)
    patch_ids: list[Tensor]  # the sampled locations, one (P,) tensor per layer ((B, P) where QS-Attn selects)
    relation: Tensor | None = None  # the SRC term, mean over layers (before lambda_src), when it is on


@dataclass(frozen=True)
class NCEHooks:
    """Where the follow-ups change PatchNCE (cutlib.followups). At the defaults it is CUT: passing
    NCEHooks() or no hooks gives the same loss."""

    weighting: str = "uniform"  # negatives: "uniform" (CUT), "hard" (hDCE of Hneg-SRC), "ot" (MoNCE)
    hdce_gamma: float = 50.0  # temperature of the hard-negative weights (hDCE)
    ot_eps: float = 0.1  # entropic regularisation of the Sinkhorn plan (MoNCE)
    ot_cost: str = "hard"  # MoNCE: "hard" (similar negatives weigh more) or "easy"
    ot_neg_weight: float = 1.0  # MoNCE's Q, the weight of the negative term
    ot_iters: int = 50  # Sinkhorn iterations
    queries: str = "random"  # which queries: "random" (CUT) or "entropy" (QS-Attn's attention selection)
    qs_from_layer: int = 3  # QS-Attn: the layers from this index on select and route their queries
    lambda_src: float = 0.0  # weight of the semantic-relation consistency term SRC (Hneg-SRC)

    def __post_init__(self):
        for name, value, choices in (("weighting", self.weighting, ("uniform", "hard", "ot")),
                                     ("queries", self.queries, ("random", "entropy")), ("ot_cost", self.ot_cost, ("hard", "easy"))):
            if value not in choices:
                raise ValueError(f"NCEHooks.{name} must be one of {list(choices)}, got {value!r}")

    def layer_loss(self, q: Tensor, k: Tensor, tau: float, groups: int) -> Tensor:
        """Per-query loss of one layer with these hooks; k is detached already."""
        if self.weighting == "hard":
            return followups.hdce(q, k, followups.hard_negative_weights(k, self.hdce_gamma, groups), tau, groups)
        plan = followups.ot_negative_weights(q, k, self.ot_eps, self.ot_cost, self.ot_iters, groups)
        return followups.monce(q, k, plan, tau, self.ot_neg_weight, groups)


def multilayer_patch_nce(
    heads: ProjectionHeads,
    feats_q: Sequence[Tensor],
    feats_k: Sequence[Tensor],
    num_patches: int = 256,
    tau: float = 0.07,
    lambda_nce: float = 1.0,
    negatives: str = "internal",
    batch_negatives: bool = False,
    external: Sequence[Tensor] | None = None,
    patch_ids: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
    query_heads: ProjectionHeads | None = None,
    hooks: NCEHooks | None = None,
) -> NCEResult:
    """Multilayer PatchNCE (Eq. 5) with the reference's reduction: per layer the mean over the
    B*P queries, then the AVERAGE over layers, times lambda_nce.

    feats_q: encoder taps of the output G(x); feats_k: taps of the input x; lists of (B, C, H, W).
    negatives: "internal" (other patches, the default), "external" (momentum queue only) or "both";
    external: one (K, dim) tensor per layer, from MomentumQueue.read(), when it is used.
    Locations are sampled on the keys and reused for the queries. query_heads: separate heads for
    the queries (the "no weight sharing" ablation); by default the same heads serve both. With
    separate heads the key features are detached before the key heads, which then learn through the keys.
    hooks: the follow-ups (NCEHooks: negative weighting, query selection, SRC); None is CUT.
    """
    _check_multilayer(feats_q, feats_k, negatives, external)
    if hooks is not None and (negatives != "internal" or query_heads is not None):
        raise ValueError("hooks need negatives='internal' and shared heads (query_heads=None)")
    batch_size = feats_k[0].shape[0]
    k_samples, ids = sample_patches(feats_k, num_patches, patch_ids, generator)
    q_samples, _ = sample_patches(feats_q, num_patches, ids)
    if hooks is not None and hooks.queries == "entropy":  # QS-Attn: the deeper layers keep low-entropy queries
        for layer in range(hooks.qs_from_layer, len(feats_k)):
            attn, ids[layer] = followups.entropy_selection(feats_k[layer], num_patches)
            k_samples[layer], q_samples[layer] = followups.route(feats_k[layer], attn), followups.route(feats_q[layer], attn)
    if query_heads is None:
        k_proj, q_proj = heads(k_samples), heads(q_samples)
    else:  # separate heads: the key heads can only learn through the keys, so detach below them instead
        k_proj, q_proj = heads([k.detach() for k in k_samples]), query_heads(q_samples)
    internal = None if negatives == "external" else ("batch" if batch_negatives else "image")
    per_layer, relation = [], []
    groups = 1 if batch_negatives else batch_size
    for layer, (q, k) in enumerate(zip(q_proj, k_proj)):
        if hooks is not None and hooks.lambda_src > 0:
            relation.append(followups.src_loss(q, k, groups))
        if hooks is not None and hooks.weighting != "uniform":  # hDCE or MoNCE in place of patch_nce
            per_layer.append(hooks.layer_loss(q, k.detach(), tau, groups).mean())
            continue
        ext = None
        if negatives != "internal" and external[layer].shape[0] > 0:
            ext = external[layer]
        if internal is None and ext is None:  # empty queue on the very first step: nothing to contrast
            ext = torch.zeros(0, q.shape[1], device=q.device, dtype=q.dtype)
        per_layer.append(patch_nce(q, k, tau, internal, batch_size, ext, detach_keys=query_heads is None).mean())
    loss = lambda_nce * torch.stack(per_layer).mean()
    if relation:  # Hneg-SRC: + lambda_src * mean over layers of SRC
        src = torch.stack(relation).mean()
        return NCEResult(loss + hooks.lambda_src * src, per_layer, ids, src)
    return NCEResult(loss, per_layer, ids)


# ----------------------------------------------------------------------------------------------
# input checks of the public functions above (kept apart so that each function shows its maths)


def _check_patch_nce(feat_q: Tensor, feat_k: Tensor, negatives, batch_size: int, external: Tensor | None) -> None:
    _check("feat_q", feat_q, (2,), "(B*P, C)")
    _check("feat_k", feat_k, (2,), "(B*P, C)")
    if feat_q.shape != feat_k.shape:
        raise ValueError(f"feat_q and feat_k must have the same shape (B*P, C), got {tuple(feat_q.shape)} and {tuple(feat_k.shape)}")
    _check_dtype("feat_k", feat_k, "feat_q", feat_q)
    if negatives not in ("image", "batch", None):
        raise ValueError(f"negatives must be 'image', 'batch' or None, got {negatives!r}")
    if negatives is None and external is None:
        raise ValueError("negatives=None leaves no negatives: pass external keys (K, C) from a MomentumQueue")
    if batch_size < 1 or feat_q.shape[0] % batch_size:
        raise ValueError(f"feat_q has {feat_q.shape[0]} rows, not a multiple of batch_size={batch_size} (expected (B*P, C))")
    if external is not None:
        c = feat_q.shape[1]
        _check("external", external, (2,), f"(K, {c})")
        if external.shape[1] != c:
            raise ValueError(f"external must have shape (K, {c}), got {tuple(external.shape)}")
        _check_dtype("external", external, "feat_q", feat_q)


def _check_sampling(features: Sequence[Tensor], num_patches: int, patch_ids: Sequence[Tensor] | None) -> None:
    if patch_ids is not None and len(patch_ids) != len(features):
        raise ValueError(f"patch_ids has {len(patch_ids)} entries but features has {len(features)} layers")
    if num_patches < 1:
        raise ValueError(f"num_patches must be at least 1, got {num_patches}")
    for layer, feat in enumerate(features):
        _check(f"features[{layer}]", feat, (4,), "(B, C, H, W)")
        if patch_ids is None:
            continue
        ids, (h, w) = patch_ids[layer], feat.shape[2:]
        if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"patch_ids[{layer}] must be a (P,) integer tensor of locations, as sample_patches returns")
        if ids.numel() and (int(ids.max()) >= h * w or int(ids.min()) < 0):
            raise ValueError(f"patch_ids[{layer}] points outside the {h}x{w} map of features[{layer}] (valid: 0..{h * w - 1})")


def _check_multilayer(feats_q: Sequence[Tensor], feats_k: Sequence[Tensor], negatives: str,
                      external: Sequence[Tensor] | None) -> None:
    if negatives not in ("internal", "external", "both"):
        raise ValueError(f"negatives must be 'internal', 'external' or 'both', got {negatives!r}")
    if len(feats_q) != len(feats_k):
        raise ValueError(f"feats_q has {len(feats_q)} layers but feats_k has {len(feats_k)}")
    if negatives != "internal" and external is None:
        raise ValueError(f"negatives={negatives!r} needs the external keys: pass external=queue.read()")
    if not feats_k:
        raise ValueError("feats_k must hold at least one (B, C, H, W) map")
    if external is not None and len(external) != len(feats_k):
        raise ValueError(f"external must hold one (K, dim) tensor per layer: {len(feats_k)}, got {len(external)}")
