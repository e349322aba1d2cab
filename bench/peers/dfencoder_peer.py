#!/usr/bin/env python3
"""Reference peer: Morpheus-style Digital Fingerprinting with the `dfencoder` 0.0.42 autoencoder.

Does, on a directory of log files written by `dfp generate`, what NVIDIA Morpheus' DFP pipeline
does with dfencoder (see shared/MORPHEUS_DFP.md), and writes a JSON summary with per-row scores,
for side-by-side runs against dfp. Set it up with bench/peers/setup_dfencoder.sh, then:

    target/peers/dfencoder-venv/bin/python bench/peers/dfencoder_peer.py \\
        --data DIR --source azure|duo --train-days N [--epochs 30] [--max-users K] --out FILE.json

Steps: load every AZUREAD_*.json / DUO_*.json (JSON arrays) with pd.json_normalize; rename and
cast by Morpheus' source schema; sort by time; derive logcount / locincrement / appincrement per
(user, UTC day); rows of the first --train-days UTC days train, the rest are scored. One
AutoEncoder per user with >= 300 training rows (one user at a time, as Morpheus does) plus a
`generic_user` model on every training row; users without their own model are scored by the
generic one. Per feature loss (MSE numeric, BCE binary, cross-entropy categorical), z = |(loss -
mean) / std| with the loss statistics of the clean training split, then max_abs_z / mean_abs_z.

What differs from stock dfencoder 0.0.42, and why (`--stock` turns off the first two):
  * every string feature is categorical. Stock 0.0.42 silently turns a string column with fewer
    than 3 distinct training values into a binary feature; Morpheus' fork (and dfp) keep it
    categorical (binary features are only the bool columns).
  * the backward pass runs once on the sum of the feature-type losses, as Morpheus' fork does.
    Stock 0.0.42 calls backward() once per loss term with retain_graph (1 + 1 + one per
    categorical: 8 passes for Azure), which gives the same gradients ~3x slower (measured here).
  * always: StandardScaler std 0 -> 1 (Morpheus' fork). Stock 0.0.42 divides by 0 and every loss
    becomes NaN for a user whose locincrement (say) never changes.
  * Morpheus' early stopping (patience -1: stop after the first epoch whose validation loss on
    clean input rises; off with --no-early-stopping), validation = chronologically last 10% of the training rows, and the
    per-feature loss statistics that 0.0.42 does not have; they are computed here from 0.0.42's
    own forward pass and loss modules, as Morpheus' fork does in get_anomaly_score_losses /
    get_results, with the population std of shared/MORPHEUS_DFP.md (std 0 -> 1; the fork's torch
    std is the n-1 one, a difference of <0.2% at >= 300 rows).
"""

import argparse
import glob
import json
import math
import os
import random
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch

from dfencoder import AutoEncoder, EncoderDataFrame
from dfencoder.scalers import StandardScaler

# A source with no binary feature gives dfencoder a zero-width binary head: torch warns, harmlessly.
warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")

DFENCODER_VERSION = "0.0.42"
MIN_HISTORY = 300  # Morpheus: training rolling window min_history
VALIDATION_SIZE = 0.1
GENERIC = "generic_user"

AZURE_CATS = [
    "appDisplayName", "clientAppUsed", "deviceDetailbrowser", "deviceDetaildisplayName",
    "deviceDetailoperatingSystem", "statusfailureReason",
]
AZURE_FEATURES = AZURE_CATS + ["appincrement", "locincrement", "logcount"]
DUO_CATS = ["accessdevicebrowser", "accessdeviceos", "authdevicename", "reason"]
DUO_FEATURES = DUO_CATS + ["result", "locincrement", "logcount"]

DUO_TRUE = {"success", "SUCCESS"}
DUO_FALSE = {"denied", "DENIED", "Denied", "FRAUD"}


# ----------------------------------------------------------------------------- dfencoder patches

_stock_scaler_fit = StandardScaler.fit


def _scaler_fit_std0(self, x):
    """Morpheus' fork: a constant column (std 0) is scaled with std 1 instead of dividing by 0."""
    _stock_scaler_fit(self, x)
    if self.std == 0 or not np.isfinite(self.std):
        self.std = 1.0


StandardScaler.fit = _scaler_fit_std0


class MorpheusAutoEncoder(AutoEncoder):
    """dfencoder 0.0.42 AutoEncoder with Morpheus' fork semantics where they differ (see top)."""

    def __init__(self, *args, stock=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.stock = stock

    def init_cats(self, df):
        if self.stock:
            return super().init_cats(df)
        for name, dtype in zip(df.dtypes.index, df.dtypes):
            if dtype == "object":
                vl = df[name].value_counts()
                self.categorical_fts[name] = {"cats": list(vl[vl >= self.min_cats].index)}

    def do_backward(self, mse, bce, cce):
        if self.stock:
            return super().do_backward(mse, bce, cce)
        # A feature type with no columns has a NaN (empty) mean: leave it out, as it has no gradient.
        terms = ([mse] if self.numeric_fts else []) + ([bce] if self.binary_fts else []) + list(cce)
        torch.stack(terms).sum().backward()


# ----------------------------------------------------------------------------- loading

def _col(df, name):
    """A column as Morpheus' schemas cast it: missing key -> "nan", explicit null -> "None"."""
    if name in df.columns:
        return df[name].astype(object).astype(str)
    return pd.Series(["nan"] * len(df), index=df.index, dtype=object)


def _cat(df, names, sep=", "):
    """Morpheus' StringCatColumn (Series.str.cat: any missing part -> NaN), then cast to str."""
    parts = [df[n] if n in df.columns else pd.Series([np.nan] * len(df), index=df.index) for n in names]
    first = parts[0].astype(object)
    out = first.str.cat(others=[p.astype(object) for p in parts[1:]], sep=sep) if len(df) else first
    return out.astype(object).astype(str)


def _timestamps(col):
    if pd.api.types.is_numeric_dtype(col):
        return pd.to_datetime(col, unit="s", utc=True)
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().all():
        return pd.to_datetime(num, unit="s", utc=True)
    return pd.to_datetime(col, utc=True)


def load(data_dir, source):
    pattern = "AZUREAD_*.json" if source == "azure" else "DUO_*.json"
    files = sorted(glob.glob(os.path.join(data_dir, pattern)))
    if not files:
        sys.exit(f"no {pattern} files in {data_dir}")
    records = []
    for f in files:
        with open(f) as fh:
            recs = json.load(fh)
        records.extend(recs if isinstance(recs, list) else [recs])
    raw = pd.json_normalize(records)
    df = pd.DataFrame(index=raw.index)
    if source == "azure":
        df["timestamp"] = _timestamps(raw["time"])
        df["username"] = _col(raw, "properties.userPrincipalName")
        df["event_id"] = _col(raw, "properties.id")
        df["appDisplayName"] = _col(raw, "properties.appDisplayName")
        df["clientAppUsed"] = _col(raw, "properties.clientAppUsed")
        df["deviceDetailbrowser"] = _col(raw, "properties.deviceDetail.browser")
        df["deviceDetaildisplayName"] = _col(raw, "properties.deviceDetail.displayName")
        df["deviceDetailoperatingSystem"] = _col(raw, "properties.deviceDetail.operatingSystem")
        df["statusfailureReason"] = _col(raw, "properties.status.failureReason")
        df["location"] = _cat(raw, ["properties.location.city", "properties.location.countryOrRegion"])
    else:
        df["timestamp"] = _timestamps(raw["timestamp"])
        df["username"] = _col(raw, "user.name")
        df["event_id"] = _col(raw, "txid")
        df["accessdevicebrowser"] = _col(raw, "access_device.browser")
        df["accessdeviceos"] = _col(raw, "access_device.os")
        df["authdevicename"] = _col(raw, "auth_device.name")
        df["reason"] = _col(raw, "reason")
        res = raw["result"] if "result" in raw.columns else pd.Series([None] * len(raw))
        df["result"] = res.map(lambda v: False if isinstance(v, str) and v in DUO_FALSE else True).astype(bool)
        df["location"] = _cat(raw, ["access_device.location.city", "access_device.location.state",
                                    "access_device.location.country"])
    # Morpheus sorts each batch by timestamp; a stable sort keeps file order for ties.
    df = df.sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    return df, len(files)


def derive(df, source):
    """logcount, locincrement, appincrement per (user, UTC day), in time order (Morpheus' data prep)."""
    day = df["timestamp"].dt.floor("D")
    keys = [df["username"], day]
    df["logcount"] = df.groupby(keys).cumcount().astype(np.int64)

    def increment(col):
        first_seen = ~pd.concat([df["username"], day, df[col]], axis=1).duplicated()
        return first_seen.astype(np.int64).groupby(keys).cumsum().astype(np.int64)

    df["locincrement"] = increment("location")
    if source == "azure":
        df["appincrement"] = increment("appDisplayName")
    return df


# ----------------------------------------------------------------------------- model

def new_model(args):
    return MorpheusAutoEncoder(
        encoder_layers=[512, 500],
        decoder_layers=[512],
        activation="relu",
        swap_p=0.2,
        lr=0.001,
        lr_decay=0.99,
        batch_size=512,
        eval_batch_size=1024,
        optimizer="sgd",
        scaler="standard",
        min_cats=1,
        encoder_dropout=None,
        decoder_dropout=None,
        progress_bar=False,
        verbose=False,
        device=torch.device(args.device),
        logger="basic",
        stock=args.stock,
    )


def feature_losses(model, df):
    """Per row, per feature losses on clean input, from dfencoder 0.0.42's own forward pass and
    loss modules (MSE numeric, BCE binary, cross-entropy categorical), in eval batches."""
    model.eval()
    names = list(model.numeric_fts) + list(model.binary_fts) + list(model.categorical_fts)
    out = []
    with torch.no_grad():
        for start in range(0, len(df), model.eval_batch_size):
            data = model.prepare_df(df.iloc[start:start + model.eval_batch_size])
            num_t, bin_t, codes = model.compute_targets(data)
            num, binp, cat = model.forward(data)
            cols = [model.mse(num, num_t), model.bce(binp, bin_t)]
            cols += [model.cce(cat[i], codes[i].long()).reshape(-1, 1) for i in range(len(codes))]
            out.append(torch.cat(cols, dim=1).cpu().numpy().astype(np.float64))
    return names, np.concatenate(out, axis=0) if out else np.zeros((0, len(names)))


def val_loss(model, val_prepared):
    """Net validation loss on clean input (mean over features of each feature's mean loss),
    averaged over eval batches, as Morpheus' fork computes it for early stopping."""
    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(val_prepared), model.eval_batch_size):
            sl = val_prepared.iloc[start:start + model.eval_batch_size]
            num, binp, cat = model.forward(sl)
            losses.append(model.compute_loss(num, binp, cat, sl, logging=False)[3])
    return float(np.mean(losses))


def train(args, features, rows):
    """Trains one model on `rows` (time order): last 10% validates; returns model and stats."""
    t0 = time.perf_counter()
    x = rows[features]
    n_val = int(math.ceil(VALIDATION_SIZE * len(x))) if len(x) > 1 else 0
    train_df, val_df = x.iloc[:len(x) - n_val], x.iloc[len(x) - n_val:]
    model = new_model(args)
    model.build_model(train_df)
    # The body of dfencoder 0.0.42's AutoEncoder.fit, with Morpheus' early stopping added.
    df = model.prepare_df(train_df)
    val_prepared = model.prepare_df(val_df) if len(val_df) else None
    n_updates = int(math.ceil(len(df) / model.batch_size))
    last = float("inf")
    epochs_run = 0
    for _ in range(args.epochs):
        model.train()
        df = EncoderDataFrame(df.sample(frac=1.0))
        input_df = df.swap(likelihood=model.swap_p)
        model.train_epoch(n_updates, input_df, df)
        if model.lr_decay is not None:
            model.lr_decay.step()
        model.logger.end_epoch()
        epochs_run += 1
        if val_prepared is not None and not args.no_early_stopping:
            current = val_loss(model, val_prepared)
            if current > last:  # patience -1: the first rise stops training
                break
            last = current
    # Loss statistics over the clean training split (population std, std 0 -> 1).
    names, losses = feature_losses(model, train_df)
    mean = losses.mean(axis=0)
    std = losses.std(axis=0)
    std[(std == 0) | ~np.isfinite(std)] = 1.0
    secs = time.perf_counter() - t0
    return model, {"names": names, "mean": mean, "std": std}, {
        "train_rows": len(train_df), "val_rows": len(val_df), "epochs_run": epochs_run, "seconds": secs,
    }


def score(model, stats, rows, features):
    names, losses = feature_losses(model, rows[features])
    z = np.abs((losses - stats["mean"]) / stats["std"])
    return z.max(axis=1), z.mean(axis=1)


# ----------------------------------------------------------------------------- main

def finite(v):
    v = float(v)
    return v if math.isfinite(v) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="directory of AZUREAD_*.json / DUO_*.json + labels.jsonl")
    ap.add_argument("--source", required=True, choices=["azure", "duo"])
    ap.add_argument("--train-days", type=int, required=True, help="first N UTC days train, the rest are scored")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", required=True, help="JSON summary and scores")
    ap.add_argument("--max-users", type=int, default=None,
                    help="keep only the K users with the most training rows (ties by name)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--device", default="cpu", help="torch device (cpu; cuda if the torch build has it)")
    ap.add_argument("--no-generic", action="store_true", help="no generic_user model (users without one are not scored)")
    ap.add_argument("--no-early-stopping", action="store_true", help="always run --epochs epochs")
    ap.add_argument("--stock", action="store_true",
                    help="stock dfencoder 0.0.42: <3-value strings become binary, one backward per loss")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    t_load = time.perf_counter()
    df, n_files = load(args.data, args.source)
    df = derive(df, args.source)
    features = AZURE_FEATURES if args.source == "azure" else DUO_FEATURES
    load_seconds = time.perf_counter() - t_load

    day0 = df["timestamp"].iloc[0].floor("D")
    cutoff = day0 + pd.Timedelta(days=args.train_days)
    is_train = df["timestamp"] < cutoff
    if args.max_users is not None:
        counts = df[is_train].groupby("username").size()
        users = sorted(df["username"].unique(), key=lambda u: (-int(counts.get(u, 0)), u))[:args.max_users]
        df = df[df["username"].isin(set(users))].reset_index(drop=True)
        is_train = df["timestamp"] < cutoff
    train_rows, score_rows = df[is_train], df[~is_train]
    log(f"loaded {len(df)} rows from {n_files} files in {load_seconds:.1f} s; "
        f"{len(train_rows)} train (< {cutoff.isoformat()}), {len(score_rows)} to score; "
        f"{df['username'].nunique()} users")

    models, model_info = {}, []
    t_train = time.perf_counter()
    for user, rows in train_rows.groupby("username", sort=True):
        if len(rows) < MIN_HISTORY:
            continue
        model, stats, info = train(args, features, rows)
        models[user] = (model, stats)
        model_info.append({"user": user, **info})
        log(f"trained {user}: {info}")
    if not args.no_generic and len(train_rows) > 1:
        model, stats, info = train(args, features, train_rows)
        models[GENERIC] = (model, stats)
        model_info.append({"user": GENERIC, **info})
        log(f"trained {GENERIC}: {info}")
    train_seconds_total = time.perf_counter() - t_train
    user_secs = [m["seconds"] for m in model_info if m["user"] != GENERIC]

    t_score = time.perf_counter()
    max_z = pd.Series(np.nan, index=score_rows.index)
    mean_z = pd.Series(np.nan, index=score_rows.index)
    for user, rows in score_rows.groupby("username", sort=True):
        key = user if user in models else GENERIC
        if key not in models:
            continue
        model, stats = models[key]
        mx, mn = score(model, stats, rows, features)
        max_z.loc[rows.index] = mx
        mean_z.loc[rows.index] = mn
    score_seconds = time.perf_counter() - t_score
    scored = max_z.notna() | mean_z.notna()
    n_scored = int(scored.sum())

    kinds = {}  # event_id -> anomaly kind
    labels_path = os.path.join(args.data, "labels.jsonl")
    if os.path.exists(labels_path):
        with open(labels_path) as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    kinds[rec["event_id"]] = rec.get("kind", "anomaly")
    scored_ids = score_rows.loc[scored, "event_id"]
    y = scored_ids.isin(set(kinds)).astype(int).to_numpy()
    s = mean_z[scored].to_numpy()

    def auc_of(mask):
        """roc_auc_score of mean_abs_z over the rows in mask (label 1: listed in labels.jsonl)."""
        if len(set(y[mask].tolist())) != 2 or not np.isfinite(s[mask]).all():
            return None
        from sklearn.metrics import roc_auc_score
        return float(roc_auc_score(y[mask], s[mask]))

    auc = auc_of(np.ones(len(y), dtype=bool))
    row_kind = scored_ids.map(kinds).to_numpy()
    auc_by_kind = {k: auc_of((y == 0) | (row_kind == k))
                   for k in sorted(set(kinds.values())) if (row_kind == k).any()}

    summary = {
        "peer": "dfencoder",
        "version": DFENCODER_VERSION,
        "source": args.source,
        "semantics": "stock-0.0.42" if args.stock else "morpheus-fork",
        "torch": torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "seed": args.seed,
        "epochs": args.epochs,
        "early_stopping": not args.no_early_stopping,
        "train_days": args.train_days,
        "rows_total": int(len(df)),
        "rows_train": int(len(train_rows)),
        "rows_scored": n_scored,
        "anomalies_scored": int(y.sum()),
        "users": int(df["username"].nunique()),
        "users_trained": len(user_secs),
        "generic_model": GENERIC in models,
        "load_seconds": load_seconds,
        "train_seconds_total": train_seconds_total,
        "train_seconds_per_user": (sum(user_secs) / len(user_secs)) if user_secs else None,
        "generic_train_seconds": next((m["seconds"] for m in model_info if m["user"] == GENERIC), None),
        "score_seconds": score_seconds,
        "score_rows_per_s": (n_scored / score_seconds) if score_seconds > 0 else None,
        "roc_auc_mean_abs_z": auc,
        "roc_auc_by_kind": auc_by_kind,  # each kind's anomalies against every normal scored row
        "detections_mean_abs_z_gt_2": int((s > 2.0).sum()),
        "models": model_info,
        "scores": [
            {"event_id": eid, "mean_abs_z": finite(mn), "max_abs_z": finite(mx)}
            for eid, mn, mx in zip(score_rows.loc[scored, "event_id"], mean_z[scored], max_z[scored])
        ],
    }
    with open(args.out, "w") as fh:
        json.dump(summary, fh)
    brief = {k: v for k, v in summary.items() if k not in ("scores", "models")}
    print(json.dumps(brief, indent=1))


if __name__ == "__main__":
    main()
