"""ms_optim.clipping against torch.nn.utils.clip_grad_norm_ / clip_grad_value_ (CPU tensors).

The reference is torch's own function run on the same values; float64 must
agree to 1e-9 relative (it agrees bit for bit in practice: same formula, same
coefficient arithmetic), lower precisions to their rounding.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ms_optim.clipping import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm
from tests.conftest import to_numpy, to_xp

torch = pytest.importorskip("torch")

SOAK = os.environ.get("MS_OPTIM_SOAK") == "1"
EXAMPLES = 2000 if SOAK else 60

NORMS = [2.0, 1.0, math.inf, -math.inf, 0.0, 0.5, 3.0, -1.5, "inf"]
SHAPES = [(3, 4), (7,), (2, 2, 2), ()]


def _grads(seed, dtype=np.float64, shapes=SHAPES, scale=1.0):
    rng = np.random.default_rng(seed)
    return [np.asarray(scale * rng.standard_normal(s)).astype(dtype) for s in shapes]


def torch_clip(arrays, max_norm, norm_type=2.0, **kw):
    """torch's clip_grad_norm_ on parameters whose .grad are copies of ``arrays`` (None: no grad)."""
    params = []
    for a in arrays:
        t = torch.zeros(1) if a is None else torch.from_numpy(np.array(a))
        p = torch.nn.Parameter(torch.zeros_like(t))
        p.grad = None if a is None else t
        params.append(p)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, **kw)
    return norm, [None if p.grad is None else p.grad.numpy() for p in params]


def torch_clip_value(arrays, clip_value):
    params = []
    for a in arrays:
        p = torch.nn.Parameter(torch.zeros_like(torch.from_numpy(np.array(a))))
        p.grad = torch.from_numpy(np.array(a))
        params.append(p)
    torch.nn.utils.clip_grad_value_(params, clip_value)
    return [p.grad.numpy() for p in params]


@pytest.mark.parametrize("norm_type", NORMS, ids=str)
@pytest.mark.parametrize("max_norm", [0.1, 1e3], ids=["clips", "no-clip"])
def test_float64_matches_torch(xp, norm_type, max_norm):
    arrays = _grads(0)
    arrays.insert(1, None)
    grads = [None if a is None else to_xp(xp, a.copy()) for a in arrays]
    norm = clip_grad_norm_(grads, max_norm, norm_type)
    tnorm, tgrads = torch_clip(arrays, max_norm, norm_type)
    assert norm.shape == () and not isinstance(norm, float)
    assert type(norm) is type(grads[0])  # the gradients' namespace, not a host float
    np.testing.assert_allclose(to_numpy(norm), tnorm.item(), rtol=1e-9, atol=0)
    for g, tg in zip(grads, tgrads):
        if g is None:
            assert tg is None
        else:
            np.testing.assert_allclose(to_numpy(g), tg, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("norm_type", NORMS, ids=str)
def test_lower_precision_matches_torch(dtype, norm_type):
    arrays = _grads(1, np.dtype(dtype))
    grads = [a.copy() for a in arrays]
    norm = clip_grad_norm_(grads, 0.3, norm_type)
    tnorm, tgrads = torch_clip(arrays, 0.3, norm_type)
    assert norm.dtype == tnorm.numpy().dtype
    rtol = 4 * float(np.finfo(dtype).eps)  # orders of summation differ, the formula does not
    np.testing.assert_allclose(float(norm), tnorm.item(), rtol=rtol)
    for g, tg in zip(grads, tgrads):
        assert g.dtype == tg.dtype
        np.testing.assert_allclose(g.astype(np.float64), tg.astype(np.float64), rtol=2 * rtol, atol=0)


def test_float16_coefficient_is_torchs_bit_for_bit():
    """A 16-bit total: torch's reciprocal-then-product, each op rounded to float16."""
    rng = np.random.default_rng(2)
    for total in (rng.random(300) * 30).astype(np.float16):
        g = np.array([1.0, -0.5, 3.0], dtype=np.float16)
        ours = g.copy()
        clip_grads_with_norm_([ours], 0.1, np.asarray(total))
        p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
        p.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grads_with_norm_([p], 0.1, torch.tensor(total))
        np.testing.assert_array_equal(ours, p.grad.numpy())


def test_mixed_dtypes_promote_as_torch():
    arrays = [np.ones(3, np.float32) * 2, np.ones(2, np.float64) * 3, np.ones(4, np.float16)]
    grads = [a.copy() for a in arrays]
    norm = clip_grad_norm_(grads, 0.5)
    tnorm, tgrads = torch_clip(arrays, 0.5)
    assert norm.dtype == np.float64 == tnorm.numpy().dtype
    np.testing.assert_allclose(float(norm), tnorm.item(), rtol=1e-7)
    for g, tg in zip(grads, tgrads):
        assert g.dtype == tg.dtype
        np.testing.assert_array_equal(g, tg)


def test_mixed_namespaces_total_in_first_gradients_namespace():
    import array_api_strict as xps

    arrays = _grads(3, shapes=[(3,), (4,)])
    grads = [xps.asarray(arrays[0], copy=True), arrays[1].copy()]
    norm = clip_grad_norm_(grads, 0.2)
    tnorm, tgrads = torch_clip(arrays, 0.2)
    assert type(norm) is type(grads[0])
    np.testing.assert_allclose(to_numpy(norm), tnorm.item(), rtol=1e-12)
    for g, tg in zip(grads, tgrads):
        np.testing.assert_allclose(to_numpy(g), tg, rtol=1e-12)


def test_no_gradients_gives_torchs_zero():
    norm = clip_grad_norm_([None, None], 1.0)
    tnorm, _ = torch_clip([None], 1.0)
    assert norm.dtype == tnorm.numpy().dtype == np.float32 and float(norm) == tnorm.item() == 0.0
    assert float(clip_grad_norm_([], 1.0)) == 0.0


def test_single_array_and_generator_accepted():
    g = np.array([3.0, 4.0])
    assert float(clip_grad_norm_(g, 1.0)) == 5.0
    np.testing.assert_allclose(g, np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-15)
    h = [np.array([3.0, 4.0])]
    assert float(clip_grad_norm_((x for x in h), 10.0)) == 5.0
    with pytest.warns(UserWarning, match="empty generator"):
        clip_grad_norm_((x for x in []), 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient(xp, bad):
    arrays = _grads(4, shapes=[(3,), (2, 2)])
    arrays[1][0, 1] = bad
    # without error_if_nonfinite: scaled by the non-finite factor, as in torch
    grads = [to_xp(xp, a.copy()) for a in arrays]
    norm = clip_grad_norm_(grads, 1.0)
    tnorm, tgrads = torch_clip(arrays, 1.0)
    np.testing.assert_array_equal(to_numpy(norm), tnorm.numpy())
    for g, tg in zip(grads, tgrads):
        np.testing.assert_array_equal(to_numpy(g), tg)
    # with it: torch's RuntimeError, before any gradient changes
    grads = [to_xp(xp, a.copy()) for a in arrays]
    with pytest.raises(RuntimeError) as ours:
        clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as theirs:
        torch_clip(arrays, 1.0, error_if_nonfinite=True)
    assert str(ours.value) == str(theirs.value)
    for g, a in zip(grads, arrays):
        np.testing.assert_array_equal(to_numpy(g), a)


def test_get_total_norm_and_clip_with_norm_match_torch():
    arrays = _grads(5)
    grads = [a.copy() for a in arrays]
    total = get_total_norm(grads, 3.0)
    ttotal = torch.nn.utils.get_total_norm([torch.from_numpy(a) for a in arrays], 3.0)
    np.testing.assert_allclose(float(total), ttotal.item(), rtol=1e-12)
    np.testing.assert_array_equal(np.concatenate([g.ravel() for g in grads]),
                                  np.concatenate([a.ravel() for a in arrays]))  # only a norm: unchanged
    clip_grads_with_norm_(grads, 0.5, total)
    _, tgrads = torch_clip(arrays, 0.5, 3.0)
    for g, tg in zip(grads, tgrads):
        np.testing.assert_allclose(g, tg, rtol=1e-12)


@pytest.mark.parametrize("clip_value", [0.0, 0.3, 2.0])
def test_clip_grad_value_matches_torch(xp, clip_value):
    arrays = _grads(6)
    arrays[0][0, 0] = np.nan
    grads = [to_xp(xp, a.copy()) for a in arrays] + [None]
    assert clip_grad_value_(grads, clip_value) is None
    for g, tg in zip(grads, torch_clip_value(arrays, clip_value)):
        np.testing.assert_array_equal(to_numpy(g), tg)


@pytest.mark.parametrize("call,exc,match", [
    (lambda g: clip_grad_norm_(g, -1.0), ValueError, "max_norm"),
    (lambda g: clip_grad_norm_(g, float("nan")), ValueError, "max_norm"),
    (lambda g: clip_grad_norm_(g, "1"), TypeError, "max_norm"),
    (lambda g: clip_grad_norm_(g, 1.0, norm_type="two"), ValueError, "norm_type"),
    (lambda g: clip_grad_norm_(g, 1.0, norm_type=float("nan")), ValueError, "norm_type"),
    (lambda g: clip_grad_norm_(g, 1.0, norm_type=None), TypeError, "norm_type"),
    (lambda g: clip_grad_norm_(g, 1.0, error_if_nonfinite=1), TypeError, "error_if_nonfinite"),
    (lambda g: clip_grad_norm_(g, 1.0, foreach="yes"), TypeError, "foreach"),
    (lambda g: clip_grad_norm_(g + [np.zeros(0)], 1.0, norm_type="inf"), ValueError, r"grads\[2\]"),
    (lambda g: clip_grad_norm_(g + [np.zeros(3, np.int64)], 1.0), TypeError, r"grads\[2\]"),
    (lambda g: clip_grad_norm_(g + [[1.0, 2.0]], 1.0), TypeError, r"grads\[2\]"),
    (lambda g: clip_grad_norm_({"a": g[0]}, 1.0), TypeError, "grads"),
    (lambda g: clip_grad_value_(g, -0.5), ValueError, "clip_value"),
    (lambda g: clip_grad_value_(g, None), TypeError, "clip_value"),
    (lambda g: clip_grads_with_norm_(g, 1.0, np.ones(2)), TypeError, "total_norm"),
])
def test_bad_input_raises_before_anything_changes(call, exc, match):
    arrays = _grads(7, shapes=[(3,), (2,)], scale=10.0)
    grads = [a.copy() for a in arrays]
    with pytest.raises(exc, match=match):
        call(grads)
    for g, a in zip(grads, arrays):
        np.testing.assert_array_equal(g, a)


def test_read_only_gradient_refused_before_anything_changes():
    a, b = np.ones(3) * 5, np.ones(2) * 5
    b.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[1\].*read-only"):
        clip_grad_norm_([a, b], 1.0)
    np.testing.assert_array_equal(a, 5.0)


# ------------------------------------------------------------- property tests

_norm_types = st.one_of(st.sampled_from([2.0, 1.0, math.inf, -math.inf, 0.0]),
                        st.floats(-4.0, 4.0).filter(lambda p: abs(p) > 0.05))


@settings(max_examples=EXAMPLES, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 5), max_size=3).map(tuple), min_size=1, max_size=5),
       norm_type=_norm_types, max_norm=st.floats(0.0, 50.0), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_property_float64_matches_torch(shapes, norm_type, max_norm, seed, scale):
    arrays = _grads(seed, shapes=shapes, scale=scale)
    grads = [a.copy() for a in arrays]
    norm = clip_grad_norm_(grads, max_norm, norm_type)
    tnorm, tgrads = torch_clip(arrays, max_norm, norm_type)
    np.testing.assert_allclose(float(norm), tnorm.item(), rtol=1e-9)
    for g, tg in zip(grads, tgrads):
        np.testing.assert_allclose(g, tg, rtol=1e-9, atol=1e-300)


@settings(max_examples=EXAMPLES, deadline=None)
@given(max_norm=st.one_of(st.floats(max_value=-1e-300), st.just(float("nan")), st.text(max_size=3),
                          st.none(), st.booleans()),
       seed=st.integers(0, 100))
def test_property_invalid_max_norm_changes_nothing(max_norm, seed):
    arrays = _grads(seed, shapes=[(4,), (2, 3)])
    grads = [a.copy() for a in arrays]
    with pytest.raises((TypeError, ValueError), match="max_norm"):
        clip_grad_norm_(grads, max_norm)
    for g, a in zip(grads, arrays):
        np.testing.assert_array_equal(g, a)
