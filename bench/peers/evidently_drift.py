"""Evidently peer for dfp's drift statistics: per-column PSI / Jensen-Shannon / Wasserstein / KS.

    python bench/peers/evidently_drift.py DIR

DIR holds reference.csv and current.csv (same header; a column is numeric when every cell of
both files parses as a float, else categorical), and optionally reference_positions.csv and
current_positions.csv: for numeric columns, each value's position in [0, 1] in the reference CDF.
Prints one JSON object: {"evidently_version", "notes", "features": {column: {statistic: value}}}.
Every statistic except `ks` is computed by Evidently's own stattest code (evidently.legacy, 0.7.x).
Set up the environment with bench/peers/setup_evidently.sh.
"""

import json
import sys
from pathlib import Path

import evidently
import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests import jensenshannon_stat_test
from evidently.legacy.calculations.stattests import psi_stat_test
from evidently.legacy.calculations.stattests import wasserstein_stat_test
from evidently.legacy.core import ColumnType
from scipy import stats

# What Evidently's source does: evidently/legacy/calculations/stattests/{utils,psi,jensenshannon,
# wasserstein_distance_norm}.py and scipy.spatial.distance.jensenshannon.
NOTES = {
    "binning": "get_binned_data: a Numerical column with > 20 unique reference values is cut into "
    "np.histogram_bin_edges(reference+current, bins='sturges') equal-width bins over the combined "
    "min..max; otherwise (<= 20 unique reference values, or Categorical) one bin per distinct "
    "non-NaN value of reference | current. Bin shares divide by len() including NaNs. The n_bins "
    "argument of _psi/_jensenshannon is passed on but never used, so n_bins=10 changes nothing.",
    "psi": "sum((r - c) * ln(r / c)); before that, zero shares on each side separately become "
    "0.0001, or min(nonzero share of that side) / 1e6 when that minimum is <= 0.0001.",
    "js": "scipy.spatial.distance.jensenshannon(r, c, base=None): the JS distance (square root of "
    "the divergence), natural log, range [0, sqrt(ln 2)]; no zero filling (0 * log 0 = 0).",
    "wasserstein": "scipy.stats.wasserstein_distance(ref, cur) / max(std(ref, ddof=0), 0.001).",
    "deciles": "psi_deciles / js_deciles: positions cut into deciles min(floor(10 p), 9) and passed "
    "to the same stattests as Categorical values, i.e. 10 equal-width bins over [0, 1].",
}


def score(test, ref, cur, feature_type, **kwargs):
    """Evidently's statistic for one column pair, at the test's default threshold.

    Without kwargs through the public StatTest call; with kwargs (n_bins) through the
    registered implementation `test.func`, since StatTest.__call__ does not forward them.
    """
    if kwargs:
        return float(test.func(ref, cur, feature_type, test.default_threshold, **kwargs)[0])
    return float(test(ref, cur, feature_type, None).drift_score)


def read(path):
    """A CSV with every cell kept as its text (no NA guessing)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def deciles(positions):
    """Decile index 0..9 of each reference-CDF position (10 equal-width bins over [0, 1])."""
    return pd.Series(np.minimum(np.floor(positions.to_numpy() * 10), 9).astype(int))


def main():
    root = Path(sys.argv[1])
    reference, current = read(root / "reference.csv"), read(root / "current.csv")
    have_positions = all((root / f"{side}_positions.csv").exists() for side in ("reference", "current"))
    if have_positions:
        ref_pos = pd.read_csv(root / "reference_positions.csv", dtype=float)
        cur_pos = pd.read_csv(root / "current_positions.csv", dtype=float)
    features = {}
    for column in reference.columns:
        ref, cur = reference[column], current[column]
        try:  # numeric only if every cell of both files parses as a float
            ref, cur, numeric = ref.astype(float), cur.astype(float), True
        except ValueError:
            numeric = False
        kind = ColumnType.Numerical if numeric else ColumnType.Categorical
        out = {
            "type": kind.value,
            "psi": score(psi_stat_test, ref, cur, kind),
            "js": score(jensenshannon_stat_test, ref, cur, kind),
        }
        if numeric:
            out["wasserstein"] = score(wasserstein_stat_test, ref, cur, kind)
            out["ks"] = float(stats.ks_2samp(ref, cur).statistic)
            if have_positions and column in ref_pos.columns:
                rp, cp = ref_pos[column], cur_pos[column]
                out["psi_positions"] = score(psi_stat_test, rp, cp, kind, n_bins=10)
                out["js_positions"] = score(jensenshannon_stat_test, rp, cp, kind, n_bins=10)
                cat = ColumnType.Categorical
                out["psi_deciles"] = score(psi_stat_test, deciles(rp), deciles(cp), cat)
                out["js_deciles"] = score(jensenshannon_stat_test, deciles(rp), deciles(cp), cat)
        features[column] = out
    print(json.dumps({"evidently_version": evidently.__version__, "notes": NOTES, "features": features}))


if __name__ == "__main__":
    main()
