"""``python -m analysis <command> --ckpt PATH [--suite ...] [--out DIR]``

    embed      embeddings (+ metadata) of every suite  -> OUT/embeddings/<suite>.pt
    zeroshot   zero-shot classification, retrieval, linear probes  -> OUT/zeroshot.json; your own
               benchmark as a CLIP_benchmark dataset folder: --suite clip_benchmark:DIR
    geometry   PCA, modality gap and its shift, uniformity/alignment, t-SNE  -> OUT/geometry.json
    probes     text-only pair similarities, grounded caption selection  -> OUT/probes.json
    consistency  CyCLIP's consistency of the zero-shot and k-NN classifiers  -> OUT/consistency.json
    explain    heat maps (Grad-CAM, attention relevance, word-patch alignment) and word
               importance; a pointing game against ShapesWorld's object positions  -> OUT/explain.json,
               or one pair with --image PATH --text "..."  -> OUT/explain/<caption>.png
    report     zeroshot, geometry and probes + OUT/report.md + the run's TensorBoard
    export     ``--format open_clip | onnx | clip_benchmark``: the checkpoint as an open_clip model
               (config, weights, tokenizer), its towers as ONNX graphs, or the --suite classification
               suites as CLIP_benchmark datasets  -> OUT (default <run>/export/<format>)
    search     ``--images DIR (--text "..." | --image PATH) [--k 10]``: the folder's images ranked
               by the query through a FAISS index (cached)  -> OUT/search.{json,html}
    compare    ``python -m analysis compare runs/<grid>``: runs' TensorBoard curves and final
               metrics by group (seeds pooled)  -> compare.{json,md,png}
    claims     ``python -m analysis claims runs [--out docs/claims] [--plan] [--readme README.md]``:
               each paper's claim from its claim experiment under the verdict protocol: paired
               effect, 95% interval, Holm-adjusted p, verdict  -> claims.{md,json}, table.md

--ckpt takes a .ckpt file or a run directory (its newest checkpoints/last.ckpt). OUT defaults
to <run directory>/analysis. A user mistake prints one ``error:`` line and exits with 2
(CLIP_VARIANTS_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from common.errors import UserError, exit_on_user_error

COMMANDS = ("embed", "zeroshot", "geometry", "probes", "consistency", "explain", "report", "export", "search")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    from analysis.suite_specs import SPECS

    main = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[1])
    commands = main.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join((*COMMANDS, "compare", "claims")) + "}"
    )
    for name in COMMANDS:
        sub = commands.add_parser(name)
        sub.add_argument("--ckpt", required=True, help="a .ckpt file or a run directory")
        where = "<run dir>/export/<format>" if name == "export" else "<run dir>/analysis"
        sub.add_argument("--out", help=f"output directory (default: {where})")
        if name == "export":
            from analysis.export import FORMATS

            sub.add_argument("--format", required=True, choices=FORMATS)
            sub.add_argument("--name", help="open_clip: the model's name (default: cv-<run>)")
            sub.add_argument(
                "--model-dir", dest="model_dir", help="clip_benchmark: the open_clip export its commands name"
            )
        if name == "search":
            sub.add_argument("--images", required=True, help="a folder of images (searched recursively)")
            sub.add_argument("--text", help="rank the images by this text")
            sub.add_argument("--image", help="rank the images by this image")
            sub.add_argument("--k", type=_positive, default=10, help="how many images to return")
        if name not in ("probes", "search"):
            sub.add_argument(
                "--suite",
                nargs="+",
                default=["shapesworld"],
                help=f"suites: {', '.join(SPECS)}; clip_benchmark:DIR is a CLIP_benchmark wds folder (classnames.txt, "
                "zeroshot_classification_templates.txt with {c}, test/*.tar of <key>.png|jpg|webp + <key>.cls)",
            )
        if name in ("probes", "report"):
            sub.add_argument("--probes", nargs="+", default=["shapesworld"], help="'shapesworld' or probe JSON files")
        sub.add_argument(
            "--samples",
            type=_positive,
            help="ShapesWorld images per task and per probe (default: the run's test_samples)",
        )
        sub.add_argument(
            "--templates",
            help="prompt templates for imagefolder and clip_benchmark suites: a text file, one per line with "
            "'{}' or '{c}' for the class name, or CLIP_benchmark's --custom_template_file JSON",
        )
        sub.add_argument(
            "--classnames",
            help="class names for imagefolder and clip_benchmark suites: CLIP_benchmark's --custom_classname_file "
            "JSON ({dataset: [names in label order]})",
        )
        sub.add_argument("--images-root", dest="images_root", help="where Karpathy-JSON / probe-file image paths start")
        sub.add_argument("--batch-size", dest="batch_size", type=_positive, default=256)
        sub.add_argument("--workers", type=int, default=0, help="image-loading worker processes")
        sub.add_argument(
            "--precision", choices=("32", "bf16"), default="32", help="bf16 autocast is faster on AMX CPUs"
        )
        sub.add_argument("--seed", type=int, default=0)
        if name == "embed":
            sub.add_argument("--tokens", action="store_true", help="also save patch and word token embeddings")
        if name in ("zeroshot", "report"):
            sub.add_argument("--no-linear-probe", dest="linear_probe", action="store_false")
        if name in ("geometry", "report"):
            sub.add_argument("--tsne-points", dest="tsne_points", type=_positive, default=2000)
        if name == "report":
            sub.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
        if name == "explain":
            from analysis.explain import METHODS

            sub.add_argument("--image", help="explain this image (with --text) instead of the pointing game")
            sub.add_argument("--text", help="the caption to explain --image with")
            sub.add_argument("--method", nargs="+", choices=METHODS, help="default: every method the towers allow")
            sub.add_argument("--examples", type=_positive, default=8, help="pointing-game items drawn in the figure")
    compare = commands.add_parser("compare")
    compare.add_argument("runs", help="a folder of runs, e.g. runs/variants")
    compare.add_argument("--out", help="output directory (default: the folder of runs)")
    claims = commands.add_parser("claims")
    claims.add_argument("source", help="a runs root holding the claim grids' folders (runs), or docs/claims")
    claims.add_argument("--out", default="docs/claims", help="output directory (default: docs/claims)")
    claims.add_argument("--registry", help="the claims registry (default: experiments/claims/claims.yaml)")
    claims.add_argument("--claim", nargs="+", dest="only", help="only these claim ids")
    claims.add_argument(
        "--plan",
        action="store_true",
        help="also print the seeds each claim needs for the protocol's power, and their CPU time",
    )
    claims.add_argument(
        "--readme", help="also write the summary table into this README, between its claims-table markers"
    )
    return main


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` and run the command; returns its result dict."""
    args = parser().parse_args(argv)
    if args.command == "compare":
        from analysis.compare import compare

        table = compare(args.runs, args.out)
        print((Path(args.out or args.runs) / "compare.md").read_text())
        return table
    if args.command == "claims":
        from analysis.claims import REGISTRY, claims

        summary = claims(
            args.source, args.out, args.registry or REGISTRY, args.only, show_plan=args.plan, readme=args.readme
        )
        print((Path(args.out) / "claims.md").read_text())
        if args.plan:
            print(summary["plan"])
        return summary["counts"]
    from analysis import commands, report
    from analysis.checkpoint import load_checkpoint, run_directory
    from analysis.embed import EmbedOptions
    from analysis.suite_specs import SuiteOptions, load_probe_suites, load_suites

    if args.command == "explain":
        _check_explain_args(args)
    if args.command == "search" and (args.text is None) == (args.image is None):
        raise UserError('search: give exactly one query, --text "..." or --image PATH')
    loaded = load_checkpoint(args.ckpt)
    run_dir = run_directory(loaded.path) or Path(f"analysis-{loaded.path.stem}")
    if args.out:
        out = Path(args.out)
    else:
        out = run_dir / "export" / args.format if args.command == "export" else run_dir / "analysis"
    suite_options = SuiteOptions(
        samples=args.samples,
        templates=args.templates,
        classnames=args.classnames,
        images_root=args.images_root,
        seed=args.seed,
    )
    options = EmbedOptions(batch_size=args.batch_size, num_workers=args.workers, precision=args.precision)
    wants_suites = args.command not in ("explain", "export") or getattr(args, "format", None) == "clip_benchmark"
    suites = load_suites(args.suite, loaded, suite_options) if hasattr(args, "suite") and wants_suites else []
    probe_suites = load_probe_suites(args.probes, loaded, suite_options) if hasattr(args, "probes") else []
    print(f"{args.command}: {loaded.name} (step {loaded.global_step}) from {loaded.path}", file=sys.stderr)
    result: dict  # the command's JSON-able summary, printed
    if args.command == "embed":
        result = commands.embed(loaded, suites, out, tokens=args.tokens, options=options)
    elif args.command == "zeroshot":
        result = commands.zeroshot_benchmarks(loaded, suites, out, args.linear_probe, args.seed, options=options)[
            "metrics"
        ]
    elif args.command == "geometry":
        result = commands.geometry_analysis(
            loaded, suites, out, tsne_points=args.tsne_points, seed=args.seed, options=options
        )
        result = result["metrics"] | {"figures": result["figures"]}
    elif args.command == "probes":
        result = commands.probe_analysis(loaded, probe_suites, out, options=options)["metrics"]
    elif args.command == "export":
        from analysis.export import export

        result = export(loaded, args.format, out, suites, name=args.name, model_dir=args.model_dir)
    elif args.command == "search":
        from analysis.search import search

        result = search(loaded, args.images, out, text=args.text, image=args.image, k=args.k, options=options)
    elif args.command == "consistency":
        result = commands.consistency_analysis(loaded, suites, out, options=options)
    elif args.command == "explain":
        from analysis.explain.command import explain_pair, explain_pointing

        if args.image is not None:
            result = explain_pair(loaded, args.image, args.text, out, args.method)
        else:
            result = explain_pointing(loaded, out, args.method, args.samples, min(args.batch_size, 64), args.examples)
            result = result["pointing"] | {"metrics": result["metrics"]}
    else:
        result = report.write_report(
            loaded, suites, probe_suites, out, tensorboard=args.tensorboard, linear_probe=args.linear_probe,
            tsne_points=args.tsne_points, seed=args.seed, options=options, explain_samples=args.samples,
        )  # fmt: skip
    print(json.dumps(result, indent=2))
    print(f"results in {out}", file=sys.stderr)
    return result


def _check_explain_args(args: argparse.Namespace) -> None:
    """Before the checkpoint loads: --image and --text go together; the pointing game needs ShapesWorld."""
    if (args.image is None) != (args.text is None):
        raise UserError("explain: give --image and --text together (one pair), or neither (the pointing game)")
    if args.image is None and args.suite != ["shapesworld"]:
        raise UserError(
            f"explain: the pointing game needs object positions, which only ShapesWorld records; got --suite "
            f"{' '.join(args.suite)}: use --suite shapesworld, or --image PATH --text CAPTION for your own images"
        )


def main() -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    exit_on_user_error(run)


if __name__ == "__main__":
    main()
