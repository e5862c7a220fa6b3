"""The claims registry (``experiments/claims/claims.yaml``) read and checked: the protocol every
verdict follows, the experiments (grids) and the claims. Every mistake is one line naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from common.errors import UserError
from common.files import read_yaml

REPOSITORY = Path(__file__).resolve().parents[2]  # grid paths in a registry are relative to it
REGISTRY = REPOSITORY / "experiments" / "claims" / "claims.yaml"
REQUIRED_CLAIM_KEYS = {"id", "experiment", "paper", "says", "metric", "arm", "expect", "smallest_effect"}


@dataclass(frozen=True)
class Protocol:
    """How every verdict is decided (the registry's ``protocol:``; docs/DESIGN.md, "Claims").

    alpha: one-sided level of each verdict, after Holm's correction across the report's claims.
    power: the power the minimal detectable effect and ``--plan`` are computed for.
    gate: a competent group's mean lies above chance by more than this, with 95% confidence
        (its lower 95% bound of mean(metric - chance) > gate), on every competence metric.
    chance: {metric: chance level}; a metric not listed has none (a continuous measure).
    health: {"metric", "floor"}: a run whose easy control metric is below the floor collapsed.
    """

    alpha: float = 0.025
    power: float = 0.8
    gate: float = 0.10
    chance: dict[str, float] = field(default_factory=dict)
    health: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """One check of one paper's claim (the registry's header lists the keys)."""

    id: str
    experiment: str
    paper: str
    says: str
    metric: str
    arm: str
    expect: str
    smallest_effect: float = 0.0
    where: str = ""
    baseline: str | None = None
    baseline_value: float | None = None
    baseline_metric: str | None = None  # the baseline's own metric when it differs (another method's score)
    margin: float = 0.0
    paper_effect: float | None = None
    competence: list[str] | None = None  # None: the deciding metric(s), where they have a chance level
    label: str = ""  # the claim's row in the README's table (default: says)
    # Compare at matched values of this metric: the baseline's deciding metric is read off its
    # run's curve (every evaluated step) where it reached the arm's value (CyCLIP at matched accuracy).
    matched_on: str | None = None

    @property
    def base_metric(self) -> str:
        return self.baseline_metric or self.metric

    @property
    def sign(self) -> float:
        return 1.0 if self.expect == "greater" else -1.0

    def competence_metrics(self, protocol: Protocol, baseline: bool = False) -> list[str]:
        """The metrics a group must be competent on: the listed ones, else the group's own deciding
        metric when it has a chance level (none for a continuous measure)."""
        if self.competence is not None:
            return list(self.competence)
        own = self.base_metric if baseline else self.metric
        return [own] if own in protocol.chance else []


@dataclass(frozen=True)
class Experiment:
    id: str
    grid: str
    figure: dict = field(default_factory=dict)
    wall_time: str | None = None
    host: str | None = None  # cores, CPU, whether bf16 is native
    run_seconds: float | None = None  # measured seconds of one run, for --plan when the CSV has none
    health: dict | None = None  # overrides the protocol's; {}: no health check (an arm untrained by design)
    not_run: str | None = None  # what was not run and why, with its cost

    def grid_name(self, root: Path) -> str:
        """The folder the grid writes its runs to (its ``name``, default the file's stem)."""
        path = root / self.grid
        spec = read_yaml(path) if path.is_file() else None
        if not isinstance(spec, dict):
            raise UserError(f"claims: experiment {self.id}: grid file {path} not found or not a mapping")
        return str(spec.get("name", path.stem))


def load_registry(path: str | Path = REGISTRY) -> tuple[Protocol, dict[str, Experiment], list[Claim]]:
    """Read and check the registry: its shape, every key known, every claim's experiment declared,
    an arm and either a baseline or a baseline_value, expect one of greater/less, numbers >= 0."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"claims registry not found: {path}")
    spec = read_yaml(path) or {}
    if not isinstance(spec, dict) or set(spec) - {"protocol", "experiments", "claims"}:
        found = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise UserError(
            f"{path}: a claims registry is a mapping with 'protocol', 'experiments' and 'claims'; found {found}"
        )
    protocol = _protocol(spec.get("protocol") or {}, path)
    experiments_spec = spec.get("experiments") or {}
    if not isinstance(experiments_spec, dict):
        raise UserError(
            f"{path}: 'experiments' maps each experiment's id to its entry (id: {{grid: ...}}), not a "
            f"{type(experiments_spec).__name__}"
        )
    experiment_keys = {f.name for f in fields(Experiment)} - {"id"}
    experiments = {}
    for name, entry in experiments_spec.items():
        if not isinstance(entry, dict) or "grid" not in entry or set(entry) - experiment_keys:
            unknown = sorted(set(entry) - experiment_keys) if isinstance(entry, dict) else []
            raise UserError(
                f"{path}: experiment {name}: give 'grid' (and optionally {', '.join(sorted(experiment_keys - {'grid'}))})"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )
        _check_health(entry.get("health") or {}, f"{path}: experiment {name}: health")
        experiments[name] = Experiment(name, **entry)
    claims_spec = spec.get("claims") or []
    if not isinstance(claims_spec, list):
        raise UserError(f"{path}: 'claims' is a list of claims (- id: ...), not a {type(claims_spec).__name__}")
    claims = [_claim(entry, i, experiments, path) for i, entry in enumerate(claims_spec)]
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: claim ids must be unique: {sorted({i for i in ids if ids.count(i) > 1})}")
    return protocol, experiments, claims


def _protocol(spec: object, path: Path) -> Protocol:
    keys = {f.name for f in fields(Protocol)}
    if not isinstance(spec, dict) or set(spec) - keys:
        raise UserError(f"{path}: 'protocol' takes {', '.join(sorted(keys))}")
    for key in ("alpha", "power"):
        if key in spec and not (isinstance(spec[key], float) and 0 < spec[key] < 1):
            raise UserError(f"{path}: protocol.{key} is a number between 0 and 1, got {spec[key]!r}")
    if "gate" in spec and not _number(spec["gate"], at_least=0.0):
        raise UserError(f"{path}: protocol.gate is a number >= 0, got {spec['gate']!r}")
    chance = spec.get("chance") or {}
    if not isinstance(chance, dict) or not all(_number(v, at_least=0.0) for v in chance.values()):
        raise UserError(f"{path}: protocol.chance maps metric names to chance levels (numbers >= 0)")
    _check_health(spec.get("health") or {}, f"{path}: protocol.health")
    return Protocol(**spec)


def _check_health(health: object, where: str) -> None:
    if health and not (isinstance(health, dict) and set(health) == {"metric", "floor"} and _number(health["floor"])):
        raise UserError(f"{where}: give {{metric: <a control metric>, floor: <number>}}, got {health!r}")


def _claim(entry: object, i: int, experiments: dict[str, Experiment], path: Path) -> Claim:
    where = f"{path}: claims[{i}]"
    if not isinstance(entry, dict):
        raise UserError(f"{where}: a claim is a mapping (id: ..., experiment: ..., ...)")
    known = {f.name for f in fields(Claim)}
    unknown, missing = set(entry) - known, REQUIRED_CLAIM_KEYS - set(entry)
    if unknown or missing:
        raise UserError(f"{where} ({entry.get('id', '?')}): unknown keys {sorted(unknown)}, missing {sorted(missing)}")
    where = f"{where} ({entry['id']})"
    if entry["experiment"] not in experiments:
        raise UserError(f"{where}: experiment {entry['experiment']!r} is not under 'experiments'")
    if (entry.get("baseline") is None) == (entry.get("baseline_value") is None):
        raise UserError(f"{where}: give exactly one of 'baseline' (an arm) or 'baseline_value' (a number)")
    if entry["expect"] not in ("greater", "less"):
        raise UserError(f"{where}: expect is 'greater' or 'less', got {entry['expect']!r}")
    for key in ("margin", "smallest_effect"):
        if key in entry and not _number(entry[key], at_least=0.0):
            raise UserError(f"{where}: {key} must be a number >= 0, got {entry[key]!r}")
    if entry.get("paper_effect") is not None and not _number(entry["paper_effect"]):
        raise UserError(f"{where}: paper_effect is a number in the metric's units, or null where the paper gives none")
    if entry.get("baseline_metric") is not None and entry.get("baseline") is None:
        raise UserError(f"{where}: baseline_metric names the metric of a baseline arm; give 'baseline'")
    if entry.get("baseline_value") is not None and not _number(entry["baseline_value"]):
        raise UserError(f"{where}: baseline_value must be a number")
    competence = entry.get("competence")
    if competence is not None and not (isinstance(competence, list) and all(isinstance(m, str) for m in competence)):
        raise UserError(f"{where}: competence lists metric names ([] for none)")
    return Claim(**entry)


def _number(value: object, at_least: float | None = None) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and (at_least is None or value >= at_least)  # type: ignore[operator]
