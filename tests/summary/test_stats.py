"""collapse.summary.stats against hand computations and, where installed, statsmodels (the
reference implementation of ols + anova_lm and of TTestPower)."""
import math
import warnings

import numpy as np
import pytest

from collapse.summary import stats


def _design(counts: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Runs of a 3 x 2 design with an interaction: counts[(a, b)] runs in each cell."""
    rng = np.random.default_rng(seed)
    idx, y = [], []
    for (a, b), n in counts.items():
        for _ in range(n):
            idx.append((a, b))
            y.append(0.3 * a - 0.2 * (b == 1) + 0.1 * a * b + rng.normal(0, 0.1))
    return np.array(idx), np.array(y)


BALANCED = {(a, b): 3 for a in range(3) for b in range(2)}
UNBALANCED = {(0, 0): 3, (0, 1): 1, (1, 0): 2, (1, 1): 5, (2, 0): 4, (2, 1): 2}
EMPTY_CELL = {(0, 0): 3, (0, 1): 2, (1, 0): 2, (2, 0): 4, (2, 1): 2}        # (1, 1) has no runs


def test_describe_and_t_quantiles():
    assert stats.t975(1) == pytest.approx(12.7062047, abs=1e-6)
    assert stats.t975(30) == pytest.approx(2.0422725, abs=1e-6)
    assert math.isnan(stats.t975(0))
    s = stats.describe([1.0, 2.0, 3.0, None, float("nan"), True])
    assert (s["n"], s["mean"], s["std"]) == (3, 2.0, 1.0)
    assert s["ci_high"] - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    one = stats.describe([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["std"]) and math.isnan(one["ci_low"])


def test_eta_squared_of_floating_point_noise_is_undefined():
    # defect 7: 0.1 + 0.2 != 0.3 in floating point; the old code returned 1.0
    assert math.isnan(stats.eta_squared([[0.1 + 0.2] * 6, [0.3] * 6]))
    assert stats.eta_squared([[1, 2], [3, 4]]) == pytest.approx(0.8)
    assert stats.all_equal([0.1 + 0.2, 0.3]) and not stats.all_equal([0.3, 0.31])


def test_holm():
    # sorted 0.01, 0.03, 0.04 -> 3 * .01, max(.03, 2 * .03), max(.06, 1 * .04); NaN is no test
    assert stats.holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(stats.holm([0.01, float("nan")])[1])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_balanced_cell_means_emms_by_hand():
    idx, y = _design(BALANCED)
    r = stats.factorial_anova(y, idx, [3, 2])
    cell_means = np.array([[y[(idx[:, 0] == a) & (idx[:, 1] == b)].mean() for b in range(2)] for a in range(3)])
    ms_within = sum(((y[(idx[:, 0] == a) & (idx[:, 1] == b)] - cell_means[a, b]) ** 2).sum()
                    for a in range(3) for b in range(2)) / (18 - 6)
    assert r["error"]["df"] == 12 and r["error"]["ms"] == pytest.approx(ms_within)
    for a in range(3):
        emm = r["emms"][0][a]
        assert emm["mean"] == pytest.approx(cell_means[a].mean())
        assert emm["se"] == pytest.approx(math.sqrt(ms_within * (1 / 3 + 1 / 3) / 4))
        assert emm["ci_high"] - emm["mean"] == pytest.approx(stats.t975(12) * emm["se"])


@pytest.mark.parametrize("counts", [BALANCED, UNBALANCED], ids=["balanced", "unbalanced"])
def test_type2_anova_and_emms_match_statsmodels(counts):
    pd = pytest.importorskip("pandas")
    smf = pytest.importorskip("statsmodels.formula.api")
    anova_lm = pytest.importorskip("statsmodels.stats.anova").anova_lm
    idx, y = _design(counts)
    data = pd.DataFrame({"a": idx[:, 0], "b": idx[:, 1], "y": y})
    model = smf.ols("y ~ C(a, Sum) * C(b, Sum)", data).fit()
    table = anova_lm(model, typ=2)
    r = stats.factorial_anova(y, idx, [3, 2])
    got = {tuple(t["factors"]): t for t in r["terms"]}
    for term, row in ((((0,), "C(a, Sum)")), (((1,), "C(b, Sum)")), (((0, 1), "C(a, Sum):C(b, Sum)"))):
        assert got[term]["ss"] == pytest.approx(table.loc[row, "sum_sq"], rel=1e-9)
        assert got[term]["df"] == table.loc[row, "df"]
        assert got[term]["f"] == pytest.approx(table.loc[row, "F"], rel=1e-9)
        assert got[term]["p"] == pytest.approx(table.loc[row, "PR(>F)"], rel=1e-7)
    assert r["error"]["df"] == model.df_resid and r["error"]["ms"] == pytest.approx(model.scale)
    # EMMs: the fitted cell means averaged over b, with the model's covariance
    grid = pd.DataFrame([(a, b) for a in range(3) for b in range(2)], columns=["a", "b"])
    patsy = pytest.importorskip("patsy")
    X = np.asarray(patsy.build_design_matrices([model.model.data.orig_exog.design_info], grid)[0])
    for a in range(3):
        c = X[grid["a"].to_numpy() == a].mean(axis=0)
        mean, se = float(c @ model.params), math.sqrt(float(c @ model.cov_params().to_numpy() @ c))
        assert r["emms"][0][a]["mean"] == pytest.approx(mean, rel=1e-9)
        assert r["emms"][0][a]["se"] == pytest.approx(se, rel=1e-7)


def test_empty_cell_matches_statsmodels_model_comparisons():
    # statsmodels' anova_lm(typ=2) counts the df of a rank-deficient design wrong; the
    # type II definition, a comparison of nested models, is the reference here
    pd = pytest.importorskip("pandas")
    smf = pytest.importorskip("statsmodels.formula.api")
    anova_lm = pytest.importorskip("statsmodels.stats.anova").anova_lm
    idx, y = _design(EMPTY_CELL)
    data = pd.DataFrame({"a": idx[:, 0], "b": idx[:, 1], "y": y})
    r = stats.factorial_anova(y, idx, [3, 2])
    got = {tuple(t["factors"]): t for t in r["terms"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = smf.ols("y ~ C(a) * C(b)", data).fit()
        for term, reduced, bigger in (((0,), "C(b)", "C(a) + C(b)"), ((1,), "C(a)", "C(a) + C(b)"),
                                      ((0, 1), "C(a) + C(b)", "C(a) * C(b)")):
            table = anova_lm(smf.ols("y ~ " + reduced, data).fit(), smf.ols("y ~ " + bigger, data).fit(), full)
            assert got[term]["ss"] == pytest.approx(table["ss_diff"].iloc[1], rel=1e-9)
            assert got[term]["df"] == table["df_diff"].iloc[1]
            assert got[term]["f"] == pytest.approx(table["F"].iloc[1], rel=1e-9)
    assert got[(0, 1)]["df"] == 1                   # one interaction contrast left to estimate
    assert r["error"]["df"] == full.df_resid == 13 - 5
    # estimable or nothing: the EMMs come from this model, with its interaction, never from
    # a silently smaller one; a level whose average needs the empty cell (1, 1) is undefined
    assert r["emm_model"] == "main effects + two-factor interactions" and r["empty_cells"] == [(1, 1)]
    X = np.asarray(full.model.exog)
    grid = pd.DataFrame([(a, b) for a in range(3) for b in range(2)], columns=["a", "b"])
    patsy = pytest.importorskip("patsy")
    G = np.asarray(patsy.build_design_matrices([full.model.data.orig_exog.design_info], grid)[0])

    def statsmodels_estimate(c):        # None when c is not in the row space of the runs' design
        if np.linalg.norm(np.linalg.lstsq(X.T, c, rcond=None)[0] @ X - c) > 1e-8:
            return None
        return float(c @ full.params), math.sqrt(float(c @ full.cov_params().to_numpy() @ c))

    for f in (0, 1):
        first = G[grid.iloc[:, f].to_numpy() == 0].mean(axis=0)
        for lv in range(3 if f == 0 else 2):
            c = G[grid.iloc[:, f].to_numpy() == lv].mean(axis=0)
            emm = r["emms"][f][lv]
            for got_est, ref in ((emm, statsmodels_estimate(c)), (emm["vs_first"], statsmodels_estimate(c - first))):
                if ref is None:
                    assert not got_est["estimable"] and math.isnan(got_est["mean"]) and math.isnan(got_est["se"])
                else:
                    assert got_est["estimable"]
                    assert got_est["mean"] == pytest.approx(ref[0], rel=1e-9, abs=1e-12)
                    assert got_est["se"] == pytest.approx(ref[1], rel=1e-7, abs=1e-12)
    assert [e["estimable"] for e in r["emms"][0]] == [True, False, True]
    assert [e["estimable"] for e in r["emms"][1]] == [True, False]


def test_one_run_per_cell_has_no_within_cell_error():
    idx = np.array([(a, b) for a in range(3) for b in range(2)])
    y = np.array([0.1, 0.2, 0.4, 0.45, 0.7, 0.9])
    r = stats.factorial_anova(y, idx, [3, 2])
    assert math.isnan(r["cells"]["within_share"])
    assert r["error"]["source"].startswith("residual of the main-effects model") and r["error"]["df"] == 2
    assert [t["factors"] for t in r["terms"]] == [[0], [1]]


def test_power_matches_statsmodels():
    TTestPower = pytest.importorskip("statsmodels.stats.power").TTestPower
    for n in (3, 5, 12):
        d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8, alternative="two-sided")
        assert stats.detectable_difference(0.04, n) == pytest.approx(0.04 * d, rel=1e-6)
    assert stats.paired_power(0.7, 1.0, 6) == pytest.approx(TTestPower().power(0.7, 6, 0.05), rel=1e-9)
    for effect, sd in ((0.05, 0.04), (0.05, 0.1), (0.02, 0.1)):
        n = TTestPower().solve_power(effect_size=effect / sd, nobs=None, alpha=0.05, power=0.8)
        assert stats.seeds_needed(effect, sd) == math.ceil(n)
    assert math.isnan(stats.detectable_difference(float("nan"), 5)) and math.isnan(stats.detectable_difference(0.1, 1))
    assert stats.seeds_needed(0.05, 0.0) is None


def test_three_factors_match_statsmodels_full_factorial_type2():
    # main effects and two-factor interactions of the 3-factor model, against the pooled
    # within-cell error (the residual of C(a) * C(b) * C(c))
    pd = pytest.importorskip("pandas")
    smf = pytest.importorskip("statsmodels.formula.api")
    anova_lm = pytest.importorskip("statsmodels.stats.anova").anova_lm
    rng = np.random.default_rng(3)
    rows = [(a, b, c, 0.2 * a - 0.1 * b * c + 0.05 * a * c + rng.normal(0, 0.1))
            for a in range(2) for b in range(3) for c in range(2) for _ in range(1 + (a + b + c) % 3)]
    data = pd.DataFrame(rows, columns=["a", "b", "c", "y"])
    table = anova_lm(smf.ols("y ~ C(a, Sum) * C(b, Sum) * C(c, Sum)", data).fit(), typ=2)
    r = stats.factorial_anova(data.y.to_numpy(), data[["a", "b", "c"]].to_numpy(), [2, 3, 2])
    names = {(0,): "C(a, Sum)", (1,): "C(b, Sum)", (2,): "C(c, Sum)", (0, 1): "C(a, Sum):C(b, Sum)",
             (0, 2): "C(a, Sum):C(c, Sum)", (1, 2): "C(b, Sum):C(c, Sum)"}
    assert len(r["terms"]) == 6
    for t in r["terms"]:
        row = names[tuple(t["factors"])]
        assert t["ss"] == pytest.approx(table.loc[row, "sum_sq"], rel=1e-9)
        assert t["f"] == pytest.approx(table.loc[row, "F"], rel=1e-9)
        assert t["p"] == pytest.approx(table.loc[row, "PR(>F)"], rel=1e-7)
    assert r["error"]["df"] == table.loc["Residual", "df"]


def test_power_at_every_n_matches_statsmodels_and_a_simulation():
    # scipy.special.nctdtr returns NaN at large noncentrality; the old bisection read NaN as
    # "reached": 5.47 SDs detectable at 2 pairs, where statsmodels and a simulation say 11.55
    TTestPower = pytest.importorskip("statsmodels.stats.power").TTestPower
    for n in range(2, 101):
        # two-sided: statsmodels' root finder returns either sign of the standardized effect
        d = abs(float(np.ravel(TTestPower().solve_power(effect_size=None, nobs=n, alpha=0.05, power=0.8))[0]))
        assert stats.detectable_difference(1.0, n) == pytest.approx(d, rel=1e-5)   # statsmodels' own tolerance
    assert stats.detectable_difference(0.01, 2) == pytest.approx(0.1155, abs=1e-4)
    rng = np.random.default_rng(0)
    for d, expected in ((stats.detectable_difference(1.0, 2), 0.80), (5.47, 0.46)):
        x = rng.normal(d, 1.0, size=(400_000, 2))
        t = x.mean(axis=1) / (x.std(axis=1, ddof=1) / math.sqrt(2))
        assert np.mean(np.abs(t) > stats.t975(1)) == pytest.approx(expected, abs=0.005)
        assert stats.paired_power(d, 1.0, 2) == pytest.approx(np.mean(np.abs(t) > stats.t975(1)), abs=0.005)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ratio in (0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 6.0, 8.0, 12.0, 20.0):
            needed = stats.seeds_needed(ratio * 0.01, 0.01)
            # never too few: enough power at the answer, not enough at one pair fewer
            assert stats.paired_power(ratio, 1.0, needed) >= 0.8
            assert needed == 2 or stats.paired_power(ratio, 1.0, needed - 1) < 0.8
            n = TTestPower().solve_power(effect_size=ratio, nobs=None, alpha=0.05, power=0.8)
            if math.isfinite(n):        # statsmodels' root finder gives up past ~6 SDs
                assert needed == max(2, math.ceil(n - 1e-6))
    assert stats.seeds_needed(0.06, 0.01) == 3                     # old: 2, whose power is 0.49
    assert stats.paired_power(0.06, 0.01, 2) == pytest.approx(0.494, abs=0.001)


def test_noncentral_t_where_scipy_returns_nan():
    from scipy import special
    assert math.isnan(special.nctdtr(1, 40.0, -12.7))                # the defect's cause
    for df, nc, t in ((1, 40.0, -12.7), (4, 58.5, 2.776), (1, 8.0, -12.7)):
        value = stats.nct_cdf(t, df, nc)
        assert 0.0 <= value <= 1e-8                                   # both tails are tiny there
    # where scipy answers, the integral agrees with it
    assert stats.nct_cdf(2.0, 3, 1.5) == pytest.approx(special.nctdtr(3, 1.5, 2.0), rel=1e-12)


def test_failure_rate_tests_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for table in ([[6, 26], [14, 18]], [[0, 16], [8, 8]], [[3, 13], [7, 9]], [[1, 9], [1, 9]], [[5, 0], [2, 3]]):
        (a, b), (c, d) = table
        assert stats.fisher_exact_2x2(a, b, c, d) == pytest.approx(scipy_stats.fisher_exact(table)[1], rel=1e-9)
        r = stats.failure_rate_test([a, c], [a + b, c + d])
        assert r["test"] == "fisher" and r["p"] == pytest.approx(scipy_stats.fisher_exact(table)[1], rel=1e-9)
    failed, ended = [2, 9, 4], [20, 20, 18]
    table = [[f, e - f] for f, e in zip(failed, ended)]
    r = stats.failure_rate_test(failed, ended)
    ref = scipy_stats.chi2_contingency(table, correction=False)
    assert r["test"] == "chi2" and r["p"] == pytest.approx(ref[1], rel=1e-9)
    assert r["rates"] == pytest.approx([0.1, 0.45, 4 / 18])
    assert math.isnan(stats.failure_rate_test([0, 0], [8, 8])["p"])          # no failure: nothing to test
    assert math.isnan(stats.failure_rate_test([3, 0], [8, 0])["p"])          # one level with runs
    assert stats.failure_rate_test([2, 5, 0], [8, 8, 0])["test"] == "fisher"   # a level with no runs left out


def test_terms_without_degrees_of_freedom_have_no_share():
    # b is constant within each level of a (aliased): b's type II SS has df 0, eta² is undefined
    idx = np.array([(0, 0), (0, 0), (1, 1), (1, 1)])
    r = stats.factorial_anova([0.1, 0.2, 0.5, 0.6], idx, [2, 2])
    b = next(t for t in r["terms"] if t["factors"] == [1])
    assert b["df"] == 0 and math.isnan(b["eta_sq"]) and math.isnan(b["partial_eta_sq"]) and math.isnan(b["f"])


@pytest.mark.parametrize("seed", [0, 1])
def test_cell_statistics_anova_matches_statsmodels_on_a_large_unbalanced_design(seed):
    # the sufficient-statistics path (Gram blocks, Cholesky or eigh) against anova_lm(typ=2)
    pd = pytest.importorskip("pandas")
    smf = pytest.importorskip("statsmodels.formula.api")
    anova_lm = pytest.importorskip("statsmodels.stats.anova").anova_lm
    rng = np.random.default_rng(seed)
    rows = [(a, b, c, 5.0 + 0.2 * a - 0.1 * b * c + rng.normal(0, 0.1))
            for a in range(4) for b in range(3) for c in range(5) for _ in range(1 + rng.integers(0, 4))]
    data = pd.DataFrame(rows, columns=["a", "b", "c", "y"])
    table = anova_lm(smf.ols("y ~ C(a, Sum) * C(b, Sum) * C(c, Sum)", data).fit(), typ=2)
    r = stats.factorial_anova(data.y.to_numpy(), data[["a", "b", "c"]].to_numpy(), [4, 3, 5])
    names = {(0,): "C(a, Sum)", (1,): "C(b, Sum)", (2,): "C(c, Sum)", (0, 1): "C(a, Sum):C(b, Sum)",
             (0, 2): "C(a, Sum):C(c, Sum)", (1, 2): "C(b, Sum):C(c, Sum)"}
    for t in r["terms"]:
        row = names[tuple(t["factors"])]
        assert t["ss"] == pytest.approx(table.loc[row, "sum_sq"], rel=1e-8)
        assert t["p"] == pytest.approx(table.loc[row, "PR(>F)"], rel=1e-6)
