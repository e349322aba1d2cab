#!/usr/bin/env python3
"""Writes bench/RESULTS.md and bench/results/*.json from the JSON reports of one bench/run.sh run.

    python3 bench/report.py REPORT_DIR OUT_DIR

Every table row shows dfp, its peer measured in the same run, and the ratio. Missing reports
leave their section saying so (the run that should write them failed or was skipped).
"""

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys


def load(d, name):
    path = os.path.join(d, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def cmd(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(out)


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {mem}, {platform.system()} {platform.release()}"


def section_ingest(d):
    r = load(d, "ingest.json")
    if not r:
        return "Not run.\n"
    rows = []
    for s in r["results"]:
        one = next(x for x in s["from_files"] if x["threads"] == 1)
        two = next((x for x in s["from_files"] if x["threads"] == 2), None)
        p = s["phases_1_thread_in_memory"]
        rows.append([
            s["workload"].removeprefix("ingest-"),
            p["full_to_arrow_records_per_s"],
            one["mb_per_s"],
            p["parse_limit_sonic_skip_records_per_s"],
            s["ratio_to_parse_limit"],
            two["records_per_s"] if two else None,
        ])
    return (
        f"{r['users']} users x {r['days']} days of generated logs, JSON arrays to Arrow batches "
        "with the derived columns. The limit: sonic-rs walking every record of the same bytes "
        "without building anything (the fastest parse we found), one thread.\n\n"
        + table(["source", "dfp records/s (1 thread, in memory)", "dfp MB/s (1 thread, files)",
                 "parse limit records/s", "dfp / limit", "dfp records/s (2 threads, files)"], rows)
        + "\n"
    )


def section_windows(d):
    r = load(d, "windows.json")
    if not r:
        return "Not run.\n"
    p = r.get("pathway", {})
    rows = [[r["workload"], r["records"], r["dfp"]["events_per_s"], p.get("events_per_s"),
             r.get("ratio"), r.get("tables_equal")]]
    return (
        "Per user and UTC day: sign-ins, distinct locations, distinct apps, from the same NDJSON "
        f"files ({fmt(r['megabytes'])} MB) to the final table, one thread each. dfp: its "
        "rolling-window state (every row emitted once with its running per-day features); "
        f"Pathway {p.get('version', '?')}: `groupby(user, day).reduce(count, count_distinct, "
        "count_distinct)`, static mode. The two (user, day) tables are compared row by row.\n\n"
        + table(["workload", "events", "dfp events/s", "Pathway events/s", "dfp / Pathway",
                 "same table"], rows)
        + "\n"
    )


def section_model(d):
    out = []
    m = load(d, "model.json")
    if m:
        rows = [[x["threads"], x["gemm_peak_gflops"], x["score_1024_rows_per_s"], x["score_gflops"],
                 x["score_fraction_of_peak"], x["train_step_512_rows_per_s"], x["train_step_gflops"],
                 x["train_step_fraction_of_peak"]] for x in m["results"]]
        out.append(
            f"Achieved GFLOP/s beside this machine's GEMM peak ({m['gemm']}); {m['workload']}, "
            f"{fmt(m['forward_mflop_per_row'])} MFLOP per row forward.\n\n"
            + table(["threads", "GEMM peak GFLOP/s", "scoring rows/s (1024-row batch)", "GFLOP/s",
                     "of peak", "training rows/s (512-row steps)", "GFLOP/s", "of peak"], rows)
        )
    rows = []
    for src in ("azure", "duo"):
        p = load(d, f"parity-{src}.json")
        if not p:
            continue
        w, dt, pt = p["workload"], p["dfp"]["timing"], p.get("dfencoder", {}).get("timing", {})
        dq, pq = p["dfp"]["quality"], p.get("dfencoder", {}).get("quality", {})
        ratios = p.get("ratios", {})
        rows.append([f"{src} ({w['users']} users, {w['epochs']} epochs)", dt["train_seconds_per_model"],
                     pt.get("train_seconds_per_model"), ratios.get("train_speedup_per_model"),
                     dt["score_rows_per_s"], pt.get("score_rows_per_s"),
                     ratios.get("score_speedup_rows_per_s"), dq["roc_auc_mean_abs_z"],
                     pq.get("roc_auc_mean_abs_z")])
    if rows:
        out.append(
            "dfp and dfencoder 0.0.42 (PyTorch on the CPU, the library Morpheus forked) with "
            "Morpheus' hyperparameters on the same generated logs: one model per user with at "
            "least 300 training rows plus generic_user, train 25 days, score 5; both on 2 threads.\n\n"
            + table(["source", "dfp s/model", "dfencoder s/model", "training speed-up", "dfp scoring rows/s",
                     "dfencoder rows/s", "scoring speed-up", "dfp ROC-AUC", "dfencoder ROC-AUC"], rows)
        )
    return "\n\n".join(out) + "\n" if out else "Not run.\n"


def section_e2e(d):
    r = load(d, "e2e-azure.json")
    if not r:
        return "Not run.\n"
    rows = [[x["workers"], x["wall_seconds"], x["events_per_s"], x["peak_rss_mib"], x["models_trained"],
             x["detections"], x["quality"]["roc_auc_mean_abs_z"]] for x in r["runs"]]
    return (
        f"{r['workload']} ({r['records']:,} records, config {r['config']}), each run in its own "
        "process.\n\n"
        + table(["workers", "wall s", "events/s", "peak RSS MiB", "models", "detections", "ROC-AUC"], rows)
        + f"\n\nReference, not measured here: {r['reference']}.\n"
    )


def section_stream(d):
    r = load(d, "stream.json")
    if not r:
        return "Not run.\n"
    rows = [[name, r[key]["events_per_s"], r[key].get("detections")] for name, key in
            [("batch (files)", "batch"), ("stream (Kafka)", "stream"),
             ("stream, checkpoint every epoch", "stream_checkpointed")]]
    lat = [[x["target_events_per_s"], x["checkpoint_every_epoch"], x["achieved_events_per_s"],
            x["latency_ms"]["p50"], x["latency_ms"]["p99"], x["latency_ms"]["max"],
            x["stream_peak_rss_mib"]] for x in r["latency"]["runs"]]
    b = r["burst"]["run"]
    return (
        f"{r['workload']}. Sustained rate, each configuration in its own process; the stream "
        f"over batch ratio is {fmt(r['stream_over_batch_rate'])}.\n\n"
        + table(["run", "events/s", "detections"], rows)
        + f"\n\nLatency ({r['latency']['workload']}):\n\n"
        + table(["target events/s", "checkpointed", "achieved events/s", "p50 ms", "p99 ms", "max ms",
                 "peak RSS MiB"], lat)
        + f"\n\nBurst ({r['burst']['workload']}): peak RSS {fmt(b['stream_peak_rss_mib'])} MiB, "
        f"p99 {fmt(b['latency_ms']['p99'])} ms.\n"
    )


def section_scaling(d):
    def run(name):
        r = load(os.path.join(d, "scaling", name), "e2e-azure.json")
        return (r, r["runs"][0]) if r else (None, None)

    out = []
    for label, names in (("users (30 days)", ["users-20", "users-200", "users-600", "users-2000"]),
                         ("history (200 users)", ["days-15", "users-200", "days-60"])):
        rows, base = [], None
        for n in names:
            r, x = run(n)
            if not r:
                continue
            per_event_ms = 1000 * x["wall_seconds"] / x["events"]
            base = base or per_event_ms
            rows.append([r["workload"], x["events"], x["wall_seconds"], x["events_per_s"],
                         x["peak_rss_mib"], per_event_ms / base])
        if rows:
            out.append(f"Growing {label}, 1 worker, train then score:\n\n" + table(
                ["workload", "events", "wall s", "events/s", "peak RSS MiB",
                 "cost per event vs the smallest"], rows))
    return "\n\n".join(out) + "\n" if out else "Not run.\n"


def section_gpu(d):
    r = load(d, "gpu-summary.json")
    if not r:
        return ("No GPU was lent to the run that wrote this file. On a machine with an NVIDIA "
                "GPU, `bash bench/gpu.sh` runs the conformance suite on CUDA, dfp's GPU "
                "benchmark and the PyTorch peer, and writes target/bench/gpu-summary.json; "
                "re-run `python3 bench/report.py target/bench bench` to add it here.\n")
    rows = [["training", r["work"], r["dfp_training_s"], r["torch_one_user_at_a_time_s"],
             r["training_speedup_vs_one_at_a_time"], r["torch_stacked_s"], r["training_speedup_vs_stacked"]],
            ["scoring rows/s", "", r["dfp_scoring_rows_per_s"], r["torch_scoring_rows_per_s"],
             r["scoring_ratio"], None, None]]
    return (f"{r['device']}; {r['peer']}.\n\n" + table(
        ["", "work", "dfp", "PyTorch one user at a time", "ratio", "PyTorch stacked (bmm)", "ratio"], rows) + "\n")


def section_quality(d):
    """Detection quality (bench/src/bin/quality.rs): its own table, with and without novelty."""
    out = []
    for name, what in (("quality-novelty.json", "Generated logs with benign novelty (the default)"),
                       ("quality-stable.json", "Generated users with stable habits (`--novelty off`)")):
        r = load(d, name)
        if r:
            out.append(f"{what}; {r['workload']}. Targets: {r['targets']}.\n\n{r['table']}")
    return "\n".join(out) if out else "Not run.\n"


def section_drift(d):
    """Drift statistics against Evidently (bench/src/bin/drift.rs)."""
    r = load(d, "drift.json")
    if not r:
        return "Not run.\n"
    rows = [[f["feature"], f["dfp"]["psi"], f["evidently_same_binning"]["psi"], f["evidently_own_binning"]["psi"],
             f["dfp"]["js"], f["evidently_same_binning"]["js"], f["dfp"]["ks"], f["scipy_ks"],
             f["verdicts_agree"]] for f in r["features"]]
    return (f"{r['reference_rows']} reference and {r['current_rows']} current rows per feature; Evidently "
            f"{r['evidently_version']}. PSI verdicts at {r['psi_threshold']} agree on {r['verdicts_agree']}; "
            f"largest difference at the same binning {fmt(r['largest_gap_same_binning'])}.\n\n" + table(
                ["feature", "dfp PSI", "Evidently PSI (dfp's deciles)", "Evidently PSI (its bins)", "dfp JS",
                 "Evidently JS (dfp's deciles)", "dfp KS", "scipy KS", "verdicts agree"], rows) + "\n")


def section_serve(d):
    """dfp serve on a real nats-server beside the batch pipeline (bench/src/bin/serve.rs)."""
    r = load(d, "serve.json")
    if not r:
        return "Not run.\n"
    rows = []
    for suffix, where in (("", "file"), ("_memory", "memory")):
        one, b = r.get("single" + suffix), r.get("batched" + suffix)
        if not one or not b:
            continue
        rows.append([f"single records, {fmt(one['rate_per_s'])}/s for {fmt(one['seconds'])} s; state: {where}",
                     f"p50 {fmt(one['p50_ms'])} ms, p99 {fmt(one['p99_ms'])} ms, max {fmt(one['max_ms'])} ms "
                     f"(sends late by up to {fmt(one['send_late_p99_ms'])} ms at p99)",
                     f"{one['answered']} answered, {one['busy']} busy, {one['errors']} errors, "
                     f"{one['no_reply']} no reply"])
        rounds = ", ".join(fmt(x) for x in b.get("rounds_records_per_s", [b["records_per_s"]]))
        runs = ", ".join(fmt(x) for x in b.get("batch_pipeline_runs_rows_per_s", [b["batch_pipeline_rows_per_s"]]))
        rows.append([f"batches of {b['batch']} records, 4 in flight (best round); state: {where}",
                     f"{fmt(b['records_per_s'])} records/s (rounds: {rounds}); batch pipeline "
                     f"{fmt(b['batch_pipeline_rows_per_s'])} rows/s (best of {runs}); ratio {fmt(b['ratio'])}",
                     f"{b['scored']} of {b['records']} scored"])
    burst = r["burst"]
    rows.append([f"burst: {fmt(burst['rate_per_s'])}/s for {fmt(burst['seconds'])} s; state: file",
                 f"peak RSS {fmt(burst['peak_rss_mib_before'])} -> {fmt(burst['peak_rss_mib_after'])} MiB",
                 f"{burst['answered']} answered, {burst['busy']} busy, {burst['no_reply']} no reply"])
    return (f"One `dfp serve` instance, nats-server 2.9 with JetStream (a fresh one per storage), the client "
            f"in the benchmark's process, all on this machine; {r['users']} users, {r['records']} records of a "
            f"week. State: where the state stream keeps users' state (`--state-storage`).\n\n"
            + table(["workload", "figures", "answers"], rows) + "\n")


def section_targets(d):
    """The issue's targets, each against this run's figure."""
    rows = []
    ing = load(d, "ingest.json")
    if ing:
        for x in ing["results"]:
            v = x["ratio_to_parse_limit"]
            rows.append([f"ingest {x['workload'].removeprefix('ingest-')}: >= 50% of the parse limit", v, v >= 0.5])
    w = load(d, "windows.json")
    if w and "ratio" in w:
        rows.append(["rolling aggregates: >= 5x Pathway", w["ratio"], w["ratio"] >= 5])
    for src in ("azure", "duo"):
        p = load(d, f"parity-{src}.json")
        if not p or "ratios" not in p:
            continue
        r = p["ratios"]
        rows.append([f"model {src}: scoring >= 10x dfencoder", r["score_speedup_rows_per_s"],
                     r["score_speedup_rows_per_s"] >= 10])
        rows.append([f"model {src}: training about 3x dfencoder at equal epochs", r["train_speedup_per_model"],
                     r["train_speedup_per_model"] >= 2.5])
        rows.append([f"model {src}: ROC-AUC >= dfencoder's (difference)", r["roc_auc_dfp_minus_dfencoder"],
                     r["roc_auc_dfp_minus_dfencoder"] >= 0])
    sv = load(d, "serve.json")
    if sv:
        for suffix, where in (("", "file"), ("_memory", "memory")):
            one, b = sv.get("single" + suffix), sv.get("batched" + suffix)
            if not one or not b:
                continue
            rows.append([f"serve ({where} state): single-record p99 < 5 ms at {fmt(one['rate_per_s'])}/s",
                         one["p99_ms"], one["p99_ms"] < 5])
            rows.append([f"serve ({where} state): batched >= half the batch pipeline's scoring throughput",
                         b["ratio"], b["ratio"] >= 0.5])
        rows.append(["serve: a 10x burst answered or refused busy, memory bounded (no-reply count)",
                     sv["burst"]["no_reply"], sv["burst"]["no_reply"] == 0])
    if not rows:
        return "Nothing measured.\n"
    return table(["target", "this run", "met"], rows) + "\n"


def main():
    d, out = sys.argv[1], sys.argv[2]
    results = os.path.join(out, "results")
    os.makedirs(results, exist_ok=True)
    reports = ["ingest.json", "windows.json", "model.json", "parity-azure.json", "parity-duo.json",
               "e2e-azure.json", "stream.json", "quality-novelty.json", "quality-stable.json", "drift.json", "serve.json",
               "gpu-summary.json", "gpu-dfp.json", "gpu-torch.json"]
    reports += [os.path.join("scaling", n, "e2e-azure.json") for n in sorted(
        os.listdir(os.path.join(d, "scaling")))] if os.path.isdir(os.path.join(d, "scaling")) else []
    for rel in reports:
        if os.path.exists(os.path.join(d, rel)):
            target = os.path.join(results, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(d, rel), target)
    commands = open(os.path.join(d, "commands.txt")).read().strip() if os.path.exists(
        os.path.join(d, "commands.txt")) else "?"
    pw = cmd(os.path.join("target", "peers", "pathway-venv", "bin", "python"), "-c",
             "import pathway; print(pathway.__version__)")
    torch = cmd(os.path.join("target", "peers", "dfencoder-venv", "bin", "python"), "-c",
                "import torch; print(torch.__version__)")
    doc = f"""# dfp benchmarks

Written by `bash bench/run.sh` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.
Each row is dfp beside its peer measured in the same run on this machine; ratios > 1 favour dfp
unless a column says otherwise. The JSON reports are in `bench/results/`.

- Machine: {machine()}
- dfp: git {cmd('git', 'rev-parse', '--short', 'HEAD')}, {cmd('rustc', '--version')}
- Peers: Pathway {pw}; dfencoder 0.0.42 on torch {torch} (CPU); sonic-rs (parse limit)

## Against the targets

{section_targets(d)}
## 1. Ingest

{section_ingest(d)}
## 2. Per-user rolling aggregates

{section_windows(d)}
## 3. Model: training and scoring

{section_model(d)}
## 4. End to end

{section_e2e(d)}
## 5. Streaming

{section_stream(d)}
## 6. Scaling of cost

{section_scaling(d)}
## 7. Detection quality

{section_quality(d)}
## 8. Drift statistics against Evidently

{section_drift(d)}
## 9. Online scoring (dfp serve)

{section_serve(d)}
## GPU

{section_gpu(d)}
## Commands

```
{commands}
```
"""
    # Paths inside the repository are written relative to it: the results name no directory of
    # the machine they ran on.
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    doc = doc.replace(root + os.sep, "").replace(root, ".")
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write(doc)
    print(os.path.join(out, "RESULTS.md"))


if __name__ == "__main__":
    main()
