"""The pruning rules of `vtc.prune` against plain, independent implementations (numpy and Python loops) of the
official rules on random features, and the budget arithmetic against brute force."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vtc import PruneConfig
from vtc import prune as rules


def features(seed: int, n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- DivPrune
def divprune_oracle(x: np.ndarray, m: int) -> list[int]:
    """DivPrune as `rules.md` writes the official code: D = 1 - cos; the first pick maximises the second-smallest
    entry of its column; each next pick maximises the distance to the nearest pick (picked tokens skipped)."""
    x = x.astype(np.float64)
    normed = x / np.linalg.norm(x, axis=1, keepdims=True)
    distance = 1.0 - normed @ normed.T
    n = len(x)
    score = [sorted(distance[:, j])[1] for j in range(n)]
    picked = [max(range(n), key=lambda j: (score[j], -j))]  # the first of equal maxima
    while len(picked) < m:
        rest = [j for j in range(n) if j not in picked]
        nearest = {j: min(distance[s, j] for s in picked) for j in rest}
        picked.append(max(rest, key=lambda j: (nearest[j], -j)))
    return sorted(picked)


@given(st.integers(0, 10_000), st.integers(2, 40), st.integers(2, 12), st.data())
def test_divprune_equals_the_official_rule(seed, n, d, data):
    m = data.draw(st.integers(1, n))
    x = features(seed, n, d)
    assert rules.divprune_selection(x, m).tolist() == divprune_oracle(x.numpy(), m)


def test_divprune_keeps_distinct_tokens_where_the_official_code_would_repeat_one():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # two duplicated pairs
    assert rules.divprune_selection(x, 4).tolist() == [0, 1, 2, 3]
    assert rules.divprune_selection(x, 1).shape == (1,)


# ---------------------------------------------------------------------------------------------------- VisionZip
def visionzip_oracle(scores, keys, hidden, dominant, contextual):
    """VisionZip as `rules.md` writes `clip_encoder.py` lines 50-83, on one item without its CLS token: the top
    `dominant` scores (the lower index first on ties) in ascending order; targets every `step`-th remaining token;
    each other remaining token merged into its most cosine-similar target (the first on ties); contextual token =
    target + mean of its assigned tokens. Returns (dominant indices, target indices, contextual rows)."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    top = sorted(order[:dominant])
    remaining = [i for i in range(n) if i not in top]
    if contextual == 0:
        return top, [], np.zeros((0, hidden.shape[1]))
    step = max(1, len(remaining) // contextual)
    targets = [remaining[p] for p in range(0, len(remaining), step)][:contextual]
    unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    assigned = {t: [] for t in targets}
    for i in remaining:
        if i in targets:
            continue
        similarity = [float(unit[i] @ unit[t]) for t in targets]
        assigned[targets[similarity.index(max(similarity))]].append(i)
    rows = [hidden[t] + (np.mean(hidden[assigned[t]], axis=0) if assigned[t] else 0.0) for t in targets]
    return top, targets, np.array(rows)


@given(st.integers(0, 10_000), st.integers(2, 48), st.data())
def test_visionzip_equals_the_official_rule(seed, n, data):
    count = data.draw(st.integers(1, n))
    dominant, contextual = rules.visionzip_counts(count, n)
    gen = torch.Generator().manual_seed(seed)
    scores, keys, hidden = torch.rand(n, generator=gen), torch.randn(n, 6, generator=gen), torch.randn(n, 5, generator=gen)
    selection = rules.visionzip_selection(scores, keys, dominant, contextual)
    top, targets, rows = visionzip_oracle(scores.numpy(), keys.numpy().astype(np.float64),
                                          hidden.numpy().astype(np.float64), dominant, contextual)
    assert selection.dominant.tolist() == top and selection.targets.tolist() == targets
    assert len(top) + len(targets) == count
    np.testing.assert_allclose(rules.merge_contextual(hidden, selection).numpy(), rows.reshape(-1, 5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("count", "expected"), [(64, (54, 10)), (128, (108, 20)), (192, (162, 30)), (576, (576, 0)),
                                                 (570, (564, 6)), (1, (1, 0)), (4, (3, 1))])
def test_visionzip_keeps_the_released_proportion_and_everything_at_the_native_count(count, expected):
    assert rules.visionzip_counts(count, 576) == expected


def test_visionzip_ties_go_to_the_lower_index():
    selection = rules.visionzip_selection(torch.ones(6), torch.randn(6, 3), 2, 1)
    assert selection.dominant.tolist() == [0, 1] and selection.targets.tolist() == [2]


def attention_oracle(q, k, heads, scale, cls):
    """Eager attention probabilities with explicit softmaxes, per item and head."""
    b, t, width = k.shape
    hd = width // heads
    out = []
    for item in range(b):
        total = np.zeros(t)
        for h in range(heads):
            qh, kh = q[item, :, h * hd:(h + 1) * hd], k[item, :, h * hd:(h + 1) * hd]
            logits = qh @ kh.T * scale
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            total += probs[0] if cls else probs.mean(axis=0) / heads
        out.append(total[1:] if cls else total)
    return np.array(out)


@pytest.mark.parametrize("cls", [True, False])
def test_the_attention_row_is_the_softmax_of_the_layer_queries_and_keys(cls):
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 10, 8, generator=gen), torch.randn(2, 10, 8, generator=gen)
    got = rules.attention_received(q, k, num_heads=2, scale=0.5, cls=cls)
    expected = attention_oracle(q.double().numpy(), k.double().numpy(), 2, 0.5, cls)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_window_reduce_sums_and_averages_each_row_major_block():
    values = torch.arange(2 * 4 * 6, dtype=torch.float).reshape(2, 24)  # two items on a 4x6 patch grid
    summed = rules.window_reduce(values, (4, 6), (2, 2), "sum")
    grid = values.reshape(2, 4, 6)
    expected = [[float(grid[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2].sum()) for i in range(2) for j in range(3)]
                for b in range(2)]
    assert summed.tolist() == expected
    assert torch.equal(rules.window_reduce(values[..., None], (4, 6), (2, 2), "mean")[..., 0], summed / 4)
    assert rules.window_reduce(values, (4, 6), (1, 1), "sum") is values


# ---------------------------------------------------------------------------------------------------- random
@given(st.integers(1, 300), st.integers(0, 2**63 - 1), st.data())
def test_random_draws_distinct_sorted_indices_that_depend_only_on_the_seed(n, seed, data):
    count = data.draw(st.integers(1, n))
    selection = rules.random_selection(n, count, seed)
    assert selection.tolist() == sorted(set(selection.tolist())) and len(selection) == count
    assert 0 <= int(selection[0]) and int(selection[-1]) < n
    assert torch.equal(selection, rules.random_selection(n, count, seed))


def test_random_is_uniform_and_another_seed_draws_another_set():
    hits = torch.zeros(20)
    for seed in range(2000):
        hits[rules.random_selection(20, 5, seed)] += 1
    assert (hits / 2000 - 0.25).abs().max() < 0.04  # each token kept about 5/20 of the time
    assert not torch.equal(rules.random_selection(64, 8, 0), rules.random_selection(64, 8, 1))


# ---------------------------------------------------------------------------------------------------- pool
def pool_grid_oracle(grid, target):
    h, w = grid
    shapes = [(oh, ow) for oh in range(1, h + 1) for ow in range(1, w + 1)]

    def distortion(oh, ow):
        r = Fraction(oh * w, ow * h)
        return max(r, 1 / r)

    return min(shapes, key=lambda s: (abs(s[0] * s[1] - target), distortion(*s), s[0]))


@given(st.integers(1, 24), st.integers(1, 24), st.data())
def test_pool_grid_is_the_closest_count_then_the_closest_aspect(h, w, data):
    target = data.draw(st.integers(1, h * w))
    assert rules.pool_grid((h, w), target) == pool_grid_oracle((h, w), target)


def test_pool_grid_examples():
    assert rules.pool_grid((24, 24), 576) == (24, 24)
    assert rules.pool_grid((24, 24), 64) == (8, 8)
    assert rules.pool_grid((24, 24), 144) == (12, 12)
    assert rules.pool_grid((24, 24), 192) == (12, 16)  # 12x16 and 16x12 distort alike: fewer rows
    assert rules.pool_grid((16, 32), 128) == (8, 16)


def adaptive_pool_oracle(x, out):
    h, w, d = x.shape
    oh, ow = out
    result = np.zeros((oh, ow, d))
    for i in range(oh):
        for j in range(ow):
            r0, r1 = math.floor(i * h / oh), math.ceil((i + 1) * h / oh)
            c0, c1 = math.floor(j * w / ow), math.ceil((j + 1) * w / ow)
            result[i, j] = x[r0:r1, c0:c1].mean(axis=(0, 1))
    return result


@given(st.integers(1, 9), st.integers(1, 9), st.data())
def test_pool_tokens_average_the_adaptive_windows(h, w, data):
    out = (data.draw(st.integers(1, h)), data.draw(st.integers(1, w)))
    x = torch.randn(h, w, 3, generator=torch.Generator().manual_seed(h * 10 + w))
    np.testing.assert_allclose(rules.pool_tokens(x, out).numpy(), adaptive_pool_oracle(x.double().numpy(), out),
                               rtol=1e-5, atol=1e-6)


def test_pool_tokens_at_the_native_grid_are_the_tokens():
    x = torch.randn(4, 5, 3)
    assert rules.pool_tokens(x, (4, 5)) is x


# ---------------------------------------------------------------------------------------------------- budget
@pytest.mark.parametrize(("method", "keep", "length", "grid"), [
    ("random", 10, 10, None), ("divprune", 0.1, 58, None), ("visionzip", 0.25, 144, None),
    ("pool", 64, 64, (8, 8)), ("pool", 0.5, 288, (16, 18)), ("downsample", 0.5, 576, (24, 24)),
])
def test_item_template_is_the_kept_count_or_the_pooled_grid(method, keep, length, grid):
    config = PruneConfig(method=method, keep=keep)
    (span,) = rules.item_template(config, (24, 24))
    assert (span.start, span.length, span.grid) == (0, length, grid)
    assert rules.item_token_count(config, (24, 24)) == length


@pytest.mark.parametrize(("keep", "native", "count"), [(0.1, 30, 3), (0.1, 31, 4), (0.25, 16, 4), (0.3, 16, 5),
                                                      (0.001, 16, 1), (7, 576, 7)])
def test_a_fraction_is_rounded_up_as_written(keep, native, count):
    assert PruneConfig(method="random", keep=keep).kept_count(native) == count
