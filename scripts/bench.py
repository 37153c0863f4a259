#!/usr/bin/env python3
"""make bench: how fast botlxc is on this host, measured, never asserted.

Times (median of N runs, wall clock) for: a dry-run plan of a new tenant, `status`, a
converged `up` (the zero-change path), and one fresh containers-only tenant up and down.
With --services it also times a full tenant up (PostgreSQL, rclone S3, Valkey) once, then
the day-2 operations on it: snapshot create and restore, doctor, and a clone.
Creates only uniquely named bench tenants and destroys them (data included) at the end.
"""
import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def botlxc(*args):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "botlxc.py"), *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit("bench: botlxc %s failed:\n%s" % (" ".join(args), proc.stderr))
    return time.perf_counter() - started


def median(func, runs):
    return statistics.median(func() for _ in range(runs))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--services", action="store_true", help="also time a full tenant")
    args = parser.parse_args()
    tenant = "bench" + secrets.token_hex(3)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = str(Path(tmp) / "stack")
        common = ("--tenant", tenant, "--stack-dir", stack)
        try:
            results.append(("plan (dry-run, new tenant)", median(
                lambda: botlxc("up", *common, "--dry-run"), args.runs)))
            results.append(("up, containers only, fresh", botlxc("up", *common,
                                                                 "--containers-only")))
            results.append(("up, converged (0 changes)", median(
                lambda: botlxc("up", *common, "--containers-only"), args.runs)))
            results.append(("status", median(lambda: botlxc("status", "--tenant", tenant),
                                             args.runs)))
            results.append(("down", botlxc("down", "--tenant", tenant)))
            if args.services:
                results.append(("up, full services, fresh", botlxc("up", *common)))
                results.append(("up, full services, converged", median(
                    lambda: botlxc("up", *common), args.runs)))
                results.append(("status with health", median(
                    lambda: botlxc("status", "--tenant", tenant), args.runs)))
                results.append(("snapshot create (3 containers + data)",
                                botlxc("snapshot", "create", "b1", "--tenant", tenant)))
                results.append(("snapshot restore", botlxc("snapshot", "restore", "b1",
                                                           "--tenant", tenant)))
                results.append(("doctor", median(
                    lambda: botlxc("doctor", "--tenant", tenant), args.runs)))
                results.append(("clone --to a new tenant", botlxc(
                    "clone", "--to", tenant + "c", "--tenant", tenant,
                    "--stack-dir", str(Path(tmp) / "clone"))))
        finally:
            for name in (tenant, tenant + "c"):
                subprocess.run([sys.executable, str(ROOT / "botlxc.py"), "destroy", "--tenant",
                                name, "--purge-data", "--yes"], capture_output=True)
    width = max(len(name) for name, _ in results)
    print("%-*s  %s" % (width, "operation", "seconds"))
    for name, seconds in results:
        print("%-*s  %7.2f" % (width, name, seconds))


if __name__ == "__main__":
    main()
