import pytest
import torch

from nmtkit.attention import RNNAttention

# run again under the AVX2 settings by `make test` (pyproject.toml: markers)
pytestmark = pytest.mark.avx2


@pytest.mark.parametrize("kind", ["dot", "general", "concat"])
@pytest.mark.parametrize("memory_size", [8, 16])
def test_shapes_and_padding_gets_zero_weight(kind: str, memory_size: int) -> None:
    torch.manual_seed(0)
    att = RNNAttention(kind, query_size=8, memory_size=memory_size)
    memory = torch.randn(3, 5, memory_size)  # (batch, src_len, memory)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    query = torch.randn(3, 4, 8)  # (batch, tgt_len, query)
    context, weights = att(query, att.keys(memory), memory, mask)
    assert context.shape == (3, 4, memory_size)
    assert weights.shape == (3, 4, 5)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4))
    assert torch.equal(weights[1, :, 3:], torch.zeros(4, 2))  # exactly zero, not just small
    assert torch.equal(weights[2, :, 1:], torch.zeros(4, 4))
    assert torch.allclose(weights[2, :, 0], torch.ones(4))
    # the context vector is the attention-weighted sum of the memory
    assert torch.allclose(context, torch.bmm(weights, memory), atol=1e-6)


def test_padding_values_do_not_leak_into_context() -> None:
    torch.manual_seed(0)
    att = RNNAttention("general", 8, 8)
    memory = torch.randn(1, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    query = torch.randn(1, 2, 8)
    c1, _ = att(query, att.keys(memory), memory, mask)
    memory2 = memory.clone()
    memory2[:, 2:] = 1000.0
    c2, _ = att(query, att.keys(memory2), memory2, mask)
    assert torch.allclose(c1, c2)


def test_dot_attention_is_plain_dot_product() -> None:
    att = RNNAttention("dot", 4, 4)
    memory = torch.eye(4).unsqueeze(0)  # source states are the unit vectors
    query = torch.tensor([[[0.0, 0.0, 10.0, 0.0]]])
    _, weights = att(query, att.keys(memory), memory, torch.ones(1, 4, dtype=torch.bool))
    assert weights.argmax().item() == 2
    assert weights[0, 0, 2] > 0.99
