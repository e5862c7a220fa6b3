"""Running a grid's pending runs: local processes (``workers`` at a time), or one submitit job
array (SLURM where it exists, submitit's local executor elsewhere). Each run records its status
in ``<run>/grid_status.json`` (written atomically) and its log in ``<run>/log.txt``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.errors import UserError
from common.files import write_text
from experiments.grid.spec import STATUS, Grid, Run

LOG_TAIL_LINES = 20


def run_local(grid: Grid, workers: int = 1, retry_failed: bool = False) -> list[Run]:
    """Run the pending runs, ``workers`` at a time (each gets cores / workers threads)."""
    todo = [run for run in grid.runs if _should_run(run, retry_failed)]
    skipped = len(grid.runs) - len(todo)
    print(f"grid {grid.name}: {len(grid.runs)} runs, {len(todo)} to run, {skipped} skipped", file=sys.stderr)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for run, status in zip(todo, pool.map(lambda run: _run_one(run, threads), todo), strict=True):
            print(f"  {run.name}: {status['status']} ({status['seconds']:.0f} s)", file=sys.stderr)
    return todo


def _should_run(run: Run, retry_failed: bool) -> bool:
    status = run.status()["status"]
    if status == "finished" and (run.directory / "metrics.json").is_file():
        return False
    return status != "failed" or retry_failed


def run_slurm(grid: Grid, retry_failed: bool = False) -> list[Run]:
    """Submit the pending runs as one submitit job array and wait for it. On a SLURM cluster
    that is an sbatch array (partition, time, nodes, GPUs per node from the grid's `slurm:`
    section; one task per GPU, so Lightning's devices == ntasks-per-node holds); elsewhere
    submitit's local executor runs the same jobs as local processes."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install -e '.[slurm]'") from None
    todo = [run for run in grid.runs if _should_run(run, retry_failed)]
    print(
        f"grid {grid.name}: {len(grid.runs)} runs, {len(todo)} to submit, {len(grid.runs) - len(todo)} skipped",
        file=sys.stderr,
    )
    if not todo:
        return todo
    s = grid.slurm
    nodes, gpus = int(s.get("nodes", 1)), int(s.get("gpus_per_node", 0))
    executor = submitit.AutoExecutor(folder=grid.directory / ".submitit")
    executor.update_parameters(
        name=f"grid-{grid.name}",
        timeout_min=int(s.get("time_min", 60)),
        nodes=nodes,
        tasks_per_node=max(1, gpus),  # one process per GPU
        gpus_per_node=gpus,
        cpus_per_task=int(s.get("cpus_per_task", os.cpu_count() or 1)),
        **({"mem_gb": s["mem_gb"]} if "mem_gb" in s else {}),
        **({"slurm_partition": s["partition"]} if "partition" in s else {}),
        slurm_array_parallelism=int(s.get("array_parallelism", len(todo))),
    )
    devices = ["--trainer.num_nodes", str(nodes), "--trainer.devices", str(gpus)] if gpus else []
    for run in todo:
        run.directory.mkdir(parents=True, exist_ok=True)
    jobs = executor.map_array(_array_task, [run.args + devices for run in todo], [str(run.directory) for run in todo])
    for run, job in zip(todo, jobs, strict=True):
        _write_status(run, {"status": "submitted", "job_id": job.job_id, "seconds": 0.0})
        print(f"  {run.name}: job {job.job_id}", file=sys.stderr)
    for run, job in zip(todo, jobs, strict=True):
        try:
            job.result()
        except Exception as error:  # noqa: BLE001 - the job itself died (timeout, node failure): record it
            _write_status(run, {"status": "failed", "exit_code": -1, "job_id": job.job_id, "seconds": 0.0,
                                "log_tail": str(error).splitlines()[-LOG_TAIL_LINES:]})  # fmt: skip
        print(f"  {run.name}: {run.status()['status']}", file=sys.stderr)
    return todo


def _array_task(args: list[str], directory: str) -> int:
    """What every task of an array job runs: the training as a child process (it inherits the
    SLURM environment, so Lightning sets up DDP across the tasks); rank 0 records the status."""
    import submitit

    rank = submitit.JobEnvironment().global_rank
    run = Run(Path(directory).name, 0, {}, args, Path(directory))
    status = _run_one(run, threads=int(os.environ.get("SLURM_CPUS_PER_TASK", os.cpu_count() or 1)), record=rank == 0,
                      log_name="log.txt" if rank == 0 else f"log.rank{rank}.txt")  # fmt: skip
    return status["exit_code"]


def _run_one(run: Run, threads: int, record: bool = True, log_name: str = "log.txt") -> dict:
    run.directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CLIP_VARIANTS_TRACEBACK="1")
    command = [sys.executable, "-m", "experiments", *run.args]
    if record:
        _write_status(run, {"status": "running", "command": command, "seconds": 0.0})
    start = time.perf_counter()
    with open(run.directory / log_name, "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    lines = (run.directory / log_name).read_text(errors="replace").splitlines()
    status = {
        "status": "finished" if code == 0 else "failed",
        "exit_code": code,
        "seconds": time.perf_counter() - start,
        "command": command,
        "log_tail": lines[-LOG_TAIL_LINES:] if code else [],
    }
    if record:
        _write_status(run, status)
    return status


def _write_status(run: Run, status: dict) -> None:
    write_text(run.directory / STATUS, json.dumps(status, indent=2) + "\n")
