"""Peak memory of a command and of every process it starts (data workers, DDP ranks), Linux only.

    ../.venv/bin/python peak_memory.py -- <command ...>

    ../.venv/bin/python peak_memory.py --pid PID   # a process already running, until it exits

Polls /proc every half second: the largest sum over the command's process tree, seen at one poll,
of the resident memory (VmRSS, which counts a page shared by two processes, such as a batch a
data worker hands over through shared memory, in both) and of the proportional set size (Pss, from
smaps_rollup: a shared page split among its processes, so the tree's sum is the memory it holds);
and each process's own high-water mark (VmHWM, exact for that process; the sums are sampled, so a
peak shorter than the interval can be missed). Used for issue 30's 65,536-batch fit
(benchmarks/RESULTS.md, "Chunked InfoNCE and sigmoid losses").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def _status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and Pss of ``pid`` in KiB (empty once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        lines += Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if line.startswith(("VmRSS:", "VmHWM:", "Pss:")))
    return {name: int(value.split()[0]) for name, value in fields}


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, read from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--pid", type=int, help="watch this running process instead of starting a command")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command and args.pid is None:
        parser.error("give the command to measure after --, or --pid")
    process = subprocess.Popen(command) if args.pid is None else None
    root = process.pid if process is not None else args.pid
    running = (lambda: process.poll() is None) if process is not None else (lambda: Path(f"/proc/{root}").exists())
    peak = {"VmRSS": 0, "Pss": 0}
    hwm: dict[int, int] = {}
    while running():
        statuses = {pid: _status(pid) for pid in _tree(root)}
        for name in peak:
            peak[name] = max(peak[name], sum(s.get(name, 0) for s in statuses.values()))
        hwm.update({pid: s["VmHWM"] for pid, s in statuses.items() if "VmHWM" in s})
        time.sleep(args.interval)
    gib = 1024**2
    code = process.returncode if process is not None else "unknown (watched)"
    print(
        f"exit {code}; peak of the tree's summed RSS: {peak['VmRSS'] / gib:.2f} GiB, "
        f"summed Pss: {peak['Pss'] / gib:.2f} GiB",
        file=sys.stderr,
    )
    for pid, mark in sorted(hwm.items()):
        role = "command" if pid == root else "child"
        print(f"  pid {pid} ({role}): VmHWM {mark / gib:.2f} GiB", file=sys.stderr)
    sys.exit(process.returncode if process is not None else 0)


if __name__ == "__main__":
    main()
