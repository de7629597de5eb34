"""DenoiseLayer: wraps one Linear / ConvNd with a linear denoiser, PEFT-adapter style."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import (
    Factors,
    apply_channel_map,
    fuse_weight,
    reverse_step_matrix,
    structured_layer_train,
    structured_train_weight,
    train_fused_weight,
)
from .objective import regression_loss
from .schedule import NoiseSchedule
from .structure import layer_rank, make_denoiser
from .support import is_supported, recomputing_in_backward, zero_padding_conv_arguments
from .tokens import all_tokens, sample_tokens, token_count

PHASES = ("denoiser", "backbone", "joint")


class DenoiseLayer(nn.Module):
    """A target layer y = W x + b with a denoiser D predicting the noise in its input x.

    * training, phase ``denoiser``: output of the original layer (bit for bit); D learns from
      the noise-prediction loss on the layer's detached input (``last_loss``; with
      ``batch_loss`` the sampled input waits until ``denoise_loss`` scores it with its group's:
      :func:`~denoiserep.core.objective.compute_pending_losses`).
    * training, phase ``backbone`` / ``joint``: output of the fused layer W A_t, differentiable
      in W (and in D for ``joint``), computed in the autocast dtype when autocast is on
      (:func:`~denoiserep.core.fusion.train_fused_weight`); for layers that see few tokens
      the same output is computed as W (A_t x), which is then cheaper.
    * eval: output of the fused layer with W A_t computed in float64 and cast back, i.e. exactly
      what :func:`denoiserep.fuse` exports. With ``explicit = True`` the reverse step is applied
      to the input instead (the paper's unfused Figure 1(c), for benchmarks).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        t: int,
        schedule: NoiseSchedule,
        name: str = "",
        loss: str = "mse",
        loss_fraction: float = 1.0,
        loss_tokens: int = 0,
        batch_loss: bool = False,
        loss_dtype: str = "float32",
        structure: str = "full",
        rank: int | None = None,
    ) -> None:
        super().__init__()
        if not is_supported(base_layer):
            raise TypeError(f"{name or type(base_layer).__name__}: cannot wrap {base_layer!r}")
        self.base_layer = base_layer
        self.groups = getattr(base_layer, "groups", 1)
        self.in_channels = c_in = base_layer.weight.shape[1] * self.groups
        self.structure = structure
        self.rank = rank = layer_rank(structure, rank, c_in, self.groups)
        for pname, p in make_denoiser(
            name, structure, rank, c_in, self.groups, base_layer.weight
        ).items():
            self.register_parameter(pname, p)
        self.schedule = schedule
        self.name = name
        self.loss = loss
        self.loss_fraction = loss_fraction
        self.loss_tokens = loss_tokens
        self.batch_loss = batch_loss
        self.loss_dtype = loss_dtype
        self.precision: dict[str, torch.dtype] = {}  # each product's dtype, last training forward
        self.phase = "joint"
        self.explicit = False
        self.last_loss: torch.Tensor | None = None
        self._pending: torch.Tensor | None = None  # sampled input awaiting its batched loss
        # (x_t, eps, autocast dtype of D·x_t) of a forward run without gradients, scored
        # with them by compute_pending_losses
        self._deferred: tuple[torch.Tensor, torch.Tensor, torch.dtype | None] | None = None
        # token-index draws shared by the batch_loss layers of one model within a step (set by
        # convert; None: this layer draws its own)
        self.shared_draws: dict[tuple, torch.Tensor] | None = None
        self._eval_cache: tuple[tuple, torch.Tensor] | None = None
        self.t = t
        self.train(base_layer.training)

    # -- timestep -----------------------------------------------------------------------------
    @property
    def t(self) -> int:
        return self._t

    @t.setter
    def t(self, value: int) -> None:
        self._k, self._inv_sqrt_alpha = self.schedule.reverse_coefficients(int(value))
        self.noise_coefficients = self.schedule.noise_coefficients(int(value))  # (a, b)
        self._t = int(value)
        self._eval_cache = None

    @property
    def strength(self) -> float:
        """k_t: how strongly the predicted noise is removed at this layer's timestep."""
        return self._k

    @property
    def weight(self) -> torch.Tensor:
        """The weight for code that reads it instead of calling the layer: in training the
        base layer's W (e.g. transformers' ViT casts its input to the patch projection's
        dtype); in eval the fused W A_t, what the fused model computes with
        (``nn.TransformerEncoderLayer``'s inference fast path reads ``linear1.weight``)."""
        return self.base_layer.weight if self.training else self._exact_fused_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (fusion leaves it unchanged)."""
        return self.base_layer.bias

    # -- the denoising step ---------------------------------------------------------------------
    @property
    def channel_dim(self) -> int:
        return -1 if isinstance(self.base_layer, nn.Linear) else 1

    @property
    def D(self) -> torch.Tensor:
        """D as the dense compact (C_in, C_in/g) matrix: for ``full`` the parameter itself,
        else materialised from the factors (differentiable; for diagnostics and spectra)."""
        if "d" in self._parameters:
            return self.denoiser.dense()
        if "D" not in self._parameters:
            raise AttributeError("D")  # not registered yet (register_parameter asks)
        return self._parameters["D"]

    @property
    def denoiser(self) -> torch.Tensor | Factors:
        """What the products use: the parameter D (``full``) or the :class:`Factors`."""
        params = self._parameters
        if "D" in params:
            return params["D"]
        return Factors(params["d"], params.get("U"), params.get("V"), self.groups)

    def denoiser_parameters(self) -> list[nn.Parameter]:
        """The structure's parameters (``D``; ``d``; ``d``, ``U``, ``V``)."""
        return [p for n, p in self._parameters.items() if n in ("D", "d", "U", "V")]

    def reverse_matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A_t = (I - k_t D) / sqrt(alpha_t) in the compact grouped layout (a structured D
        materialised in ``dtype`` from the factors cast to it)."""
        den = self.denoiser if dtype is None else self.denoiser.to(dtype)
        D = den.dense() if isinstance(den, Factors) else den
        return reverse_step_matrix(D, self._k, self._inv_sqrt_alpha)

    def fused_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W A_t computed in ``dtype`` (default: the weight's), returned in the weight's dtype."""
        w = self.base_layer.weight
        with torch.autocast(w.device.type, enabled=False):
            compute = w if dtype is None else w.to(dtype)
            fused = fuse_weight(compute, self.reverse_matrix(compute.dtype), self.groups)
        return fused.to(w.dtype)

    def _exact_fused_weight(self) -> torch.Tensor:
        """The export weight (float64 product), cached while W and D are unchanged and no grad."""
        if torch.is_grad_enabled():
            return self.fused_weight(torch.float64)
        w, ps = self.base_layer.weight, self.denoiser_parameters()
        key = (w._version, w.data_ptr(), w.dtype, self._t)
        key += tuple((p._version, p.data_ptr()) for p in ps)
        if self._eval_cache is None or self._eval_cache[0] != key:
            self._eval_cache = (key, self.fused_weight(torch.float64))
        return self._eval_cache[1]

    def denoise_input(self, x: torch.Tensor) -> torch.Tensor:
        """The explicit reverse step x' = A_t x on the channel dimension."""
        return apply_channel_map(x, self.reverse_matrix(x.dtype), self.channel_dim)

    # -- noise-prediction loss ------------------------------------------------------------------
    def loss_token_count(self, n: int) -> int:
        """How many of the input's ``n`` tokens the loss uses (:func:`token_count`)."""
        return token_count(n, self.loss_fraction, self.loss_tokens)

    def input_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All of the input's tokens as a (tokens, C_in) matrix (:func:`all_tokens`)."""
        linear = isinstance(self.base_layer, nn.Linear)
        return all_tokens(x, self.in_channels, linear, self.base_layer.weight.dim())

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The tokens the loss scores (:func:`sample_tokens`, :meth:`loss_token_count` rows)."""
        linear, wdim = isinstance(self.base_layer, nn.Linear), self.base_layer.weight.dim()
        return sample_tokens(
            x, self.in_channels, linear, wdim, self.loss_token_count, self._randint
        )

    def _randint(self, high: int, m: int, device: torch.device) -> torch.Tensor:
        """``m`` uniform indices below ``high``. With :attr:`shared_draws` (``batch_loss``
        layers of one model) the layers that sample ``m`` of ``high`` in a step take the same
        draw: one operator per input shape instead of one per layer. Each layer's loss stays an
        unbiased sample of its own mean; only the layers' samples become correlated."""
        if self.shared_draws is None:
            return torch.randint(high, (m,), device=device)
        key = (high, m, str(device))
        if key not in self.shared_draws:
            self.shared_draws[key] = torch.randint(high, (m,), device=device)
        return self.shared_draws[key]

    def noise_prediction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Noise the detached input to timestep t and score D's prediction of that noise.

        x_t and the loss are float32, also under autocast: at small t the noise b * eps is
        about 1 % of x_t. The product D·x_t is float32 too unless ``loss_dtype`` is
        ``"autocast"`` (:func:`predict_noise`).
        """
        xt, eps = self._noised(x)
        return self._score_noised(xt, eps, self.in_autocast_dtype(x.device))

    def _noised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, eps) in float32 for the sampled tokens of the detached input."""
        with torch.autocast(x.device.type, enabled=False):
            x0 = self._tokens(x.detach()).float()
            eps = torch.randn_like(x0)
            a, b = self.noise_coefficients
            return a * x0 + b * eps, eps

    def _score_noised(self, xt: torch.Tensor, eps: torch.Tensor, low: bool) -> torch.Tensor:
        loss, self.precision["D·x_t"] = regression_loss(xt, eps, self.denoiser, self.loss, low)
        return loss

    def score_deferred(self) -> None:
        """Score the loss a forward without gradients left (see :meth:`_record_loss`), under
        the autocast dtype it ran in; nothing when none is waiting."""
        if self._deferred is None:
            return
        xt, eps, dtype = self._deferred
        self._deferred = None
        low = dtype is not None
        with torch.autocast(xt.device.type, dtype=dtype, enabled=low):
            self.last_loss = self._score_noised(xt, eps, low)

    @property
    def pending_input(self) -> torch.Tensor | None:
        """The sampled input a ``batch_loss`` forward left for its group's loss (None if none)."""
        return self._pending

    def release_pending(self) -> None:
        """Drop the pending input once its group has taken it."""
        self._pending = None

    def clear_losses(self) -> None:
        """Forget the last loss and anything waiting to be scored."""
        self.last_loss = self._pending = self._deferred = None

    def in_autocast_dtype(self, device: torch.device) -> bool:
        """Whether D·x_t runs in the autocast dtype now (``loss_dtype="autocast"`` and
        autocast on for ``device``)."""
        return self.loss_dtype == "autocast" and torch.is_autocast_enabled(device.type)

    def train_weight(self) -> torch.Tensor:
        """W A_t for a training forward: in the autocast dtype under autocast (float32 weights
        only), else in the weight's dtype; differentiable in W and D."""
        w = self.base_layer.weight
        dtype = w.dtype
        if w.dtype == torch.float32 and torch.is_autocast_enabled(w.device.type):
            dtype = torch.get_autocast_dtype(w.device.type)
        self.precision["W·A_t"] = dtype
        den, k, s = self.denoiser, self._k, self._inv_sqrt_alpha
        if isinstance(den, Factors):
            return structured_train_weight(w, den, k, s, dtype)
        return train_fused_weight(w, den, k, s, self.groups, dtype)

    def explicit_is_cheaper(self, x: torch.Tensor) -> bool:
        """Whether A_t x (tokens x C_in x C_in/g multiply-adds) costs less than W A_t
        (C_out x k x C_in x C_in/g): for layers that see fewer tokens than C_out x k / g, e.g.
        a classifier head or the late 7 x 7 stages of a CNN at small batches."""
        w = self.base_layer.weight
        tokens = x.numel() // self.in_channels
        return tokens * self.groups < w.shape[0] * math.prod(w.shape[2:])

    def train_denoise_input(self, x: torch.Tensor) -> torch.Tensor:
        """A_t x = (x - k_t D x) / sqrt(alpha_t) for a training forward, differentiable in x
        and D; it runs as a GEMM (Linear: one ``addmm``, the scale and x riding in it) or a 1x1
        grouped conv, so it follows autocast like the layer does."""
        s, k = self._inv_sqrt_alpha, self._k
        if isinstance(self.denoiser, Factors):  # s x ⊙ (1 - k d) - s k (x V) U^T
            out = self.denoiser.reverse_step(x, k, s, self.channel_dim)
            self.precision["A_t·x"] = out.dtype
            return out
        if isinstance(self.base_layer, nn.Linear):  # s x - s k x D^T
            x2 = x.reshape(-1, x.shape[-1])
            out = torch.addmm(x2, x2, self.D.T, beta=s, alpha=-k * s).reshape(x.shape)
            self.precision["A_t·x"] = out.dtype
            return out
        nd = self.base_layer.weight.dim() - 2
        conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
        dx = conv(x, self.D.reshape(*self.D.shape, *[1] * nd), groups=self.groups)
        self.precision["A_t·x"] = dx.dtype
        return dx.mul_(-k).add_(x).mul_(s)  # in place on the fresh product; no alpha= (fusion.py)

    # -- forward ----------------------------------------------------------------------------------
    def _base_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base_layer, nn.Linear):
            return F.linear(x, weight, self.base_layer.bias)
        return self.base_layer._conv_forward(x, weight, self.base_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recomputing = self.training and recomputing_in_backward()
        if not recomputing:
            if self._pending is not None and self.shared_draws:
                self.shared_draws.clear()  # the last forward's losses were never scored
            self.clear_losses()
            self.precision.clear()
        if not self.training:
            if self.explicit:
                return self.base_layer(self.denoise_input(x))
            return self._base_forward(x, self._exact_fused_weight())
        if self.phase != "backbone":
            self._record_loss(x, recomputing)
        if self.phase == "denoiser":
            return self.base_layer(x)
        # the same layer output either way (exact algebra); compute the cheaper product
        if self.explicit_is_cheaper(x):
            return self.base_layer(self.train_denoise_input(x))
        out = self._recomputing_forward(x)
        return self._base_forward(x, self.train_weight()) if out is None else out

    def _recomputing_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """A structured, ungrouped layer's W A_t output with W A_t rebuilt in backward, not
        kept (:func:`structured_layer_train`); None where that does not apply."""
        base, w = self.base_layer, self.base_layer.weight
        linear = isinstance(base, nn.Linear)
        if self.structure == "full" or self.groups != 1 or (not linear and x.dim() != w.dim()):
            return None
        conv = None if linear else zero_padding_conv_arguments(base)
        autocast = torch.is_autocast_enabled(x.device.type) and w.dtype == torch.float32
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else w.dtype
        if (conv is None and not linear) or (x.dtype != dtype and not autocast):
            return None
        self.precision["W·A_t"] = dtype
        k, s = self._k, self._inv_sqrt_alpha
        return structured_layer_train(x.to(dtype), w, base.bias, self.denoiser, k, s, conv)

    def _record_loss(self, x: torch.Tensor, recomputing: bool) -> None:
        """Score the noise prediction on this forward's input, or leave it for
        ``denoise_loss`` to score with gradients
        (:func:`~denoiserep.core.objective.compute_pending_losses`).

        * ``batch_loss``: the sampled input waits, to be scored with its group's.
        * gradients off while D trains: x_t and the noise are drawn now, as they would be, and
          D·x_t waits. A re-entrant activation checkpoint (``use_reentrant=True``: timm's
          ``set_reentrant_ckpt``; transformers 4's default) runs its block under ``no_grad``; a
          loss scored there would never reach D.
        * recomputed inside backward (checkpointing): the step's loss is kept. Without
          ``batch_loss`` it is scored again and dropped, since a non-reentrant checkpoint
          replays, in order, the tensors the first forward saved.
        """
        if self.batch_loss:
            if not recomputing:
                self._pending = self._tokens(x.detach())
        elif not recomputing and not torch.is_grad_enabled() and self.trains_denoiser:
            low = self.in_autocast_dtype(x.device)
            dtype = torch.get_autocast_dtype(x.device.type) if low else None
            self._deferred = (*self._noised(x), dtype)
        else:
            loss = self.noise_prediction_loss(x)
            if not recomputing:
                self.last_loss = loss

    @property
    def trains_denoiser(self) -> bool:
        """Whether any of the denoiser's parameters requires a gradient."""
        return any(p.requires_grad for p in self.denoiser_parameters())

    def to_fused(self) -> nn.Module:
        """A new plain copy of the base layer with the denoising folded into its weight."""
        with torch.no_grad():
            weight = self.fused_weight(torch.float64)
        fused = copy.deepcopy(self.base_layer)
        fused.weight = nn.Parameter(weight, requires_grad=self.base_layer.weight.requires_grad)
        return fused

    def __getstate__(self) -> dict:
        # Copies and pickles drop the last loss (a graph node), the inputs awaiting their loss
        # and the eval-weight cache.
        state = dict(super().__getstate__())
        state.update(last_loss=None, _pending=None, _deferred=None, _eval_cache=None)
        return state

    def extra_repr(self) -> str:
        shape = tuple(self.D.shape) if self.structure == "full" else self.structure
        rank = f", rank={self.rank}" if self.structure == "lowrank" else ""
        return f"t={self._t}, k_t={self._k:.4g}, phase={self.phase}, D={shape}{rank}"
