"""`make run` wall time with torch's default thread pool vs one thread, idle and beside N
busy processes (``python -m benchmarks.quickstart_threads --out DIR``).

Each point is one fresh ``learnreg run configs/quickstart.yaml`` subprocess. The load is
controlled: ``--load N`` starts N processes spinning on the CPU beside the run (at the
same niceness), so a machine with ``c`` cores and N busy processes leaves the run about
``c / (N + 1)`` of each core it would want. Settings:

* ``default``: ``LEARNREG_THREADS=0`` (torch's default, one intra-op thread per core), the
  OpenMP runtime's own wait policy: what ``make run`` did before threads were configured.
* ``passive``: the same pool with ``OMP_WAIT_POLICY=PASSIVE`` (idle workers sleep).
* ``one``: ``LEARNREG_THREADS=1``, the default now.

Settings alternate within each repeat so that they see the same outside conditions; the
1-minute load average before each point is recorded with it (a shared machine is never
quite idle: read the load column). Results are appended to ``DIR/results.jsonl`` as each
point finishes and a re-run skips the points already there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "default": {"LEARNREG_THREADS": "0", "OMP_WAIT_POLICY": ""},
    "passive": {"LEARNREG_THREADS": "0", "OMP_WAIT_POLICY": "PASSIVE"},
    "one": {"LEARNREG_THREADS": "1", "OMP_WAIT_POLICY": ""},
}
SPIN = "while True: pass"


def run_point(
    config: str, setting: str, load: int, out: Path, overrides: list[str], timeout=None
) -> dict:
    """One quickstart run beside ``load`` busy processes; wall and CPU seconds (a run
    still going after ``timeout`` seconds is stopped and recorded as timed out)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(SETTINGS[setting], WANDB_MODE="offline", WANDB_SILENT="true")
    shutil.rmtree(out, ignore_errors=True)
    busy = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(load)]
    try:
        time.sleep(1.0 if load else 0.0)  # let the busy processes reach the scheduler
        loadavg = os.getloadavg()[0]
        started = time.perf_counter()
        command = [sys.executable, "-m", "learnreg.cli", "run", config, *overrides]
        proc = subprocess.Popen(
            [*command, "--out", str(out), "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            wall = time.perf_counter() - started
            if pid:
                break
            if timeout is not None and wall > timeout:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    row = {"setting": setting, "load": load, "loadavg_before": round(loadavg, 2)}
    if timeout is not None and wall > timeout:
        cpu = round(usage.ru_utime + usage.ru_stime, 1)
        return {**row, "timed_out": True, "wall_s": round(wall, 1), "cpu_s": cpu}
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{setting} load {load}: the run failed (status {status}); see {out}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "setting": setting,
        "load": load,
        "loadavg_before": round(loadavg, 2),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "meta_train_s": round(summary["meta_train_seconds"], 1),
        "meta_test_s": round(summary["meta_test_seconds"], 1),
        "overrides": " ".join(overrides),
    }


def table(rows: list[dict]) -> str:
    """Medians per (load, setting), with n and the load averages seen."""
    lines = [
        "| busy processes | setting | n | wall s | CPU s | meta-train s | meta-test s | load avg before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["load"], r["setting"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for load, setting in keys:
        group = [r for r in rows if r["load"] == load and r["setting"] == setting]

        def med(key, group=group):
            if any(r.get("timed_out") for r in group):  # stopped: a lower bound at most
                return (
                    f"> {min(r['wall_s'] for r in group):.0f} (stopped)" if key == "wall_s" else "-"
                )
            return f"{statistics.median(r[key] for r in group):.1f}"

        seen = ", ".join(f"{r['loadavg_before']:.2f}" for r in group)
        lines.append(
            f"| {load} | {setting} | {len(group)} | {med('wall_s')} | {med('cpu_s')} | "
            f"{med('meta_train_s')} | {med('meta_test_s')} | {seen} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="results and run directories")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 2], help="busy processes")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds before a point is stopped and recorded as such",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    rows = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    )
    print(f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, {args.config}")
    for rep in range(args.repeats):
        for load in args.loads:
            for setting in args.settings:
                if any(
                    r["setting"] == setting and r["load"] == load and r["repeat"] == rep
                    for r in rows
                ):
                    continue
                row = run_point(
                    args.config, setting, load, out / "runs" / setting, args.overrides, args.timeout
                )
                row["repeat"] = rep
                rows.append(row)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
