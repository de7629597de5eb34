"""Hugging Face ``transformers`` vision models (the optional extra ``hf``) as this package uses
models: images in, a logits tensor out, like timm's.

``hf:<hub id or local directory>`` builds ``AutoModelForImageClassification``: from its config
(``pretrained=False``; a directory written by ``config.save_pretrained`` works offline) or with
its weights (``from_pretrained``, through the Hugging Face cache). The model is wrapped in
:class:`HFImageClassifier` (state-dict keys ``model.<transformers key>``); checkpoints in
either layout load into it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from denoiserep.util.errors import short_cause

from .hub import DOWNLOAD_ERRORS, unavailable
from .weights import read_checkpoint

log = logging.getLogger("denoiserep.models")

INSTALL_HINT = "Hugging Face models need transformers: pip install -e '.[hf]' in a checkout"
#: create_model keywords with another name in a transformers config.
CONFIG_ALIASES = {"num_classes": "num_labels", "in_chans": "num_channels", "img_size": "image_size"}


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return transformers


class HFImageClassifier(nn.Module):
    """A transformers image classifier that maps images (N, C, H, W) to logits (N, classes).

    ``num_classes=0`` gives the pooled feature instead where the model's classifier becomes the
    identity (ViT: the final class token). ``source`` is the hub id or directory it came from;
    ``processor_config`` its image-processor settings, when known (for preprocessing).
    """

    def __init__(
        self, model: nn.Module, source: str = "", processor_config: dict | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.source = source
        self.processor_config = processor_config
        self.train()

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_classes(self) -> int:
        return int(self.config.num_labels)

    @property
    def num_features(self) -> int:
        cfg = self.config
        if getattr(cfg, "hidden_size", None):
            return int(cfg.hidden_size)
        return int(cfg.hidden_sizes[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def create_hf_classifier(
    source: str,
    pretrained: bool,
    kwargs: dict[str, Any],
    checkpoint: str | os.PathLike | None = None,
    *,
    key: str | None = None,
    remap: list | None = None,
) -> HFImageClassifier:
    """``AutoModelForImageClassification`` for ``source`` (hub id or local directory), built
    from its config with ``kwargs`` applied, with its pretrained weights if ``pretrained``, or
    with the weights file ``checkpoint`` (its entry ``key``, keys rewritten by ``remap``: see
    :func:`denoiserep.models.weights.read_checkpoint`)."""
    transformers = require_transformers()
    name = f"hf:{source}"
    download = pretrained and checkpoint is None
    config = load_config(source, download, transformers.AutoConfig.from_pretrained)
    apply_config_overrides(config, kwargs, name)
    auto = transformers.AutoModelForImageClassification
    if download:
        model = from_pretrained_checked(auto, source, config, name=name, heads=("classifier",))
    else:
        model = auto.from_config(config)
    wrapper = HFImageClassifier(model.float(), source, processor_config(source, download))
    if checkpoint is not None:
        state = read_checkpoint(checkpoint, key=key, remap=remap)
        load_hf_state(wrapper, state, f"checkpoint {checkpoint}", name)
    return wrapper


def load_hf_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    name: str,
    *,
    heads: Iterable[str] = ("classifier",),
    fresh: Iterable[str] = (),
    unused: Iterable[str] = (),
) -> nn.Module:
    """Load a state dict into a transformers model (or an :class:`HFImageClassifier`, whose
    own ``model.``-prefixed layout is accepted too) through transformers' loader, so that its
    key conversions apply (transformers 5 renames modules; files keep the legacy names).
    The rule of :func:`from_pretrained_checked` holds, except that checkpoint keys outside
    ``heads`` and ``unused`` that the model lacks are an error too."""
    target = model.model if isinstance(model, HFImageClassifier) else model
    state = dict(state)
    if (
        isinstance(model, HFImageClassifier)
        and state
        and all(k.startswith("model.") for k in state)
    ):
        state = {k[len("model.") :]: v for k, v in state.items()}
    loaded = from_pretrained_checked(
        type(target),
        None,
        target.config,
        name=name,
        heads=heads,
        fresh=fresh,
        state_dict=state,
        source_label=source,
        unused=tuple(unused),
    )
    target.load_state_dict(loaded.state_dict())
    return model


def load_config(source: str, pretrained: bool, loader: Callable[[str], Any]) -> Any:
    """The transformers config of ``source``, or a one-line error naming the offline route."""
    try:
        return loader(source)
    except OSError as e:
        if pretrained:
            raise unavailable(f"hf:{source}", e) from None
        raise ValueError(
            f"cannot get the config of hf:{source} ({short_cause(e)}); without "
            "network it must be in the Hugging Face cache, or write it with "
            "config.save_pretrained(DIR) and use hf:DIR"
        ) from None


def apply_config_overrides(config: Any, kwargs: Mapping[str, Any], name: str) -> None:
    """Set ``kwargs`` on ``config`` (``num_classes`` / ``in_chans`` / ``img_size`` under their
    transformers names); an unknown attribute is an error rather than silently ignored."""
    unknown = []
    for key, value in kwargs.items():
        attr = CONFIG_ALIASES.get(key, key)
        if attr == "num_labels":
            config.num_labels = int(value)  # also resets id2label / label2id
        elif hasattr(config, attr):
            setattr(config, attr, value)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{name}: {', '.join(unknown)} not in its {type(config).__name__} (keywords are "
            f"config attributes, or {', '.join(CONFIG_ALIASES)})"
        )


@contextmanager
def _quiet_transformers():
    """transformers' multi-line load reports off: this module says what matters in one line."""
    from transformers.utils import logging as tf_logging

    level, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging.set_verbosity(level)
        if bars:
            tf_logging.enable_progress_bar()


def from_pretrained_checked(
    auto_class: Any,
    source: str | None,
    config: Any,
    *,
    name: str,
    heads: Iterable[str] = ("classifier",),
    fresh: Iterable[str] = (),
    state_dict: Mapping[str, torch.Tensor] | None = None,
    source_label: str | None = None,
    unused: tuple[str, ...] | None = None,
) -> nn.Module:
    """``auto_class.from_pretrained(source, config=config)`` in float32 (or from ``state_dict``)
    with this package's rule: keys under ``heads`` may differ in shape or be missing
    (re-initialised), keys under ``fresh`` may be missing (a backbone-only checkpoint); any
    other missing or mis-shaped key is a ValueError, and so are unused checkpoint keys outside
    ``heads`` and ``unused`` when ``unused`` is given (hub weights: None, unused keys are only
    named). One line is logged for what was re-initialised or left unused."""
    heads, fresh = tuple(heads), tuple(fresh)
    label = source_label or f"pretrained weights {source}"
    what = name if source is None or source in name else f"{name} ({source})"  # offline error
    extra = {} if state_dict is None else {"state_dict": dict(state_dict)}
    try:
        with _quiet_transformers():
            model, info = auto_class.from_pretrained(
                source,
                config=config,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
                dtype=torch.float32,
                **extra,
            )
    except DOWNLOAD_ERRORS as e:
        raise unavailable(what, e) from None

    def under(key: str, prefixes: tuple[str, ...]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    mismatched = {k: (tuple(a), tuple(b)) for k, a, b in info["mismatched_keys"]}
    missing = sorted(info["missing_keys"])
    unexpected = sorted(info["unexpected_keys"])
    bad_missing = [k for k in missing if not under(k, heads + fresh)]
    bad_shape = [k for k in mismatched if not under(k, heads)]
    bad_unused = [] if unused is None else [k for k in unexpected if not under(k, heads + unused)]
    if bad_missing or bad_shape or bad_unused:
        parts = []
        for kind, keys in (("missing", bad_missing), ("unexpected", bad_unused)):
            if keys:
                more = ", ..." if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {kind} ({', '.join(keys[:3])}{more})")
        if bad_shape:
            shown = ", ".join(
                f"{k}: {mismatched[k][0]} vs {mismatched[k][1]}" for k in bad_shape[:3]
            )
            parts.append(f"{len(bad_shape)} mis-shaped (checkpoint vs model: {shown})")
        raise ValueError(f"{label} does not match {name}: {', '.join(parts)}")
    notes = []
    head_shape = sorted(k for k in mismatched if under(k, heads))
    if head_shape:
        k = min(head_shape, key=lambda k: (mismatched[k][1][0], k))  # the class count
        notes.append(
            f"classifier head ({', '.join(head_shape[:4])}) re-initialised for "
            f"{mismatched[k][1][0]} classes ({label} has {mismatched[k][0][0]})"
        )
    new = [k for k in missing if k not in mismatched]
    for prefix in fresh + heads:
        part = [k for k in new if under(k, (prefix,))]
        if part:
            notes.append(f"{prefix} not in {label} ({len(part)} tensors): initialised fresh")
            new = [k for k in new if k not in part]
    if unexpected:
        more = ", ..." if len(unexpected) > 3 else ""
        notes.append(
            f"{len(unexpected)} tensors of {label} not used ({', '.join(unexpected[:3])}{more})"
        )
    if notes:
        log.warning(f"{name}: {'; '.join(notes)}")
    return model


def processor_config(source: str, download: bool = False) -> dict | None:
    """The image-processor settings (``preprocessor_config.json``) of ``source``, if at hand:
    in its directory, in the Hugging Face cache, or (``download``) from the hub."""
    filename = "preprocessor_config.json"
    path: str | Path | None = None
    if Path(source).is_dir():
        path = Path(source) / filename
    else:
        try:
            from huggingface_hub import hf_hub_download, try_to_load_from_cache

            cached = try_to_load_from_cache(source, filename)
            if isinstance(cached, str):
                path = cached
            elif download and cached is None:
                path = hf_hub_download(source, filename)
        except Exception:  # noqa: BLE001 - optional metadata: defaults apply without it
            return None
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
