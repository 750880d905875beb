"""Features of a timm ViT's tokens (``probe.features``), and a head that sits on them.

:func:`token_features` is what feature extraction caches (k-NN, few-shot, linear probe). A network
whose head takes one of these features instead of timm's own pooling carries ``arch["features"]``
(see :func:`vit_ft.weights.arch.create_from_arch`, which sizes the head): its logits are
``net.head(token_features(net, x, features))`` (:func:`network_logits`), so a linear probe's checkpoint
predicts exactly what the probe computed on the cached features. timm's own ``forward`` does not know
about this; :class:`FeatureHeadNet` wraps such a network for code that only calls ``net(x)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit_ft.errors import ConfigError
from vit_ft.weights.arch import HEAD_FEATURE_WIDTH

FEATURE_TYPES = ("cls", "mean", "cls+mean", "pool", "last4")


def _has_class_token(net: nn.Module) -> bool:
    return getattr(net, "cls_token", None) is not None


def feature_problem(net: nn.Module, features: str) -> str | None:
    """Why ``net`` cannot give ``probe.features=features`` (``None`` when it can)."""
    name = type(net).__name__
    if features in ("cls", "cls+mean", "last4") and not _has_class_token(net):
        return (
            f"probe.features={features} needs a CLS token but this {name} has none (e.g. SigLIP); "
            "use probe.features=pool (the model's own pooling) or mean"
        )
    if features in ("mean", "cls+mean", "last4") and not hasattr(net, "num_prefix_tokens"):
        return f"probe.features={features} needs a timm ViT with patch tokens; this is a {name}"
    if features == "last4":
        if not hasattr(net, "forward_intermediates"):
            return (
                f"probe.features=last4 needs timm's forward_intermediates, which {name} lacks; use cls+mean"
            )
        depth = len(getattr(net, "blocks", ()))
        if depth < 4:
            return f"probe.features=last4 concatenates the last 4 blocks but this model has {depth}; use cls+mean"
    return None


def check_feature_type(net: nn.Module, features: str) -> None:
    """One ``ConfigError`` line when ``net`` cannot give ``probe.features=features``."""
    problem = feature_problem(net, features)
    if problem:
        raise ConfigError(problem)


def feature_dim(net: nn.Module, features: str) -> int:
    """The width of :func:`token_features` for ``net``."""
    width = int(getattr(net, "embed_dim", 0) or getattr(net, "num_features", 0))
    if features == "pool":
        return int(getattr(net, "head_hidden_size", 0) or getattr(net, "num_features", 0) or width)
    return width * HEAD_FEATURE_WIDTH[features]


def token_features(net: nn.Module, x: torch.Tensor, features: str) -> torch.Tensor:
    """``probe.features`` of normalised images ``x``, from timm's token outputs.

    * ``cls``: the final-norm CLS token; ``mean``: the mean of the final-norm patch tokens (the
      ``num_prefix_tokens`` class, distillation and register tokens left out);
      ``cls+mean``: both, concatenated;
    * ``pool``: the model's own pooling (timm's ``forward_head(pre_logits=True)``: CLS for ViT, the
      attention pool for SigLIP, the mean of class and distillation tokens for distilled DeiT);
    * ``last4``: DINOv2's linear evaluation (``use_n_blocks=4, avgpool=True``): the CLS tokens of the
      last 4 blocks, each through the final norm, and the mean patch token of the last block.
    """
    if features == "last4":
        inter = net.forward_intermediates(
            x, indices=4, norm=True, return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True
        )
        return torch.cat([prefix[:, 0] for _, prefix in inter] + [inter[-1][0].mean(1)], dim=-1)
    tokens = net.forward_features(x)
    if features == "pool":
        return net.forward_head(tokens, pre_logits=True)
    if features == "cls":
        return tokens[:, 0]
    patch_mean = tokens[:, int(net.num_prefix_tokens) :].mean(1)
    if features == "mean":
        return patch_mean
    return torch.cat([tokens[:, 0], patch_mean], dim=-1)


def head_features(arch: dict[str, Any] | None) -> str | None:
    """The token feature the head of the network ``arch`` describes sits on (``None``: timm's own pooling)."""
    return (arch or {}).get("features") or None


def linear_head(net: nn.Module) -> nn.Module:
    """The network's (main) classification head: ``net.head`` where timm has one (a distilled DeiT's
    ``get_classifier()`` is a pair), else ``get_classifier()``."""
    head = getattr(net, "head", None)
    return head if isinstance(head, nn.Module) else net.get_classifier()


def pre_logits(net: nn.Module, x: torch.Tensor, features: str | None) -> torch.Tensor:
    """What the head of ``net`` sees for normalised images ``x``."""
    if features:
        return token_features(net, x, features)
    return net.forward_head(net.forward_features(x), pre_logits=True)


def network_logits(net: nn.Module, x: torch.Tensor, features: str | None) -> torch.Tensor:
    """Logits of normalised images ``x``: timm's ``net(x)``, or the head on ``features``."""
    if not features:
        return net(x)
    return net.head(token_features(net, x, features))


def use_head_features(classifier: Any, features: str) -> None:
    """Put the head of ``classifier`` (a ``ViTClassifier``) on ``features``: a zero linear head of the
    features' width, ``arch["features"]`` recorded for checkpoints, and the classifier's forward routed
    through :func:`token_features`. The backbone's weights are untouched."""
    net = classifier.model
    check_feature_type(net, features)
    classes = int(getattr(net, "num_classes", 0) or 0)
    head = getattr(net, "head", None)
    if classes < 1 or not isinstance(head, nn.Linear):
        raise ConfigError(
            f"probe.features={features}: the model has no linear head to put on the features; give the "
            "data's classes a head (model.reset_head=true)"
        )
    width = feature_dim(net, features)
    if int(head.in_features) != width:
        new = nn.Linear(width, classes).to(device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.bias.zero_()
        net.head = new
    arch = classifier.hparams.get("arch")
    if isinstance(arch, dict):
        arch["features"] = features
    classifier.head_features = features


def drop_head_features(classifier: Any) -> None:
    """Undo :func:`use_head_features` (weights of a probe on token features, probed again on timm's
    own pooling): timm's own zero head of the same classes, ``arch["features"]`` removed."""
    if not getattr(classifier, "head_features", None):
        return
    net = classifier.model
    net.reset_classifier(int(net.num_classes))
    head = linear_head(net)
    if isinstance(head, nn.Linear):
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    arch = classifier.hparams.get("arch")
    if isinstance(arch, dict):
        arch.pop("features", None)
    classifier.head_features = None


class FeatureHeadNet(nn.Module):
    """``net`` whose head sits on ``features``, as a module: ``forward(x)`` gives the logits of
    normalised images (for code that calls ``model(x)``, e.g. :class:`~vit_ft.models.predictor.Predictor`)."""

    def __init__(self, net: nn.Module, features: str) -> None:
        super().__init__()
        self.net = net
        self.features = features
        self.num_classes = int(getattr(net, "num_classes", 0) or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return network_logits(self.net, x, self.features)
