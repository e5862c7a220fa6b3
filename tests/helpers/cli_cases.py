"""Run several ``python -m experiments`` / ``python -m analysis`` command lines in ONE
interpreter: each case calls the package's entry point ``<package>.__main__.main`` with its
command line in ``sys.argv``, in its own working directory, with stderr captured as the shell
would see it. The bad-input tests share this process, so a dozen cases pay for one interpreter
start (importing torch, Lightning and timm) instead of a dozen.

    python -m helpers.cli_cases < cases.json   # [{"package", "args", "cwd"}] -> JSON results
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
import traceback


def run_case(package: str, args: list[str], cwd: str) -> dict:
    main = importlib.import_module(f"{package}.__main__").main
    stderr = io.StringIO()
    os.chdir(cwd)
    sys.argv = [f"python -m {package}", *args]
    code: object = 0
    with contextlib.redirect_stderr(stderr):
        try:
            main()
        except SystemExit as exit:
            code = exit.code
        except Exception:  # noqa: BLE001 - what the shell would see: a traceback and exit status 1
            traceback.print_exc()
            code = 1
    return {"returncode": code, "stderr": stderr.getvalue()}


def run_cases(cases: list[dict], repo: str, timeout: int = 600) -> list[dict]:
    """Run ``cases`` (dicts with package, args, cwd) in one fresh interpreter; their outcomes."""
    import subprocess

    tests = os.path.join(repo, "tests")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, tests]), CLIP_VARIANTS_TRACEBACK="")
    result = subprocess.run(
        [sys.executable, "-m", "helpers.cli_cases"],
        input=json.dumps(cases), env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    cases = json.load(sys.stdin)
    results = [run_case(case["package"], case["args"], case["cwd"]) for case in cases]
    print("\n" + json.dumps(results))
