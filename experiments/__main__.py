"""``python -m experiments fit --config experiments/configs/clip.yaml [--key value ...]``, or
``python -m experiments grid experiments/grids/<name>.yaml`` (see experiments/grid.py).

User mistakes (a bad key or value, an unknown class_path, an incompatible setting, a
non-finite loss) end with one line on stderr and exit code 2; set CLIP_VARIANTS_TRACEBACK=1
to see the traceback instead.
"""

from __future__ import annotations

import os
import re
import sys

from jsonargparse import ArgumentError

from variants.errors import UserError

# Lines of jsonargparse's nested reasons that say nothing the user can act on: the alternatives
# of Optional[...] types, the union bookkeeping, the echo of the given value.
_NOISE = re.compile(
    r"Expected a path but|Does not validate against any of the Union subtypes|Subtypes: |Errors:$"
    r"|Expected a <class 'NoneType'>|Given value type: |Given value: "
)


def one_line(error: BaseException) -> str:
    """The informative lines of a (possibly nested) error message, on one line."""
    lines = [line.strip(" -") for line in str(error).splitlines()]
    return " ".join(line for line in lines if line and not _NOISE.match(line))


def _destroy_process_group() -> None:
    """End a distributed run's process group while the interpreter is alive. Left to exit,
    gloo's worker threads can still hold tensors when Python finalises, and the process aborts
    ("terminate called without an active exception") after all its work is done (seen in ~1 of
    6 two-process CPU fits; pytorch/pytorch#190489). Only after a run that ended normally: on an
    error, another rank may still wait in a collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    try:
        if args[:1] == ["grid"]:  # an ablation grid of runs (experiments/grid.py)
            from experiments.grid import main as grid

            grid(args[1:])
            return
        from experiments.cli import CLI

        CLI(args=args)
        _destroy_process_group()
    except (UserError, ArgumentError) as error:
        if os.environ.get("CLIP_VARIANTS_TRACEBACK"):
            raise
        hint = "" if isinstance(error, UserError) else " (see: python -m experiments fit --help)"
        print(f"error: {one_line(error)}{hint}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
