"""``python -m experiments fit --config experiments/configs/clip.yaml [--key value ...]``, or
``python -m experiments grid experiments/grids/<name>.yaml`` (see experiments/grid/).

User mistakes (a bad key or value, an unknown class_path, an incompatible setting, a
non-finite loss) end with one line on stderr and exit code 2; set CLIP_VARIANTS_TRACEBACK=1
to see the traceback instead.
"""

from __future__ import annotations

import sys

from jsonargparse import ArgumentError

from common.errors import exit_on_user_error


def _destroy_process_group() -> None:
    """End a distributed run's process group while the interpreter is alive. Left to exit,
    gloo's worker threads can still hold tensors when Python finalises, and the process aborts
    ("terminate called without an active exception") after all its work is done
    (pytorch/pytorch#190489). Only after a run that ended normally: on an error, another rank
    may still wait in a collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(args: list[str]) -> None:
    if args[:1] == ["grid"]:  # an ablation grid of runs (experiments/grid/)
        from experiments.grid import main as grid

        grid(args[1:])
        return
    from experiments.cli import CLI

    CLI(args=args)
    _destroy_process_group()


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    exit_on_user_error(lambda: run(args), also=(ArgumentError,), hint=" (see: python -m experiments fit --help)")


if __name__ == "__main__":
    main()
