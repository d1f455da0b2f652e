"""The numerical kernels: the coordinate step, the difference triple, the kink test, error
bars (Richardson), bisection, the sampled coordinates and the streams of one key."""
import jax
import jax.numpy as jnp
import numpy as np

from funcnet.gradcheck import kernels


def test_step_and_difference_triple():
    with jax.enable_x64(True):
        step = kernels.coordinate_step(4, 2, 0.5, jnp.float64)
        np.testing.assert_array_equal(step, [0, 0, 0.5, 0])
        assert step.dtype == jnp.float64
    f = lambda x: x ** 3  # noqa: E731 -- f' = 3x², f'' = 6x
    x, eps = 2.0, 1e-3
    centred, forward, backward = kernels.differences(f(x + eps), f(x - eps), f(x), eps)
    assert abs(centred - 12) < 2e-6 and abs(forward - 12) < 7e-3 and abs(backward - 12) < 7e-3
    assert forward > centred > backward  # one-sided errors ±ε f''/2


def test_kink_mask_needs_finite_one_sided_differences():
    fw = np.array([1.0, 1.0, np.inf, np.nan])
    bw = np.array([1.0 + 1e-9, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(kernels.kink_mask(fw, bw, 1e-6), [False, True, False, False])


def test_error_bar_richardson_on_a_known_derivative():
    """sin at x with ε = 0.1: the centred difference is off by ~ε² / 6; Richardson's
    estimate by ~ε⁴ / 120, and the error bar covers the coarse one's error."""
    x, eps = 0.7, 0.1
    coarse = (np.sin(x + eps) - np.sin(x - eps)) / (2 * eps)
    fine = (np.sin(x + eps / 2) - np.sin(x - eps / 2)) / eps
    estimate, bar = kernels.error_bar(coarse, fine, eps)
    assert abs(coarse - np.cos(x)) <= bar <= 2 * abs(coarse - np.cos(x))
    assert abs(estimate - np.cos(x)) < 1e-6 < abs(coarse - np.cos(x))
    est, passes, unreliable = kernels.second_look(np.cos(x), coarse, fine, 1e-5, 0.0, eps)
    assert passes and not unreliable and est == estimate
    est, passes, unreliable = kernels.second_look(np.cos(x), coarse, fine, 1e-5, 0.0, eps,
                                                  scale=1e12)  # round-off swamps it
    assert passes  # the estimate itself still agrees


def test_bisect_finds_the_element_in_log_steps():
    n, culprit = 1000, 637
    v = np.random.default_rng(0).standard_normal(n)
    error = np.zeros(n)
    error[culprit] = 0.3  # the gradient under test is wrong there
    calls = []

    def discrepancy(support):
        calls.append(1)
        return float(error[support] @ v[support]) + 1e-12  # differencing noise

    assert kernels.bisect(discrepancy, np.arange(n), float(error @ v)) == culprit
    assert len(calls) == 10  # ⌈log2 1000⌉
    assert kernels.bisect(discrepancy, np.arange(n), float(error @ v), budget=3) is None


def test_sample_coordinates_and_streams():
    leaves = [np.zeros((4, 5)), np.zeros(3)]
    key = jax.random.PRNGKey(0)
    picked = kernels.sample_coordinates(leaves, np.int64(6), key)
    assert [p.size for p in picked] == [6, 3] and np.all(np.diff(picked[0]) > 0)
    again = kernels.sample_coordinates(leaves, 6, key)
    assert all(np.array_equal(a, b) for a, b in zip(picked, again))
    assert [p.size for p in kernels.sample_coordinates(leaves, None, key)] == [20, 3]
    streams = {tuple(np.asarray(jax.random.key_data(kernels.stream(key, t))).ravel())
               for t in (kernels.COTANGENTS, kernels.COORDINATES, kernels.DIRECTIONS)}
    assert len(streams) == 3
