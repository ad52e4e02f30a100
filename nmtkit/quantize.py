"""int8 inference on CPU: dynamic quantisation of the linear layers.

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

import warnings

import torch
from torch import nn

from nmtkit.errors import NMTKitError

QUANTIZE_CHOICES = ("int8",)


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (on the CPU, in eval mode) with int8 dynamic linear layers."""
    if "fbgemm" not in torch.backends.quantized.supported_engines and \
            "x86" not in torch.backends.quantized.supported_engines:
        raise NMTKitError("--quantize int8 needs a PyTorch build with the fbgemm/x86 quantized "
                          f"engine (this one has {torch.backends.quantized.supported_engines})")
    with warnings.catch_warnings():
        # torch.ao.quantization still works, but warns that it will move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(
            model.cpu().eval(),
            {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8,
            inplace=False,
        )
