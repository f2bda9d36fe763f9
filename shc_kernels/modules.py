"""SHCConv2d, a drop-in nn.Conv2d whose kernel is modulated per sample, and ``convert``."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from . import backends, functional
from ._checks import check_eps, check_grad_route, pair

__all__ = ["HyperNetwork", "SHCConv2d", "convert"]


class HyperNetwork(nn.Module):
    """T_theta: (mu, sigma) of D channels -> logits of the kh×kw map, via 2D -> hidden -> kh*kw."""

    def __init__(self, in_channels, kernel_size, hidden=None, device=None, dtype=None):
        super().__init__()
        kh, kw = pair(tuple(kernel_size), "kernel_size")
        hidden = max(1, in_channels // 2) if hidden is None else hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        self.fc1 = nn.Linear(2 * in_channels, hidden, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, kh * kw, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()


class SHCConv2d(nn.Conv2d):
    """Statistical Hyper-Convolution: ``nn.Conv2d`` whose kernel for sample n is ``weight * m[n]``,
    with ``m[n]`` (kh×kw, in (0, 1)) computed by ``self.hyper`` from the channel means and
    standard deviations of that sample's input.

    Extra keyword arguments: ``hidden`` (hypernetwork width, default max(1, in_channels // 2)),
    ``eps`` (added to the variance, > 0), ``grad_route`` ("both", "conv", "hyper": which route
    carries the gradient to the input) and ``backend`` ("auto", "reference", "cpu", "triton",
    "cuda"); each is checked when set, also after construction.

    A fresh layer (and ``reset_parameters``) initialises ``weight``/``bias`` as nn.Conv2d and
    ``hyper.fc1``/``hyper.fc2`` as nn.Linear, so its map starts near, not at, 0.5 and varies
    with the input; ``convert`` (and the models) start every map at exactly 0.5.

    The forward is one call of ``functional.shc_conv2d`` (as is ``_conv_forward(x, weight,
    bias)``, which computes the SHC layer with the given weight and bias).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        *,
        hidden=None,
        eps=1e-5,
        grad_route="both",
        backend="auto",
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self.grad_route = grad_route
        self.backend = backend
        self.eps = eps
        self.hyper = HyperNetwork(in_channels, self.kernel_size, hidden, device, dtype)

    @property
    def grad_route(self) -> str:
        return self._grad_route

    @grad_route.setter
    def grad_route(self, value: str) -> None:
        check_grad_route(value)
        self._grad_route = value

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = backends.check_name(value)

    @property
    def eps(self) -> float:
        return self._eps

    @eps.setter
    def eps(self, value: float) -> None:
        self._eps = check_eps(value)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "hyper" in self._modules:  # nn.Conv2d.__init__ calls this before hyper exists
            self.hyper.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden={self.hyper.fc1.out_features}, "
            f"grad_route={self.grad_route!r}, backend={self.backend!r}"
        )

    def _hyper_params(self) -> tuple:
        """(fc1.weight, fc1.bias, fc2.weight, fc2.bias). Where the hypernetwork is this package's
        with plain nn.Linear layers, read from their parameter dicts: what nn.Module's attribute
        lookup returns, without its ~0.6 us a name (torch.func.functional_call swaps tensors in
        those dicts too); anything else (a parametrized or replaced layer) by attribute."""
        try:
            hyper = self._modules["hyper"]
            if type(hyper) is HyperNetwork:
                fc1, fc2 = hyper._modules["fc1"], hyper._modules["fc2"]
                if type(fc1) is nn.Linear and type(fc2) is nn.Linear:
                    p1, p2 = fc1._parameters, fc2._parameters
                    return p1["weight"], p1["bias"], p2["weight"], p2["bias"]
        except KeyError:  # a parameter deleted or moved out of the dict (old-style weight_norm)
            pass
        fc1, fc2 = self.hyper.fc1, self.hyper.fc2
        return fc1.weight, fc1.bias, fc2.weight, fc2.bias

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return functional.shc_conv2d(
            x, weight, bias, *self._hyper_params(), self.stride, self.padding, self.dilation, self.groups,
            self._eps, self._grad_route, self._backend, padding_mode=self.padding_mode,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias)


def _normalize_kernel_sizes(kernel_sizes):
    if kernel_sizes is None:
        return None
    return {pair(tuple(k) if isinstance(k, list) else k, "kernel_sizes entry") for k in kernel_sizes}


# SHCConv2d's own keyword arguments: what convert passes on.
SHC_KWARGS = ("hidden", "eps", "grad_route", "backend")


def _check_shc_kwargs(shc_kwargs) -> None:
    unknown = sorted(set(shc_kwargs) - set(SHC_KWARGS))
    if unknown:
        raise TypeError(
            f"convert got unknown keyword argument(s) {unknown}; SHCConv2d takes {list(SHC_KWARGS)}"
        )
    if "grad_route" in shc_kwargs:
        check_grad_route(shc_kwargs["grad_route"])
    if "eps" in shc_kwargs:
        check_eps(shc_kwargs["eps"])
    if "backend" in shc_kwargs:
        backends.check_name(shc_kwargs["backend"])


def _refusal(name: str, conv: nn.Conv2d) -> str | None:
    """Why ``conv`` (at ``name``) cannot be converted without losing something, or None."""
    where = f"{name or 'the model'} ({type(conv).__name__})"
    if _lazy(conv):
        return f"{where} is a lazy conv whose shape is not known yet: run one forward pass before convert"
    if parametrize.is_parametrized(conv):
        names = ", ".join(conv.parametrizations.keys())
        return f"{where} has parametrizations on {names} (e.g. weight_norm): remove them before convert"
    hooks = [
        kind
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_state_dict_hooks", "_load_state_dict_pre_hooks", "_state_dict_pre_hooks",
                     "_load_state_dict_post_hooks")  # fmt: skip
        if getattr(conv, kind, None)
    ]
    if hooks:
        names = ", ".join(h.strip("_") for h in hooks)
        return f"{where} has hooks ({names}): remove them before convert, add them to the new layer after"
    return None


def _lazy(conv: nn.Conv2d) -> bool:
    return any(is_lazy(p) for p in conv.parameters(recurse=False))


def _own_forward(conv: nn.Conv2d) -> bool:
    """A subclass of nn.Conv2d that computes something else (timm's StdConv2d standardises its
    weight in forward): replacing it would silently change the model."""
    cls = type(conv)
    return cls.forward is not nn.Conv2d.forward or cls._conv_forward is not nn.Conv2d._conv_forward


def _to_shc(conv: nn.Conv2d, m0: float, shc_kwargs) -> SHCConv2d:
    new = SHCConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
        **shc_kwargs,
    )
    with torch.no_grad():
        # m starts at m0 everywhere whatever the input (fc2 = 0, bias = logit(m0)), and the
        # weight is divided by m0, so the converted layer computes what the plain one did.
        weight = conv.weight / m0
        if weight.device.type != "meta" and not bool(weight.isfinite().all()):
            raise ValueError(
                f"convert: dividing the {conv.weight.dtype} weight of a {tuple(conv.weight.shape)} conv by "
                f"m0 = {m0} overflows; convert in a wider dtype (model.float()) and cast back"
            )
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
        new.hyper.fc2.weight.zero_()
        new.hyper.fc2.bias.fill_(math.log(m0 / (1 - m0)))  # logit, without a tensor (meta-safe)
    new.weight.requires_grad_(conv.weight.requires_grad)
    if conv.bias is not None:
        new.bias.requires_grad_(conv.bias.requires_grad)
    new.train(conv.training)
    return new


def convert(model: nn.Module, kernel_sizes=((3, 3),), **shc_kwargs) -> nn.Module:
    """Replace, in place, every ``nn.Conv2d`` of ``model`` whose kernel size is in
    ``kernel_sizes`` (None: every size) with an output-preserving ``SHCConv2d``; return ``model``
    (or the new layer when ``model`` itself is such a conv). ``shc_kwargs`` go to SHCConv2d.

    A conv used at several places becomes one SHC layer used at all of them. Subclasses of
    nn.Conv2d with a forward of their own (weight standardisation...) are left as they are, with
    a warning; a lazy conv, a parametrized one (weight_norm) or one with hooks is refused with
    an error naming it, since converting would drop what it adds."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_shc_kwargs(shc_kwargs)
    sizes = _normalize_kernel_sizes(kernel_sizes)
    m0 = 0.5  # sigmoid(0): exact in every float format, so the division by it is exact too
    skipped = []

    def wanted(name, mod):
        if not isinstance(mod, nn.Conv2d) or isinstance(mod, SHCConv2d):
            return False
        if _own_forward(mod) and not (_lazy(mod) or parametrize.is_parametrized(mod)):
            skipped.append(f"{name or 'the model'} ({type(mod).__name__})")
            return False
        if not _lazy(mod) and sizes is not None and tuple(mod.kernel_size) not in sizes:
            return False
        why = _refusal(name, mod)
        if why:
            raise ValueError(f"convert: {why}")
        return True

    if wanted("", model):
        return _to_shc(model, m0, shc_kwargs)
    converted: dict[int, SHCConv2d] = {}
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for name, child in list(parent._modules.items()):  # named_children() hides a reused child
            if id(child) in converted:
                setattr(parent, name, converted[id(child)])
            elif wanted(f"{parent_name}.{name}".lstrip("."), child):
                converted[id(child)] = _to_shc(child, m0, shc_kwargs)
                setattr(parent, name, converted[id(child)])
    if skipped:
        warnings.warn(
            f"convert left {', '.join(sorted(set(skipped)))} as they are: subclasses of nn.Conv2d with a "
            "forward of their own would compute something else as SHC layers",
            stacklevel=2,
        )
    return model
