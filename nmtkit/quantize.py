"""The linear layers for inference on the CPU: fp32 weights prepacked for oneDNN, or int8.

`pack_linears` (what `Translator` does on the CPU by default) keeps each linear layer's fp32
weight also in oneDNN's blocked layout, so that every call runs oneDNN's matrix multiply on it
directly. The same multiplies through `F.linear` (Intel MKL in PyTorch's CPU builds) ran 10-40%
slower on the AMD EPYC machine the benchmarks come from (the output layer at batch 1: 3.6x).
The results are the same fp32 products, summed in another order.

`quantize_int8` runs the multiplies in int8 instead (its BLEU cost is measured in the README):

Every nn.Linear is replaced by one that stores its weight in int8, with one scale per output
row (per-channel: rows of very different size, as in the output layer, keep their precision),
and quantises its input on the fly, per call. The matrix multiplies then run in int8 (fbgemm
on x86), which on CPU is where decoding spends most of its time: the feed-forward layers, the
attention projections and the output layer. Embeddings, layer norms, softmax and the search
itself stay in fp32.

A tied output layer (model.tie_output) gets its own int8 copy of the embedding matrix, while
the embedding lookup keeps the fp32 original: the tie only matters for training, and the
output layer, one (d_model x vocab) multiply per step, is among the largest matrices there are.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtkit.errors import NMTKitError

QUANTIZE_CHOICES = ("int8",)


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (on the CPU, in eval mode) with int8 dynamic linear layers; packed
    ones (PackedLinear) are quantized too."""
    if "fbgemm" not in torch.backends.quantized.supported_engines and \
            "x86" not in torch.backends.quantized.supported_engines:
        raise NMTKitError("--quantize int8 needs a PyTorch build with the fbgemm/x86 quantized "
                          f"engine (this one has {torch.backends.quantized.supported_engines})")
    with warnings.catch_warnings():
        # torch.ao.quantization still works, but warns that it will move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model = copy.deepcopy(model).cpu().eval()
        _replace(model, lambda m: m.unpacked() if isinstance(m, PackedLinear) else None)
        return torch.ao.quantization.quantize_dynamic(
            model,
            {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8,
            inplace=True,
        )


class PackedLinear(nn.Module):
    """An nn.Linear (the very same weight and bias parameters) that also holds its weight
    prepacked for oneDNN. Without autograd or autocast, on the CPU in fp32, it multiplies with
    the packed copy; anything else goes through F.linear. A weight changed since packing (an
    optimizer step, a move to another device and back) is packed again before use, but a
    change made through `.data` (or to an inference-mode tensor) leaves no trace: call
    `repack()` after one. Copies and pickles leave the packed copy out and pack afresh."""

    packed: Tensor | None  # the weight in oneDNN's layout (None: off the CPU or not fp32)
    packed_key: tuple[int, int]  # the weight's storage and version when packed

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # shared: ties and state_dict keys stay
        self.repack()

    def _weight_key(self) -> tuple[int, int]:
        # an inference-mode tensor keeps no version count (and cannot change outside that mode)
        version = -1 if self.weight.is_inference() else self.weight._version
        return self.weight.data_ptr(), version

    def repack(self) -> None:
        self.packed_key = self._weight_key()
        weight = self.weight.detach()
        usable = weight.is_cpu and weight.dtype == torch.float32
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None) if usable else None

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or not x.is_cpu or x.dtype != torch.float32 or \
                torch.is_autocast_enabled("cpu"):
            return F.linear(x, self.weight, self.bias)
        if self._weight_key() != self.packed_key:
            self.repack()
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("packed")  # oneDNN's blocked tensor has no storage to copy or pickle
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.repack()

    def unpacked(self) -> nn.Linear:
        """A plain nn.Linear with the same parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, oneDNN-packed")


def can_pack() -> bool:
    """Whether this PyTorch build has the oneDNN operators pack_linears uses."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        layer = PackedLinear(nn.Linear(4, 2))
        with torch.no_grad():
            return torch.allclose(layer(torch.ones(1, 4)), F.linear(torch.ones(1, 4), layer.weight,
                                                                    layer.bias), atol=1e-5)
    except (RuntimeError, AttributeError):  # an op missing from this build
        return False


def pack_linears(model: nn.Module) -> int:
    """Replace, in place, every fp32 nn.Linear of a CPU model by a PackedLinear that shares its
    parameters. Returns how many were replaced: 0 where oneDNN is missing (nothing changes)."""
    if not can_pack():
        return 0

    def packed(module: nn.Module) -> PackedLinear | None:
        plain = type(module) is nn.Linear
        if plain and module.weight.is_cpu and module.weight.dtype == torch.float32:
            return PackedLinear(module)
        return None

    return _replace(model, packed)


def _replace(model: nn.Module, convert: Callable[[nn.Module], nn.Module | None]) -> int:
    """Swap, in place, every submodule for which convert returns a module; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = convert(child)
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    return replaced
