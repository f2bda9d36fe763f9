"""SHCConv2d, a drop-in nn.Conv2d whose kernel is modulated per sample, and ``convert``."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.fx import Proxy
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from . import backends, functional, ops
from ._checks import check_eps, check_grad_route, conv_padding, pair

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
        self.register_state_dict_post_hook(_mark_state_dict)

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

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # fmt: skip
        """A plain nn.Conv2d's checkpoint (a weight, no ``hyper.*`` keys) loaded into this layer
        gives the layer that computes what that conv computes, in either order of convert and
        load: where the map is constant (``hyper.fc2.weight == 0``, as convert and the models
        start it) the weight is divided by that map, as convert does. With a map that varies
        with the input no weight does that: an error says to load before converting.

        A state_dict an SHCConv2d wrote is never rescaled, also with its ``hyper.*`` keys left
        out (a partial load): the layer marks its entry of the state_dict's metadata
        (``state_dict._metadata``, which torch.save keeps, as does deleting keys). A weight
        without ``hyper.*`` keys and without that mark (a plain conv's, or a dict rebuilt key by
        key, which drops the metadata) counts as a plain conv's."""
        key = prefix + "weight"
        plain = (key in state_dict and not any(k.startswith(prefix + "hyper.") for k in state_dict)
                 and local_metadata.get(_SHC_MARK) != 1)  # fmt: skip
        if plain and isinstance(state_dict[key], torch.Tensor) and state_dict[key].shape == self.weight.shape:
            try:
                state_dict[key] = _weight_for_plain_conv(self, state_dict[key])
            except ValueError as exc:
                error_msgs.append(f"While loading {key!r}: {exc}")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)  # fmt: skip

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
        if torch.jit.is_scripting():
            return self._scripted_forward(x)
        else:
            if type(x) is not torch.Tensor and isinstance(x, Proxy):
                path = x.tracer.path_of_module(self)
                if path:  # torch.fx: the layer inside a traced model is one call_module node
                    return x.tracer.create_proxy("call_module", path, (x,), {})
                # The traced root itself: one call_function node of functional.shc_conv2d below.
            return self._conv_forward(x, self.weight, self.bias)

    # ------------------------------------------------------------ TorchScript

    # What torch.jit.script compiles: the compiled op of x's device (csrc/), never the Python
    # planning above (__prepare_scriptable__ says where that cannot be honoured).
    __jit_unused_properties__ = ["grad_route", "backend", "eps"]

    def __prepare_scriptable__(self):
        """Called by torch.jit.script: refuse, with what to use instead, where the scripted layer
        (the op shc::shc_conv2d on x's device) would not compute what this layer computes."""
        why = ops.LOAD_ERROR
        if why is None and self._backend in ("reference", "triton"):
            why = f"this layer has backend={self._backend!r}, which TorchScript cannot run"
        env = backends.env_backend()  # an unknown value is an error naming the variable, as in eager calls
        if why is None and self._backend == "auto" and env in ("reference", "triton"):
            why = f"SHC_BACKEND={env!r} asks for a backend TorchScript cannot run"
        if why is not None:
            raise RuntimeError(
                "torch.jit.script runs SHCConv2d as the compiled op shc::shc_conv2d (backends 'cpu' and "
                f"'cuda'), but {why}; use torch.jit.trace, torch.compile or torch.export instead "
                "(docs/workflows.md)"
            )
        padding, explicit = conv_padding(
            self.padding, self.padding_mode, self.weight, self.stride, self.dilation
        )
        self._script_padding = list(padding)
        self._script_split = explicit is not None  # lists stay non-empty: TorchScript infers their type
        self._script_pre_pad = [0, 0, 0, 0] if explicit is None else list(explicit)
        return self

    def _scripted_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer in TorchScript: shc::shc_conv2d (one op), or, where the input is padded
        beforehand (padding_mode other than zeros, "same" with an even kernel), the map from the
        unpadded input and shc::modulated_conv2d on the padded one (functional.shc_conv2d's
        "split" route)."""
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        fc1, fc2 = self.hyper.fc1, self.hyper.fc2
        stride = [self.stride[0], self.stride[1]]
        dilation = [self.dilation[0], self.dilation[1]]
        weight = self.weight.contiguous()
        if not self._script_split:
            y = torch.ops.shc.shc_conv2d(
                x, weight, self.bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias, stride,
                self._script_padding, dilation, self.groups, self._eps, self._grad_route,
            )[0]  # fmt: skip
        else:
            x_stats = x.detach() if self._grad_route == "conv" else x
            x_conv = x.detach() if self._grad_route == "hyper" else x
            mu, sigma = torch.ops.shc.channel_stats(x_stats, self._eps)
            dt = mu.dtype
            z = torch.cat([mu, sigma], dim=1)
            b1 = None if fc1.bias is None else fc1.bias.to(dt)
            b2 = None if fc2.bias is None else fc2.bias.to(dt)
            h = torch.relu(torch.nn.functional.linear(z, fc1.weight.to(dt), b1))
            logits = torch.nn.functional.linear(h, fc2.weight.to(dt), b2)
            m = torch.sigmoid(logits).view(x.shape[0], self.weight.shape[2], self.weight.shape[3])
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x_conv = torch.nn.functional.pad(x_conv, self._script_pre_pad, mode=mode).contiguous()
            y = torch.ops.shc.modulated_conv2d(
                x_conv, weight, m, self.bias, stride, [0, 0], dilation, self.groups
            )
        return y.squeeze(0) if unbatched else y


# The key an SHCConv2d adds to its entry of a state_dict's metadata: "an SHC layer wrote this
# weight" (SHCConv2d._load_from_state_dict never rescales such a weight as a plain conv's).
_SHC_MARK = "shc_layer"


def _mark_state_dict(module, state_dict, prefix, local_metadata) -> None:
    local_metadata[_SHC_MARK] = 1


def _weight_for_plain_conv(layer: SHCConv2d, weight: torch.Tensor) -> torch.Tensor:
    """The weight with which ``layer`` computes what a plain conv with ``weight`` computes: the
    weight divided, tap by tap, by the layer's constant map m = sigmoid(hyper.fc2.bias)."""
    fc2 = layer.hyper.fc2
    if type(fc2) is not nn.Linear or fc2.weight.device.type == "meta":
        raise ValueError(
            "this is a plain nn.Conv2d's checkpoint (no hyper.* keys), and the layer's map cannot be read "
            "here; load the checkpoint into the plain model before shc.convert"
        )
    if bool(fc2.weight.detach().ne(0).any()):
        raise ValueError(
            "this is a plain nn.Conv2d's checkpoint (no hyper.* keys), but the SHCConv2d's map varies with "
            "the input (hyper.fc2.weight != 0), so no weight makes it compute what the plain conv did; load "
            "the checkpoint into the plain model first, then call shc.convert (or start from a freshly "
            "converted model)"
        )
    kh, kw = layer.kernel_size
    logits = fc2.bias.detach() if fc2.bias is not None else torch.zeros(kh * kw, device=fc2.weight.device)
    m = torch.sigmoid(logits.double()).to(weight.device).view(1, 1, kh, kw)
    scaled = (weight.detach().double() / m).to(weight.dtype)
    if weight.device.type != "meta" and not bool(scaled.isfinite().all()):
        raise ValueError(
            f"dividing the {weight.dtype} checkpoint weight by the layer's map overflows; load it in a wider "
            "dtype (model.float()) and cast back"
        )
    return scaled


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


def _counts(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _convert_summary(model, n_converted, sizes, other_sizes, own_forward) -> str:
    """convert's one line: what it converted, what it left and why (counts by reason)."""
    wanted = "any size" if sizes is None else " or ".join(sorted("×".join(map(str, k)) for k in sizes))
    left = []
    if other_sizes:
        left.append(f"{sum(other_sizes.values())} of other kernel sizes ({_counts(other_sizes)})")
    if own_forward:
        left.append(
            f"{sum(own_forward.values())} subclasses with a forward of their own ({_counts(own_forward)}), "
            "which would compute something else as SHC layers"
        )
    if n_converted == 0:
        already = len({id(m) for m in model.modules() if isinstance(m, SHCConv2d)})
        why = [f"{already} SHCConv2d there already"] if already else []
        why += ["left " + "; ".join(left)] if left else []
        return (f"shc.convert converted nothing in {type(model).__name__} ({wanted}): "
                + ("; ".join(why) or "it has no nn.Conv2d"))  # fmt: skip
    return f"shc.convert converted {n_converted} nn.Conv2d ({wanted}) to SHCConv2d; left " + "; ".join(left)


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
    nn.Conv2d with a forward of their own (weight standardisation...) are left as they are. When
    nothing was converted, or such a subclass was left, one warning line says what was converted
    and what was left, counted by reason. A lazy conv, a parametrized one (weight_norm) or one
    with hooks is refused with an error naming it, since converting would drop what it adds."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_shc_kwargs(shc_kwargs)
    sizes = _normalize_kernel_sizes(kernel_sizes)
    m0 = 0.5  # sigmoid(0): exact in every float format, so the division by it is exact too
    other_sizes: dict[str, int] = {}  # "1×1" -> how many convs of that size were not candidates
    own_forward: dict[str, int] = {}  # class name -> how many were left for their own forward

    def wanted(name, mod):
        if not isinstance(mod, nn.Conv2d) or isinstance(mod, SHCConv2d):
            return False
        if not _lazy(mod) and sizes is not None and tuple(mod.kernel_size) not in sizes:
            size = "×".join(map(str, mod.kernel_size))
            other_sizes[size] = other_sizes.get(size, 0) + 1
            return False
        if _own_forward(mod) and not (_lazy(mod) or parametrize.is_parametrized(mod)):
            own_forward[type(mod).__name__] = own_forward.get(type(mod).__name__, 0) + 1
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
    if not converted or own_forward:
        warnings.warn(_convert_summary(model, len(converted), sizes, other_sizes, own_forward), stacklevel=2)
    return model
