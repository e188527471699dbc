"""The gradient check every differentiable op is held to, and hypothesis strategies for its inputs.

check_grad(f, *arrays) compares the analytic gradient with a central finite difference along a
random direction u (HIPS autograd's trick: two extra evaluations per input, whatever its size):

    <u, dL/dx>  vs  (L(x + eps u) - L(x - eps u)) / (2 eps),   L(x) = sum(f(x) * w), w random

in float64. Tolerance: |num - ana| <= RTOL * |ana| + ATOL_REL * sum|f(x) * w|. With eps = 1e-6 the
truncation error is O(eps^2) ~ 1e-12 and the round-off O(1e-16 / eps) ~ 1e-10 of the scale
sum|f * w|, so RTOL = 1e-6 with an absolute floor of 1e-8 of that scale (100x above round-off)
is tight: a wrong gradient misses by orders of magnitude more. (1e-12 more, absolute, for an
output that is exactly zero.) An op with large third derivatives may pass a smaller `eps`.
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygpt import Tensor, no_grad

EPS, RTOL, ATOL_REL = 1e-6, 1e-6, 1e-8


def check_grad(f, *arrays, wrt=None, seed=0, eps=EPS, terms=None):
    """Assert that f's analytic gradient wrt each float array in `arrays` (or the indices in
    `wrt`) matches the finite difference. f takes Tensors and returns a Tensor.

    `terms` (out's shape): the size of the numbers each output is a sum of, for an op whose
    output can cancel to near zero (layer norm's xhat * w + b): the round-off of L comes from
    those, not from the small result, so they set the scale instead of |f(x)|."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    wrt = range(len(arrays)) if wrt is None else wrt
    tensors = [Tensor(a, requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
    out = f(*tensors)
    w = rng.standard_normal(out.shape)
    (out * w).sum().backward()
    scale = float(np.abs((out.data if terms is None else terms) * w).sum())

    def L(i, delta, u):
        args = [Tensor(a + delta * u) if j == i else Tensor(a) for j, a in enumerate(arrays)]
        with no_grad():
            return float((f(*args).data * w).sum())

    for i in wrt:
        g = tensors[i].grad
        assert g is not None, f"input {i} got no gradient"
        assert g.shape == arrays[i].shape and g.dtype == np.float64, (g.shape, g.dtype)
        u = rng.standard_normal(arrays[i].shape)
        num = (L(i, eps, u) - L(i, -eps, u)) / (2 * eps)
        ana = float((g * u).sum())
        assert abs(num - ana) <= RTOL * abs(ana) + ATOL_REL * scale + 1e-12, \
            f"input {i}: analytic {ana!r} vs numeric {num!r} (scale {scale:.3g})"


def floats(lo=-3.0, hi=3.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)


def arrays(shape, lo=-3.0, hi=3.0):
    return hnp.arrays(np.float64, shape, elements=floats(lo, hi))


shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4)
nonscalar_shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4)
broadcast_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4)
