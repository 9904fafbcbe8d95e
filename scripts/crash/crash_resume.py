#!/usr/bin/env python3
"""Crash-consistency test for a program that checkpoints: kill it with SIGKILL at random points
(at random times, and in the middle of atomic file writes) and resume it, again and again, until
it finishes; its results must equal those of an uninterrupted run.

    crash_resume.py --work DIR [--kills 4] [--write-kills 2] [--seed 1] [--shim libshim.so]
                    [--compare results.json ...] [--ignore 'seconds'] -- COMMAND ... {out} ...

COMMAND is run with {out} replaced by an output folder and must continue from its checkpoints in
that folder by itself (e.g. it includes --resume). Steps:
  1. the reference: COMMAND once, uninterrupted, into DIR/reference;
  2. the same COMMAND into DIR/interrupted, killed per the schedule (time kills at a random
     fraction of the reference's duration; write kills through the LD_PRELOAD shim, during the
     k-th write to, or before the k-th rename of, a temporary file), then run to the end;
  3. each --compare file of the two folders: JSON compared value by value and CSV cell by cell,
     except keys / columns matching --ignore (timings); anything else byte by byte.
Exit status 0 when they are equal and at least one kill landed; the summary line counts the
kills that landed ("cycles").
"""
import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time


def run(command, out, env_extra=None, kill_after=None, log=None):
    """Runs command with {out} substituted; kills its process group after kill_after seconds.
    Returns (exit status or None when killed by us or by the shim, seconds)."""
    argv = [a.replace("{out}", out) for a in command]
    env = dict(os.environ)
    env.update(env_extra or {})
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        code = proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, time.monotonic() - start
    if code == -signal.SIGKILL:  # the shim killed it
        return None, time.monotonic() - start
    return code, time.monotonic() - start


def strip_json(value, ignore):
    if isinstance(value, dict):
        return {k: strip_json(v, ignore) for k, v in value.items() if not ignore.search(k)}
    if isinstance(value, list):
        return [strip_json(v, ignore) for v in value]
    return value


def read_for_compare(path, ignore):
    if path.endswith(".json"):
        with open(path) as f:
            return strip_json(json.load(f), ignore)
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [i for i, name in enumerate(rows[0]) if not ignore.search(name)] if rows else []
        return [[r[i] for i in keep] for r in rows]
    with open(path, "rb") as f:
        return f.read()


def first_difference(a, b, where=""):
    if type(a) is not type(b):
        return f"{where or '/'}: {a!r} vs {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}/{k}: present in only one"
            d = first_difference(a[k], b[k], f"{where}/{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where or '/'}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where or '/'}: {a!r} (uninterrupted) vs {b!r} (killed and resumed)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="folder for both runs (emptied first)")
    ap.add_argument("--kills", type=int, default=4, help="kills at random times")
    ap.add_argument("--write-kills", type=int, default=2, help="kills during a temporary-file write or before its rename (needs --shim)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shim", help="crash_shim shared library (LD_PRELOAD)")
    ap.add_argument("--compare", action="append", default=None, help="file in the output folder to compare (default results.json)")
    ap.add_argument("--ignore", default="seconds|time", help="regex of JSON keys / CSV columns left out of the comparison")
    ap.add_argument("--max-attempts", type=int, default=100)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command or not any("{out}" in c for c in command):
        ap.error("give the command after '--', with {out} where the output folder goes")
    if a.write_kills and not a.shim:
        ap.error("--write-kills needs --shim")
    compare = a.compare or ["results.json"]
    ignore = re.compile(a.ignore)
    rng = random.Random(a.seed)

    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    ref_out, int_out = os.path.join(a.work, "reference"), os.path.join(a.work, "interrupted")
    count_file = os.path.join(a.work, "writes.txt")
    with open(os.path.join(a.work, "reference.log"), "w") as log:
        env = {"LD_PRELOAD": a.shim, "DISTILL_CRASH_COUNT": count_file} if a.shim else {}
        code, ref_seconds = run(command, ref_out, env, log=log)
    if code != 0:
        sys.exit(f"crash_resume: the uninterrupted run failed with exit status {code} (see {a.work}/reference.log)")
    writes = 0
    if a.shim and os.path.exists(count_file):
        # one line per process that loaded the shim (the program, and any child it started)
        writes = max(int(w) for w in re.findall(r"writes=(\d+)", open(count_file).read()))

    # The schedule. Time kills: points spread over the reference's duration, each attempt killed
    # after the time from the previous point (an attempt also repeats its start-up and the
    # unfinished epoch, so the run is still going at every kill). Write kills: at one of the
    # first few temporary-file writes or renames of the attempt (early, so they land).
    points = sorted(rng.uniform(0.05, 0.95) * ref_seconds for _ in range(a.kills))
    schedule = [("time", max(t - prev, 0.02 * ref_seconds)) for prev, t in zip([0.0] + points, points)]
    for i in range(a.write_kills):  # alternately torn temporary files and complete ones not yet renamed
        schedule.append((["write", "rename"][i % 2], rng.randint(1, max(1, min(3, writes // 2)))))
    rng.shuffle(schedule)

    landed = {"time": 0, "write": 0, "rename": 0}
    attempts = 0
    finished = False
    with open(os.path.join(a.work, "interrupted.log"), "w") as log:
        for kind, when in schedule:
            attempts += 1
            env = {"LD_PRELOAD": a.shim} if a.shim else {}
            if kind == "write":
                env["DISTILL_CRASH_WRITE"] = str(when)
            if kind == "rename":
                env["DISTILL_CRASH_RENAME"] = str(when)
            log.write(f"\n=== attempt {attempts}: kill at {kind} {when:.3g}\n" if kind == "time" else f"\n=== attempt {attempts}: kill at {kind} #{when}\n")
            log.flush()
            code, _ = run(command, int_out, env, kill_after=when if kind == "time" else None, log=log)
            if code is None:
                landed[kind] += 1
                continue
            if code != 0:
                sys.exit(f"crash_resume: a resumed run failed with exit status {code} (see {a.work}/interrupted.log)")
            finished = True
            break
        while not finished:
            attempts += 1
            if attempts > a.max_attempts:
                sys.exit("crash_resume: the run did not finish")
            log.write(f"\n=== attempt {attempts}: to the end\n")
            log.flush()
            code, _ = run(command, int_out, {"LD_PRELOAD": a.shim} if a.shim else {}, log=log)
            if code is None or code != 0:
                sys.exit(f"crash_resume: the final resumed run failed with exit status {code} (see {a.work}/interrupted.log)")
            finished = True

    cycles = sum(landed.values())
    summary = (f"crash_resume: {cycles} kill/resume cycles ({landed['time']} at random times, {landed['write']} during a "
               f"temporary-file write, {landed['rename']} before a rename), {attempts} runs, reference {ref_seconds:.1f} s")
    for name in compare:
        ref = read_for_compare(os.path.join(ref_out, name), ignore)
        got = read_for_compare(os.path.join(int_out, name), ignore)
        diff = first_difference(ref, got)
        if diff:
            print(summary)
            sys.exit(f"crash_resume: {name} differs after kill and resume: {diff}")
    if cycles == 0:
        print(summary)
        sys.exit("crash_resume: no kill landed (the run is too short for the schedule)")
    print(summary + "; " + ", ".join(compare) + " equal to the uninterrupted run's")


if __name__ == "__main__":
    main()
