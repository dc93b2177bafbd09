"""dreamer_ext.stats: incomplete beta, Student-t cdf/quantiles and the mean ± confidence interval of the evaluator."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dreamer_ext.stats import betainc, mean_ci, t_cdf, t_quantile

# Printed tables of Student's t (two-sided 95% = 0.975 quantile, etc.), 4 decimals.
T_TABLE = [
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 3, 3.1824), (0.975, 4, 2.7764), (0.975, 5, 2.5706),
    (0.975, 10, 2.2281), (0.975, 30, 2.0423), (0.975, 120, 1.9799),
    (0.95, 4, 2.1318), (0.95, 1, 6.3138), (0.95, 20, 1.7247),
    (0.995, 3, 5.8409), (0.995, 9, 3.2498),
    (0.9, 7, 1.4149), (0.99, 15, 2.6025),
]

SETTINGS = settings(max_examples=60, deadline=None)


# ------------------------------------------------------------------------------------------------------------ betainc
@pytest.mark.parametrize("x", [0.0, 1e-9, 0.05, 0.3, 0.5, 0.77, 0.999, 1.0])
def test_betainc_uniform_is_identity(x):
    assert betainc(1.0, 1.0, x) == pytest.approx(x, abs=1e-12)


@SETTINGS
@given(a=st.floats(0.05, 40.0), x=st.floats(0.0, 1.0))
def test_betainc_b_one_closed_form(a, x):
    assert betainc(a, 1.0, x) == pytest.approx(x ** a, rel=1e-9, abs=1e-12)


@SETTINGS
@given(b=st.floats(0.05, 40.0), x=st.floats(0.0, 1.0))
def test_betainc_a_one_closed_form(b, x):
    assert betainc(1.0, b, x) == pytest.approx(1.0 - (1.0 - x) ** b, rel=1e-9, abs=1e-12)


@SETTINGS
@given(a=st.floats(0.1, 200.0), b=st.floats(0.1, 200.0), x=st.floats(1e-6, 1.0 - 1e-6))
def test_betainc_symmetry_and_range(a, b, x):
    # x away from 0 and 1: there 1 - x rounds (e.g. 1 - 1e-45 == 1.0) and the identity cannot hold in floats
    v = betainc(a, b, x)
    assert 0.0 <= v <= 1.0
    assert v == pytest.approx(1.0 - betainc(b, a, 1.0 - x), abs=1e-9)


@SETTINGS
@given(a=st.floats(0.1, 50.0), b=st.floats(0.1, 50.0), x=st.floats(0.0, 1.0), y=st.floats(0.0, 1.0))
def test_betainc_monotone_in_x(a, b, x, y):
    lo, hi = min(x, y), max(x, y)
    assert betainc(a, b, lo) <= betainc(a, b, hi) + 1e-12


def test_betainc_other_closed_forms():
    # I_x(2, 2) = 3x^2 - 2x^3;  I_x(1/2, 1/2) = (2/pi) asin(sqrt(x));  I_{1/2}(a, a) = 1/2
    for x in np.linspace(0.0, 1.0, 23):
        assert betainc(2.0, 2.0, x) == pytest.approx(3 * x**2 - 2 * x**3, abs=1e-12)
        assert betainc(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), abs=1e-12)
    for a in (0.3, 1.0, 7.5, 100.0, 2000.0):
        assert betainc(a, a, 0.5) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("args, name", [((0.0, 1.0, 0.5), "a, b"), ((1.0, -2.0, 0.5), "a, b"),
                                        ((1.0, 1.0, -0.1), "x"), ((1.0, 1.0, 1.5), "x")])
def test_betainc_rejects_bad_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        betainc(*args)


# ------------------------------------------------------------------------------------------------------------ t_cdf
@pytest.mark.parametrize("t", [-50.0, -3.0, -1.0, -0.2, 0.0, 0.4, 1.0, 2.5, 1e3])
def test_t_cdf_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_t_cdf_limits_and_errors():
    for df in (1, 3, 30):
        assert t_cdf(0.0, df) == pytest.approx(0.5, abs=1e-15)
        assert t_cdf(math.inf, df) == 1.0 and t_cdf(-math.inf, df) == 0.0
    # a huge df approaches the standard normal: Phi(1.96) = 0.9750021048517795
    assert t_cdf(1.96, 1e7) == pytest.approx(0.9750021048517795, abs=1e-6)
    for df in (0, -1):
        with pytest.raises(ValueError, match="df"):
            t_cdf(1.0, df)


@SETTINGS
@given(t=st.floats(-1e4, 1e4), df=st.floats(0.5, 500.0))
def test_t_cdf_symmetry(t, df):
    assert t_cdf(t, df) + t_cdf(-t, df) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------------------ t_quantile
@pytest.mark.parametrize("p, df, expected", T_TABLE)
def test_t_quantile_table_values(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(1.0 - p, df) == pytest.approx(-expected, abs=1e-3)


def test_t_quantile_closed_forms_and_normal_limit():
    for p in (0.51, 0.6, 0.8, 0.9, 0.975, 0.999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-8)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-8)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959963984540054, abs=1e-5)
    assert t_quantile(0.5, 4) == 0.0


@SETTINGS
@given(p=st.floats(0.001, 0.999), df=st.floats(0.5, 300.0))
def test_t_quantile_inverts_cdf_and_is_antisymmetric(p, df):
    q = t_quantile(p, df)
    assert t_cdf(q, df) == pytest.approx(p, abs=1e-9)
    assert t_quantile(1.0 - p, df) == pytest.approx(-q, rel=1e-9, abs=1e-9)
    if p > 0.5:
        assert q > 0


@pytest.mark.parametrize("df", [1, 4, 30])
def test_t_quantile_increasing_in_p_and_decreasing_in_df(df):
    ps = np.linspace(0.01, 0.99, 41)
    qs = [t_quantile(float(p), df) for p in ps]
    assert all(a < b for a, b in zip(qs, qs[1:]))
    assert t_quantile(0.975, df) > t_quantile(0.975, df + 1)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.5, 1.2])
def test_t_quantile_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p"):
        t_quantile(p, 3)


# ------------------------------------------------------------------------------------------------------------ mean_ci
def test_mean_ci_small_example_matches_numpy_and_table():
    values = [3.0, 7.0, 8.0, 1.0, 6.0]
    res = mean_ci(values)
    arr = np.array(values)
    std = arr.std(ddof=1)
    assert res["n"] == 5 and res["level"] == 0.95
    assert res["mean"] == pytest.approx(arr.mean(), rel=1e-12)
    assert res["std"] == pytest.approx(std, rel=1e-12)
    assert res["ci"] == pytest.approx(2.7764 * std / math.sqrt(5), rel=1e-4)


def test_mean_ci_other_levels_and_inputs():
    values = np.array([10.0, 12.5, 9.0, 11.0, 14.0, 8.5, 10.5, 13.0, 12.0, 9.5, 11.5])  # n = 11, df = 10
    std = values.std(ddof=1)
    for level, t in ((0.95, 2.2281), (0.90, 1.8125), (0.99, 3.1693)):
        res = mean_ci(values, level=level)
        assert res["level"] == level
        assert res["ci"] == pytest.approx(t * std / math.sqrt(11), rel=2e-4)
    # a numpy array, a tuple of ints and a generator give the same numbers as a list of floats
    ref = mean_ci([float(v) for v in values])
    assert mean_ci(values) == ref
    assert mean_ci(iter(values.tolist())) == ref
    ints = mean_ci((1, 2, 3, 4))
    assert ints["mean"] == 2.5 and ints["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))


def test_mean_ci_constant_values_have_zero_width():
    res = mean_ci([4.25] * 6)
    assert res["mean"] == 4.25 and res["std"] == 0.0 and res["ci"] == 0.0


def test_mean_ci_wider_at_higher_level_and_shrinks_with_n():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    assert mean_ci(x, 0.99)["ci"] > mean_ci(x, 0.95)["ci"] > mean_ci(x, 0.5)["ci"] > 0
    # the same spread with four times the samples: the interval shrinks by more than 2 (t also shrinks)
    few, many = mean_ci(x[:10]), mean_ci(np.tile(x[:10], 4))
    assert many["ci"] < few["ci"] / 2


def test_mean_ci_single_value():
    res = mean_ci([7.5])
    assert res["n"] == 1 and res["mean"] == 7.5
    assert math.isnan(res["std"]) and math.isnan(res["ci"])


def test_mean_ci_errors():
    with pytest.raises(ValueError, match="values"):
        mean_ci([])
    for level in (0.0, 1.0, -0.1, 95.0):
        with pytest.raises(ValueError, match="level"):
            mean_ci([1.0, 2.0], level=level)


def test_mean_ci_coverage_monte_carlo():
    """About 95% of the intervals from normal samples of size 5 contain the true mean."""
    rng = np.random.default_rng(12345)
    samples = rng.normal(loc=3.0, scale=2.0, size=(2000, 5))
    hits = 0
    for row in samples:
        res = mean_ci(row)
        hits += abs(res["mean"] - 3.0) <= res["ci"]
    assert 0.93 <= hits / len(samples) <= 0.97
    # the same intervals with the normal quantile 1.96 instead of t (too narrow for n=5) cover clearly less
    m, s = samples.mean(1), samples.std(1, ddof=1)
    z_cover = np.mean(np.abs(m - 3.0) <= 1.96 * s / math.sqrt(5))
    assert z_cover < 0.92
