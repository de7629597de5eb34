"""Reading weights files and loading them into a model with a one-line account of mismatches.

A checkpoint may be ``.safetensors``, ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``, a raw state dict
or one nested under ``state_dict`` / ``model`` / ``model_ema`` / ... (``checkpoint_key``
chooses); ``checkpoint_remap`` rewrites its keys; DDP / ``torch.compile`` prefixes are
stripped, and so is one wrapper prefix every key carries when that makes the keys fit. A
classifier head whose class count differs is re-initialised (one logged line); any other
missing, unexpected or mis-shaped key is an error listing the first few.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from denoiserep.util.errors import warn_once
from denoiserep.util.state_dict import read_weights

log = logging.getLogger("denoiserep.models")


HEAD_NAMES = ("fc", "classifier", "heads", "head", "head_dist")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile, stripped from every key
#: Prefixes stripped when every key of a checkpoint carries one and the keys then fit the model
#: (DDP, torch.compile, Lightning / EMA wrappers, TransReID's ``base.``, mmengine's
#: ``backbone.``, encoder-decoder wrappers).
COMMON_PREFIXES = ("module.", "_orig_mod.", "model.", "base.", "backbone.", "encoder.")

#: ``model.checkpoint_remap``: ordered (compiled regex, replacement) pairs.
Remap = list[tuple[re.Pattern, str]]


def check_remap(remap: Any, where: str = "model.checkpoint_remap") -> Remap:
    """``remap`` (a list of ``[regex, replacement]`` pairs of strings) compiled, in order, or a
    one-line ValueError naming ``where``; None is no remap."""
    if remap is None:
        return []
    example = "e.g. [['^base\\.', ''], ['^head\\.', 'fc.']]"
    if isinstance(remap, Mapping) or not isinstance(remap, list | tuple):
        raise ValueError(
            f"{where} is a list of [regex, replacement] pairs, {example}; got {remap!r}"
        )
    pairs = []
    for i, pair in enumerate(remap):
        if isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], re.Pattern):
            pairs.append(pair)  # already checked
            continue
        if not (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(v, str) for v in pair)
        ):
            raise ValueError(
                f"{where}[{i}] must be a [regex, replacement] pair of strings, {example}; "
                f"got {pair!r}"
            )
        try:
            pattern = re.compile(pair[0])
        except re.error as e:
            raise ValueError(f"{where}[{i}]: {pair[0]!r} is not a valid regex ({e})") from None
        pairs.append((pattern, pair[1]))
    return pairs


def remap_keys(
    state: Mapping[str, torch.Tensor], remap: Any, where: str = "model.checkpoint_remap"
) -> dict[str, torch.Tensor]:
    """Rewrite every key with each ``(regex, replacement)`` pair in turn (``re.sub``, as
    mmengine's ``revise_keys``); two keys mapped to one name are a one-line error."""
    pairs = check_remap(remap, where)
    if not pairs:
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = key
        for i, (pattern, replacement) in enumerate(pairs):
            try:
                new = pattern.sub(replacement, new)
            except (re.error, IndexError) as e:
                raise ValueError(
                    f"{where}[{i}]: replacement {replacement!r} is invalid for "
                    f"{pattern.pattern!r} ({e})"
                ) from None
        if new in out:
            raise ValueError(f"{where} maps both {origin[new]} and {key} to {new}")
        out[new], origin[new] = value, key
    return out


def read_checkpoint(
    path: str | os.PathLike, *, key: str | None = None, remap: Any = None
) -> dict[str, torch.Tensor]:
    """The state dict in a weights file (``denoiserep.core.io.read_weights``: ``.safetensors``
    or a ``torch.save`` file such as ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``, raw or nested
    under ``state_dict`` / ``model`` / ``model_ema`` / ..., ``key`` choosing which), its keys
    rewritten by ``remap`` (see :func:`remap_keys`; applied to the keys as in the file), then
    ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes stripped."""
    state = remap_keys(read_weights(path, key), remap)
    return {_strip_wrappers(k): v for k, v in state.items()}


def strip_common_prefix(
    state: Mapping[str, torch.Tensor], expected: Iterable[str], source: str, arch: str
) -> dict[str, torch.Tensor]:
    """``state`` without one of :data:`COMMON_PREFIXES` when every key carries it and the keys
    then fit the model (more of them are ``expected`` keys); one logged line says so."""
    expected = set(expected)
    state = dict(state)
    best, best_hits = None, sum(k in expected for k in state)
    for prefix in COMMON_PREFIXES:
        if not state or not all(k.startswith(prefix) for k in state):
            continue
        hits = sum(k[len(prefix) :] in expected for k in state)
        if hits > best_hits:
            best, best_hits = prefix, hits
    if best is None:
        return state
    warn_once(
        f"{arch}: every key of {source} starts with {best!r}; loaded without it "
        f"(model.checkpoint_remap rewrites keys otherwise)"
    )
    return {k[len(best) :]: v for k, v in state.items()}


def load_plain_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    name: str | None = None,
    heads: tuple[str, ...] | None = None,
) -> nn.Module:
    """Load ``state`` into a timm / torchvision / plain ``model`` (transformers models go
    through :func:`denoiserep.models.load_state`): every key must match but the classifier
    head's.

    Keys under the head (:func:`head_prefixes`) that are missing, unexpected or of another
    shape leave the model's fresh head in place, and one line is logged. timm models whose
    weights do not fit as they are go through timm's checkpoint filter (position-embedding
    resampling, original-format conversion) first, and a 3-channel stem is adapted to the
    model's input channels as timm does. Anything else that does not fit is a ValueError
    naming the first few keys. ``heads`` overrides the head's module names.
    """
    target, state = model, dict(state)
    expected = target.state_dict()
    heads = tuple(heads) if heads is not None else head_prefixes(target)
    state = _adapt_input_conv(target, state, expected)
    problems = _compare(expected, state, heads)
    filter_fn = timm_filter_fn(target)
    if problems.other and filter_fn is not None:
        try:
            try:
                filtered = filter_fn(dict(state), target)
            except TypeError:  # filters of older models take the state dict only
                filtered = filter_fn(dict(state))
        except Exception:  # noqa: BLE001 - the unfiltered mismatch is the error to report
            filtered = None
        if filtered is not None:
            filtered = _adapt_input_conv(target, dict(filtered), expected)
            refiltered = _compare(expected, filtered, heads)
            if refiltered.count < problems.count:
                state, problems = filtered, refiltered
    arch = name or type(model).__name__
    if problems.other:
        raise ValueError(f"{source} does not match {arch}: {problems.describe(state, expected)}")
    keep = {k: v for k, v in state.items() if k in expected and k not in problems.head}
    result = target.load_state_dict(keep, strict=False)
    left = [k for k in result.missing_keys if k not in problems.head and not _optional(k)]
    if left or result.unexpected_keys:  # cannot happen after _compare; guard the contract
        raise ValueError(f"{source} does not match {arch}: missing {', '.join(left[:3])}")
    if problems.head:
        warn_once(f"{arch}: {problems.head_line(state, expected, source)}")
    return model


def is_transformers_model(model: nn.Module) -> bool:
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module names of ``model``'s classifier head: timm's ``pretrained_cfg['classifier']``,
    else top-level ``fc`` / ``classifier`` / ``heads`` / ``head`` (torchvision, Hugging Face)."""
    declared = getattr(model, "head_names", None)  # this package's wrappers declare theirs
    if declared is not None:
        return tuple(declared)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("classifier"):
        return as_tuple(cfg["classifier"])
    names = dict(model.named_children())
    return tuple(n for n in HEAD_NAMES if n in names)


class _Problems:
    """Missing / unexpected / mis-shaped keys, split into the head's and the others."""

    def __init__(self, missing: list[str], unexpected: list[str], shape: list[str], heads):
        def is_head(k: str) -> bool:
            return any(k == h or k.startswith(h + ".") for h in heads)

        self.missing = [k for k in missing if not is_head(k)]
        self.unexpected = [k for k in unexpected if not is_head(k)]
        self.shape = [k for k in shape if not is_head(k)]
        self.head = [k for k in (*missing, *unexpected, *shape) if is_head(k)]
        self.head_kinds = (
            any(is_head(k) for k in missing),
            any(is_head(k) for k in unexpected),
            any(is_head(k) for k in shape),
        )
        self.other = bool(self.missing or self.unexpected or self.shape)
        self.count = len(self.missing) + len(self.unexpected) + len(self.shape)

    def describe(self, state: Mapping, expected: Mapping) -> str:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                more = ", ..." if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{more})")
        if self.shape:
            shown = ", ".join(
                f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                for k in self.shape[:3]
            )
            more = ", ..." if len(self.shape) > 3 else ""
            parts.append(f"{len(self.shape)} mis-shaped (checkpoint vs model: {shown}{more})")
        return ", ".join(parts)

    def head_line(self, state: Mapping, expected: Mapping, source: str) -> str:
        keys = ", ".join(self.head[:4]) + (", ..." if len(self.head) > 4 else "")
        missing, unexpected, shape = self.head_kinds
        if shape:
            # the class count: the smallest leading dim (box regressors have 4 per class)
            shaped = [k for k in self.head if k in state and k in expected]
            k = min(shaped, key=lambda k: (expected[k].shape[0], k))
            n_src, n_model = state[k].shape[0], expected[k].shape[0]
            return (
                f"classifier head ({keys}) re-initialised for {n_model} classes "
                f"({source} has {n_src})"
            )
        if unexpected and not missing:
            return f"head ({keys}) of {source} not used: the model has no such head"
        if missing and not unexpected:
            return f"head ({keys}) not in {source}: kept freshly initialised"
        return f"head ({keys}) differs in {source}: the model's fresh head is kept"


def _compare(expected: Mapping, state: Mapping, heads: tuple[str, ...]) -> _Problems:
    missing = [k for k in expected if k not in state and not _optional(k)]
    unexpected = [k for k in state if k not in expected]
    shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    return _Problems(missing, unexpected, shape, heads)


def _adapt_input_conv(target: nn.Module, state: dict, expected: Mapping) -> dict:
    """timm's input-stem adaptation: 3-channel weights summed / repeated for ``in_chans``."""
    cfg = getattr(target, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping) or not cfg.get("first_conv"):
        return state
    from timm.models import adapt_input_conv

    for conv in as_tuple(cfg["first_conv"]):
        key = f"{conv}.weight"
        w, want = state.get(key), expected.get(key)
        if w is None or want is None or w.ndim != 4 or w.shape == want.shape:
            continue
        if w.shape[0] == want.shape[0] and w.shape[2:] == want.shape[2:]:
            state[key] = adapt_input_conv(want.shape[1], w)
            log.info(f"{key}: adapted from {w.shape[1]} to {want.shape[1]} input channel(s)")
    return state


def _optional(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # absent from old BatchNorm checkpoints


def _strip_wrappers(key: str) -> str:
    while key.startswith(_WRAPPER_PREFIXES):
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
    return key


def as_tuple(value: str | tuple | list) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


# -- download errors ----------------------------------------------------------------------------


def timm_filter_fn(model: nn.Module) -> Callable | None:
    """timm's checkpoint filter for ``model``: its module's ``checkpoint_filter_fn`` (timm passes
    it to ``build_model_with_cfg`` when loading pretrained weights), or None."""
    module = sys.modules.get(type(model).__module__)
    if module is None or not type(model).__module__.startswith("timm."):
        return None
    return getattr(module, "checkpoint_filter_fn", None)
