# SPDX-License-Identifier: GPL-3.0-or-later
"""T-LoRA: ΔW(μ) = s·(P·diag(λ⊙μ)·Q − P0·diag(λ0⊙μ)·Q0) (reference §1.5, §4.2-4.3, `lycoris/modules/tlora.py`).

Files hold `q_layer.weight` (r, in[,1..]), `p_layer.weight` (out, r[,1..]), `lambda_layer` (1, r), `alpha`
(s = alpha/r); 4.1.3 does not save the frozen base, so P0, Q0, λ0 are the top-r SVD of the base weight
(principal, zero-padded, λ0 padded with 1e-6), rounded to the file dtype like SimpleTuner's cast buffers. Stored
`base_q.weight`/`base_p.weight`/`base_lambda` (official T-LoRA Ortho format) are used when present.

The rank mask μ is `adapter.mask`, a (R,) float tensor (first r_active ranks 1) written in place by the schedule
and read at every call; it is shared by every `to()` copy. None means all ranks. A mask longer than this module's
rank is truncated, a shorter one padded with ones (4.1.3 `_get_mask`). A (B, R) mask gives per-sample masks in
bypass (broadcast as (B, 1, ..., r), which 4.1.3 gets wrong, §4.6).

Bypass is a rank-2r LoRA: down [Q; Q0], per-rank diagonal s·[λ⊙μ; −λ0⊙μ] (scale folded in), up [P | P0] (stored
with the ranks of both paths interleaved, so the active ranks are a leading slice: one GEMM pair on CPU), built
once per (device, dtype, base token) and cached on the instance. The SVD base is shared by every `to()` copy; a
host may set it with `prepare_base(weight or svd, token=hash of the weight)` so one parsed file loaded on two
models gets each model's base. `tlora_svd_base` is exact: fp32 `torch.linalg.svd` for small matrices, else the
float64 eigendecomposition of the smaller Gram matrix (several times faster on CPU, more accurate than fp32 SVD).
Convs with a kernel larger than 1 are rejected (4.1.3 is inconsistent there, §4.3).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ShapeMismatchError
from ..layer import LayerSpec
from .additive import AdditiveAdapter, rows_view
from .base import conv_fn, conv_groups, geometry, layer_weight, lora_scale, read_alpha

_BASE_KEYS = ("base_q.weight", "base_p.weight", "base_lambda")


#: Below this smaller dimension the direct fp32 SVD is cheap; above it the float64 Gram route is used.
GRAM_MIN_DIM = 128


def tlora_svd_base(weight: torch.Tensor, r: int,
                   method: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-r SVD of `weight` (out, in[, 1...]): P0 (out, r), Q0 (r, in), λ0 (r,), fp32, on weight's device.

    Ranks beyond min(out, in) are zero vectors with λ0 = 1e-6, as LyCORIS pads them. `method`:
    - "svd": `torch.linalg.svd` of the fp32 weight, what LyCORIS does at load;
    - "gram": exact SVD through the float64 eigendecomposition of the smaller Gram matrix (W Wᵀ or WᵀW), then
      the other side's vectors as Wᵀu/‖Wᵀu‖ (or Wv/‖Wv‖), σ = that norm. Several times faster for large or
      wide/tall matrices on CPU and more accurate than fp32 SVD; singular triplets agree with "svd" up to the sign
      of each (u, v) pair, which cancels in P0·diag(λ0⊙μ)·Q0 (rounding to the file dtype is sign-symmetric too);
    - "auto": "gram" when min(out, in) >= GRAM_MIN_DIM, else "svd".
    Only the top r triplets are kept; a repeated singular value straddling a mask cut is inherently ambiguous
    (any SVD routine may pick another basis of that subspace).
    """
    w = weight.detach().reshape(weight.shape[0], -1)
    out_dim, in_dim = w.shape
    k = min(out_dim, in_dim)
    if method == "auto":
        method = "gram" if k >= GRAM_MIN_DIM else "svd"
    if method == "svd":
        u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
        q0, p0, lam0 = vh[:r], u[:, :r], s[:r]
    elif method == "gram":
        q0, p0, lam0 = _gram_top_svd(w, min(r, k))
    else:
        raise ValueError(f"method must be 'auto', 'svd' or 'gram', not {method!r}")
    pad = r - q0.shape[0]
    if pad > 0:
        q0 = F.pad(q0, (0, 0, 0, pad))
        p0 = F.pad(p0, (0, pad))
        lam0 = F.pad(lam0, (0, pad), value=1e-6)
    return p0.contiguous(), q0.contiguous(), lam0.contiguous()


def _gram_top_svd(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Vᵀ_r (r, in), U_r (out, r), Σ_r (r,)) in fp32 from the float64 eigendecomposition of the smaller Gram."""
    dt = torch.float64 if w.device.type != "mps" else torch.float32
    wd = w.to(dt)
    wide = wd.shape[0] <= wd.shape[1]
    gram = wd @ wd.T if wide else wd.T @ wd
    _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    top = vecs[:, -r:].flip(-1) if r > 0 else vecs[:, :0]  # (small, r), descending
    other = wd.T @ top if wide else wd @ top  # columns σ_i·v_i (wide) or σ_i·u_i (tall)
    sig = other.norm(dim=0)
    unit = other / torch.where(sig > 0, sig, torch.ones_like(sig))
    # σ from the norm keeps σ_i·u_i·v_iᵀ = u_i·(Wᵀu_i)ᵀ exact even for tiny σ; sort again in case eigh's order
    # and the norms disagree by rounding.
    sig, order = sig.sort(descending=True)
    top, unit = top[:, order], unit[:, order]
    u, v = (top, unit) if wide else (unit, top)
    return v.T.float(), u.float(), sig.float()


class TLoRAAdapter(AdditiveAdapter):
    """T-LoRA module (see module docstring); `mask` is read at every call."""

    algo = "tlora"
    REQUIRED = ("q_layer.weight", "p_layer.weight", "lambda_layer")
    OPTIONAL = ("alpha",) + _BASE_KEYS
    #: On CPU, `add_delta_` reads the mask on the host (no device sync there) to skip the inactive ranks. Off, every
    #: device takes the sync-free path (full rank-2r product, mask multiplied in): tests switch it off to check that
    #: path on CPU.
    host_rank_slicing = True

    @classmethod
    def key_problems(cls, keys):
        """(missing, unknown); the three base_* tensors come together or not at all."""
        missing, unknown = super().key_problems(keys)
        present = [k for k in _BASE_KEYS if k in keys]
        if present and len(present) < len(_BASE_KEYS):
            missing.extend(k for k in _BASE_KEYS if k not in keys)
        return missing, unknown

    def __init__(self, name, tensors, source=""):
        super().__init__(name, tensors, source)
        q, p, lam = (self._need(k) for k in self.REQUIRED)
        r = q.shape[0]
        if p.dim() < 2 or p.shape[1] != r or lam.numel() != r or any(d != 1 for d in tuple(q.shape[2:]) +
                                                                      tuple(p.shape[2:])):
            raise self.format_error("q_layer.weight", f"shapes q {tuple(q.shape)}, p {tuple(p.shape)}, lambda "
                                    f"{tuple(lam.shape)} do not form a rank-{r} T-LoRA with 1x1 factors")
        missing, _ = self.key_problems(set(self.tensors))
        if missing:
            raise self.format_error(missing[0], "missing (base_q.weight, base_p.weight and base_lambda go together)")
        self.rank = r
        self.alpha = read_alpha(self.tensors.get("alpha"))
        self.scale = lora_scale(self.alpha, r)
        self._mask_box = [None]  # shared with to() copies

    # ------------------------------------------------------------------ mask
    @property
    def mask(self) -> torch.Tensor | None:
        """The (R,) (or (B, R)) rank mask read at every call; None = all ranks."""
        return self._mask_box[0]

    @mask.setter
    def mask(self, value: torch.Tensor | None) -> None:
        """Set the mask tensor (kept by reference, so in-place schedule writes are seen by every copy)."""
        self._mask_box[0] = value

    def _mask_vec(self, like: torch.Tensor) -> torch.Tensor | None:
        """μ truncated / one-padded to this module's rank, on like's device/dtype: (r,) or (B, r)."""
        mask = self.mask
        if mask is None:
            return None
        mask = mask.to(device=like.device, dtype=like.dtype)
        r, big = self.rank, mask.shape[-1]
        if big >= r:
            return mask[..., :r]
        return torch.cat([mask, mask.new_ones(*mask.shape[:-1], r - big)], dim=-1)

    # ------------------------------------------------------------------ shapes
    def expected_weight_shape(self):
        """(out, in[, 1...]) from p_layer/q_layer."""
        q, p = self.tensors["q_layer.weight"], self.tensors["p_layer.weight"]
        return (p.shape[0], *q.shape[1:])

    def shape_key(self):
        return "q_layer.weight"

    def check_target(self, weight_shape, where):
        """Reject convs with kernel > 1, then the usual shape check."""
        if len(weight_shape) > 2 and math.prod(weight_shape[2:]) != 1:
            raise ShapeMismatchError(
                f"{self._where()}: T-LoRA on a convolution with kernel {tuple(weight_shape[2:])} at {where} is not "
                f"supported (only Linear and 1x1 convolutions; lycoris-lora itself is inconsistent there). "
                f"Fix: retrain with T-LoRA on Linear layers only, or use a LoCon/LoKr file for convolutions.")
        super().check_target(weight_shape, where)

    # ------------------------------------------------------------------ base
    @property
    def has_stored_base(self) -> bool:
        """True when the file carries base_q/base_p/base_lambda (no SVD needed)."""
        return all(k in self.tensors for k in _BASE_KEYS)

    @property
    def base_token(self):
        """The token the current SVD base was set with (e.g. a hash of the weight), or None."""
        return self._shared.get("tlora_base_token")

    def prepare_base(self, weight: torch.Tensor | None = None, *, token=None, svd=None) -> None:
        """Set the SVD base from the *unpatched* base weight (or its row slice), shared by every `to()` copy.

        `svd`: a precomputed `tlora_svd_base(weight, rank)` result (fp32, unrounded), e.g. from a disk cache;
        else it is computed from `weight`. `token` names the weight (a content hash): a base already set with the
        same token is kept, another token replaces it (the same file loaded on another model). Without a token
        an existing base is kept. A file with stored base tensors never needs this.
        """
        if self.has_stored_base:
            return
        current = self._shared.get("tlora_base")
        if current is not None and (token is None or token == self.base_token):
            return
        if svd is None:
            if weight is None:
                raise ValueError(f"{self._where()}: prepare_base needs the base weight or its SVD")
            svd = tlora_svd_base(weight, self.rank)
        self._set_svd(svd, token)

    def _set_svd(self, svd, token) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.rank
        p0, q0, lam0 = svd
        if p0.shape[-1] != r or q0.shape[0] != r or lam0.numel() != r:
            raise ValueError(f"{self._where()}: SVD base of rank {lam0.numel()} for a rank-{r} module")
        # SimpleTuner casts the network (buffers included) to the file dtype: round the base the same way.
        base = tuple(t.detach().to(self.file_dtype).float() for t in (p0, q0, lam0.reshape(r)))
        self._shared["tlora_base"] = base
        self._shared["tlora_base_token"] = token
        return base

    def _base(self, weight_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P0 (out, r), Q0 (r, in), λ0 (r,)) in fp32, stored or from the SVD of `weight_fn()`, cached (shared
        with `to()` copies, so the SVD runs once per adapter unless `prepare_base` sets another)."""
        base = self._shared.get("tlora_base")
        if base is not None:
            return base
        r = self.rank
        if self.has_stored_base:
            p0 = self.tensors["base_p.weight"].float().reshape(-1, r)
            q0 = self.tensors["base_q.weight"].float().reshape(r, -1)
            lam0 = self.tensors["base_lambda"].float().reshape(r)
            base = self._shared["tlora_base"] = (p0, q0, lam0)
            return base
        return self._set_svd(tlora_svd_base(weight_fn(), r), None)

    def _factors(self, like: torch.Tensor, weight_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(down (2r, in), up (out, 2r), s·λ2 (2r,)) on like's device/dtype, cached per base token (a base replaced
        by `prepare_base` rebuilds them). The scale s is folded into the diagonal. Ranks are interleaved, current
        then base: down rows Q_0, Q0_0, Q_1, Q0_1, ..., up columns P_0, P0_0, ..., λ2 = λ_0, −λ0_0, λ_1, ...; so the
        first 2k rows (columns) are ranks [0, k) of both paths and a rank-sliced product is one view, one GEMM."""
        key = ("tlora_factors", like.device, like.dtype, self._shared.get("tlora_base_token"))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        r = self.rank
        p0, q0, lam0 = self._base(weight_fn)
        key = ("tlora_factors", like.device, like.dtype, self._shared.get("tlora_base_token"))
        for old in [k for k in self._cache if k[0] == "tlora_factors" and k[1:3] == key[1:3]]:
            del self._cache[old]
        q = self.tensors["q_layer.weight"].reshape(r, -1)
        p = self.tensors["p_layer.weight"].reshape(-1, r)
        lam = self.tensors["lambda_layer"].reshape(r)
        dev, dt = like.device, like.dtype
        down = torch.stack([q.to(dev, dt), q0.to(dev, dt)], dim=1).reshape(2 * r, -1)
        up = torch.stack([p.to(dev, dt), p0.to(dev, dt)], dim=2).reshape(p.shape[0], 2 * r)
        lam2 = (torch.stack([lam.float(), -lam0.float()], dim=1).reshape(2 * r) * self.scale).to(dev, dt)
        hit = self._cache[key] = (down, up, lam2)
        return hit

    def _lam_eff(self, lam2: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """s·λ2⊙μ (μ repeated for both paths, interleaved like `_factors`): (2r,), or (B, 2r) for a per-sample mask;
        one small allocation, no concatenation."""
        mu = self._mask_vec(like)
        if mu is None:
            return lam2
        r = self.rank
        if mu.dim() == 1:
            return (lam2.view(r, 2) * mu.view(r, 1)).view(2 * r)
        return (lam2.view(1, r, 2) * mu.reshape(-1, r, 1)).reshape(-1, 2 * r)

    # ------------------------------------------------------------------ maths
    def delta_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """s·(P diag(λ⊙μ) Q − P0 diag(λ0⊙μ) Q0) with the current mask; `weight` is the base weight (used for
        the SVD the first time). A per-sample (B, R) mask cannot be merged."""
        self._refuse_kernel(weight.shape)
        down, up, lam2 = self._factors(weight, lambda: weight)
        lam_eff = self._lam_eff(lam2, weight)
        if lam_eff.dim() != 1:
            raise ValueError(f"{self._where()}: a per-sample T-LoRA mask {tuple(self.mask.shape)} cannot be merged "
                             f"into one weight; use bypass")
        return ((up * lam_eff) @ down).reshape(self.expected_weight_shape())

    def _refuse_kernel(self, shape) -> None:
        if len(shape) > 2 and math.prod(shape[2:]) != 1:
            raise ShapeMismatchError(f"{self._where()}: T-LoRA supports only Linear and 1x1 convolutions "
                                     f"(target weight {tuple(shape)}); retrain T-LoRA on Linear layers only")

    def fuses(self, layer: LayerSpec) -> bool:
        """Linear layers: the rank-2r LoRA accumulated into y (addmm), sliced to the active ranks on CPU."""
        return layer.kind == "linear"

    def add_delta_(self, x: torch.Tensor, y: torch.Tensor, coeff, layer: LayerSpec) -> torch.Tensor:
        """y += coeff·s·[P((Qx)⊙λμ) − P0((Q0x)⊙λ0μ)] in place.

        On CPU (where reading the mask costs no device sync) only the ranks up to the last active one are
        computed, in both paths: the cost follows r_active instead of r. Elsewhere the whole rank-2r product runs
        with the mask multiplied in (no host read). A per-sample (B, R) mask goes through `delta_act`."""
        down, up, lam2 = self._factors(x, lambda: layer_weight(layer, x.new_empty((), dtype=torch.float32),
                                                                self._where()))
        lam_eff = self._lam_eff(lam2, x)
        y2 = rows_view(y)
        if lam_eff.dim() != 1 or y2 is None:
            return y.add_(self.delta_act(x, layer).mul_(coeff))
        if not (isinstance(coeff, float) and coeff == 1.0):
            lam_eff = lam_eff * coeff
        x2 = x.reshape(-1, x.shape[-1])
        r = self.rank
        k = r
        mask = self.mask
        if (self.host_rank_slicing and mask is not None and mask.dim() == 1 and x.device.type == "cpu"
                and mask.device.type == "cpu"):
            on = torch.nonzero(self._mask_vec(x))  # ranks past the last active one contribute exactly 0
            k = int(on[-1]) + 1 if on.numel() else 0
        if k == 0:
            return y
        n = 2 * k  # ranks [0, k) of both paths: the first 2k interleaved rows / columns (views, no copy)
        y2.addmm_(F.linear(x2, down[:n]).mul_(lam_eff[:n]), up[:, :n].t())
        return y

    def delta_act(self, x: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
        """s·[P((Qx)⊙λμ) − P0((Q0x)⊙λ0μ)] as one rank-2r LoRA (no bias)."""
        if layer.kind not in ("linear", "conv"):
            raise ValueError(f"{self._where()}: T-LoRA on a {layer.kind!r} layer")
        self._refuse_kernel(layer.weight_shape)
        if conv_groups(layer) != 1:
            raise ShapeMismatchError(f"{self._where()}: T-LoRA on a grouped convolution is not supported")
        down, up, lam2 = self._factors(x, lambda: layer_weight(layer, x.new_empty((), dtype=torch.float32),
                                                                self._where()))
        lam_eff = self._lam_eff(lam2, x)
        if layer.kind == "linear":
            if lam_eff.dim() == 2:  # per-sample (B, 2r) -> (B, 1, ..., 2r)
                lam_eff = lam_eff.reshape(lam_eff.shape[0], *([1] * (x.dim() - 2)), -1)
            return F.linear(F.linear(x, down).mul_(lam_eff), up)
        nd = len(layer.weight_shape)
        conv, ones = conv_fn(nd), [1] * (nd - 2)
        h = conv(x, down.reshape(*down.shape, *ones), **geometry(layer, groups=False))
        lead = 1 if lam_eff.dim() == 1 else lam_eff.shape[0]  # per-sample: (B, 2r, 1, ...)
        h = h.mul_(lam_eff.reshape(lead, -1, *([1] * (h.dim() - 2))))
        return conv(h, up.reshape(*up.shape, *ones))
