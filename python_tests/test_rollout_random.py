"""The rollout's shared randomness: Philox4x32-10 (C++ and the PyTorch twin, against the Random123 known-answer
vectors), the uniforms of (row, step, stream), and the inverse-CDF sampler with its float32 running sum."""
import math

import numpy as np
import pytest
import torch

from dreamer_ext import _C
from dreamer_ext.ops import reference as R

# Random123's known-answer vectors for philox4x32_10: (counter, key) -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,want", KAT)
def test_philox_known_answers(counter, key, want):
    assert tuple(_C.philox4x32_10(list(counter), list(key))) == want
    assert tuple(int(w) for w in R.philox4x32_10(list(counter), key)) == want


@pytest.mark.parametrize("seed", [0, 1, 0x0123456789ABCDEF, 2**64 - 1])
@pytest.mark.parametrize("steps,rows,count,stream,step0,row0",
                         [(1, 1, 1, 0, 0, 0), (3, 7, 5, 1, 2, 0), (2, 33, 32, 0, 14, 0), (2, 5, 6, 2, 1, 2**32 - 5)])
def test_uniforms_are_the_same_in_cpp_and_pytorch(seed, steps, rows, count, stream, step0, row0):
    ref = R.philox_uniform(seed, steps, rows, count, stream, step0, row0)
    out = torch.full((steps, rows, count), -1.0)
    _C.philox_uniform(seed, steps, rows, count, stream, step0, out.data_ptr(), row0)
    assert torch.equal(ref, out)
    assert ref.min() >= 0 and ref.max() < 1


def test_row0_shifts_the_rows():
    whole = R.philox_uniform(5, 2, 10, 3, 0)
    assert torch.equal(R.philox_uniform(5, 2, 4, 3, 0, row0=6), whole[:, 6:])
    with pytest.raises(ValueError, match="row0"):
        _C.philox_uniform(5, 1, 6, 1, 0, 0, torch.empty(6).data_ptr(), 2**32 - 5)


def test_uniforms_depend_on_every_counter_word_and_the_seed():
    base = R.philox_uniform(7, 2, 4, 8, 0)
    assert not torch.equal(base, R.philox_uniform(8, 2, 4, 8, 0))            # seed
    assert not torch.equal(base, R.philox_uniform(7, 2, 4, 8, 1))            # stream
    assert not torch.equal(base[1], R.philox_uniform(7, 1, 4, 8, 0, step0=2)[0])  # step
    assert not torch.equal(base[:, 0], base[:, 1])                           # row
    assert not torch.equal(base[..., :4], base[..., 4:])                     # block of 4
    # a step's uniforms do not depend on how many steps or rows were asked for
    assert torch.equal(base[1, :2], R.philox_uniform(7, 1, 2, 8, 0, step0=1)[0])


def test_uniforms_are_uniform():
    u = R.philox_uniform(3, 4, 1000, 32, 0).reshape(-1).double().numpy()    # 128k draws
    hist = np.histogram(u, bins=16, range=(0, 1))[0]
    expected = len(u) / 16
    chi2 = ((hist - expected) ** 2 / expected).sum()
    assert chi2 < 37.7  # chi-square, 15 dof: p = 0.001
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / len(u))


def _draw(probs, u):
    out = torch.empty(u.numel(), dtype=torch.int64)
    p = probs.reshape(-1, probs.shape[-1]).contiguous().float()
    _C.sample_index(p.data_ptr(), u.reshape(-1).contiguous().data_ptr(), out.data_ptr(), u.numel(), probs.shape[-1])
    return out.reshape(u.shape)


def test_sampler_by_hand():
    p = torch.tensor([[0.25, 0.25, 0.5]] * 6)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.4999, 0.5, 0.9999999])
    want = torch.tensor([0, 0, 1, 1, 2, 2])   # the running sum must exceed u: 0.25 <= 0.25 moves on
    assert torch.equal(R.sample_index(p, u), want) and torch.equal(_draw(p, u), want)
    # rounding can leave the last running sum below u: the last class, never K
    q = torch.tensor([[0.1] * 10])
    assert int(R.sample_index(q, torch.tensor([0.99999994]))) == int(_draw(q, torch.tensor([0.99999994]))) == 9
    # a NaN probability: the draw stops at the first running sum that is not <= u, in both
    nan = torch.tensor([[0.2, float("nan"), 0.8]])
    assert int(R.sample_index(nan, torch.tensor([0.5]))) == int(_draw(nan, torch.tensor([0.5]))) == 1


@pytest.mark.parametrize("K", [2, 5, 16, 17, 64])
def test_sampler_matches_the_pytorch_twin_and_its_frequencies(K):
    g = torch.Generator().manual_seed(K)
    probs = torch.softmax(torch.randn(4096, K, generator=g) * 2, -1)
    u = R.philox_uniform(K, 1, 4096, 1, 0)[0, :, 0]
    a, b = R.sample_index(probs, u), _draw(probs, u)
    assert torch.equal(a, b)
    # frequencies: one distribution repeated, chi-square against it
    p = probs[0]
    u = R.philox_uniform(99, 1, 20000, 1, 0)[0, :, 0]
    counts = torch.bincount(_draw(p.expand(20000, K), u), minlength=K).double()
    expected = p.double() * 20000
    keep = expected > 5
    chi2 = (((counts - expected) ** 2 / expected)[keep]).sum().item()
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 4 * math.sqrt(2 * dof) + 10, (chi2, dof)
