#!/usr/bin/env python3
"""Pathway peer of dfp's rolling-aggregate benchmark (bench/src/bin/windows.rs).

Reads a directory of Azure AD sign-in records as NDJSON (one record per line, the nested
Azure shape), and computes per (user, UTC day) the number of sign-ins, the distinct locations
("city, countryOrRegion", as dfp's Azure schema builds `location`) and the distinct apps, with
Pathway's groupby/reduce in static mode on one thread. Writes the table as CSV
(user,day,count,locations,apps, sorted) and prints JSON with the time from reading the files to
the written result.

    python pathway_windows.py NDJSON_DIR OUT.csv
"""

import csv
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("PATHWAY_THREADS", "1")

import pathway as pw  # noqa: E402


class Record(pw.Schema):
    user: str
    time: str
    city: str
    country: str
    app: str


def main():
    src, out = sys.argv[1], sys.argv[2]
    raw = tempfile.NamedTemporaryFile(suffix=".csv", delete=False).name
    start = time.perf_counter()
    t = pw.io.jsonlines.read(
        src,
        schema=Record,
        mode="static",
        json_field_paths={
            "user": "/properties/userPrincipalName",
            "time": "/time",
            "city": "/properties/location/city",
            "country": "/properties/location/countryOrRegion",
            "app": "/properties/appDisplayName",
        },
    )
    rows = t.select(
        user=pw.this.user,
        day=pw.this.time.str.slice(0, 10),
        location=pw.this.city + ", " + pw.this.country,
        app=pw.this.app,
    )
    daily = rows.groupby(pw.this.user, pw.this.day).reduce(
        pw.this.user,
        pw.this.day,
        count=pw.reducers.count(),
        locations=pw.reducers.count_distinct(pw.this.location),
        apps=pw.reducers.count_distinct(pw.this.app),
    )
    pw.io.csv.write(daily, raw)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    seconds = time.perf_counter() - start

    # Pathway's CSV is a change log (time, diff): keep the rows whose diffs sum to 1.
    live = {}
    with open(raw, newline="") as f:
        for r in csv.DictReader(f):
            key = (r["user"], r["day"], r["count"], r["locations"], r["apps"])
            live[key] = live.get(key, 0) + int(r["diff"])
    os.unlink(raw)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "day", "count", "locations", "apps"])
        for key in sorted(k for k, n in live.items() if n > 0):
            w.writerow(key)
    print(json.dumps({"seconds": seconds, "version": pw.__version__, "threads": 1}))


if __name__ == "__main__":
    main()
