"""Before/after campaigns: the same workload against both targets, then the comparison report.

``gateload campaign`` runs Locust headless (as its own process, so this one never imports Locust)
against the *before* and *after* profiles, interleaved ABAB when there are replicates, starts and stops
the reference farm itself for reference profiles, and ends with ``analysis`` writing the report into
``<out>/report/``. ``gateload demo`` is the campaign on the two reference profiles.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateload import paths
from gateload.errors import InputError
from gateload.locustrun import LocustRun, plan_of
from gateload.targets.profile import Profile, is_loopback, load_profile

PROFILES = paths.PROFILES
DEFAULT_ACCEPTANCE = paths.ACCEPTANCE / "reference.toml"

# Demo workloads: a staircase that takes the before farm past its knee and stays within what this
# 2-core machine can generate. ~5 minutes in all by default, ~2 minutes with --quick.
DEMO_SHAPES = {
    "full": "--shape step --step-users 20,50,80,120,180,260 --step-hold 18 --step-ramp 4",
    "quick": "--shape step --step-users 100,260 --step-hold 25 --step-ramp 3",
}


@dataclass(frozen=True)
class PlannedRun:
    label: str  # "before" | "after"
    replicate: int  # 1-based
    profile_path: Path

    @property
    def run_id(self) -> str:
        return f"{self.label}-{self.replicate}"


def plan_runs(before: Path, after: Path, replicates: int) -> list[PlannedRun]:
    """ABAB order: drift in the machine or the network then hits both sides alike."""
    runs: list[PlannedRun] = []
    for k in range(1, replicates + 1):
        runs += [PlannedRun("before", k, before), PlannedRun("after", k, after)]
    return runs


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``campaign`` and ``demo`` commands."""
    from gateload.cli import exit_codes

    codes = exit_codes(
        "0    PASS (the before/after comparison's verdict)",
        "1    FAIL",
        "3    INCONCLUSIVE (also: no criteria to judge)",
        "2    bad input: a usage error, a bad profile or acceptance file, a target beyond loopback;",
        "     also a farm that did not start, a run that produced no results or did not complete",
    )
    p = sub.add_parser(
        "campaign",
        help="run the same workload against a before and an after target and compare them",
        description="Options not listed here (e.g. --shape step --step-users 10,20,40 --step-hold 30, "
        "-u/-r/-t, --processes) are passed to Locust unchanged.",
        **codes,
    )
    p.add_argument("--before", required=True, type=Path, help="profile of the target before the change")
    p.add_argument("--after", required=True, type=Path, help="profile of the target after the change")
    _common_arguments(p)
    p.add_argument("--out", required=True, type=Path, help="campaign folder, e.g. results/expansion")
    p.set_defaults(func=_run_campaign_command)

    d = sub.add_parser("demo", help="the campaign on the reference farm, 4 servers against 12", **codes)
    _common_arguments(d)
    d.add_argument("--quick", action="store_true", help="a ~2 minute smoke version (two steps)")
    d.add_argument("--out", type=Path, default=Path("results/demo"), help="campaign folder")
    d.set_defaults(func=_run_demo_command)


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicates", type=int, default=1, help="runs per side, interleaved ABAB (default 1)")
    p.add_argument("--acceptance", type=Path, default=DEFAULT_ACCEPTANCE, help="acceptance margins (TOML)")
    p.add_argument("--processes", type=int, default=1, help="Locust processes on this machine")
    p.add_argument("--allow-remote", action="store_true", help="allow targets outside loopback")


def _run_demo_command(args: argparse.Namespace) -> int:
    args.before = PROFILES / "reference-before.toml"
    args.after = PROFILES / "reference-after.toml"
    args.locust_args = shlex.split(DEMO_SHAPES["quick" if args.quick else "full"]) + args.locust_args
    return _run_campaign_command(args)


def _run_campaign_command(args: argparse.Namespace) -> int:
    if args.replicates < 1:
        raise InputError(f"--replicates is {args.replicates}; give 1 or more")
    if args.processes < 1:
        raise InputError(f"--processes is {args.processes}; give 1 or more")
    if not args.acceptance.is_file():
        raise InputError(f"{args.acceptance}: acceptance file not found; pass --acceptance FILE")
    from gateload.analysis.acceptance import load_acceptance

    load_acceptance(args.acceptance)  # a malformed file fails now, not after every run
    profiles = {"before": load_profile(args.before), "after": load_profile(args.after)}
    for profile in profiles.values():
        check_reachable(profile, args.allow_remote)
    runs = plan_runs(args.before, args.after, args.replicates)
    preflight(profiles, runs, args)
    run_dirs: dict[str, list[Path]] = {"before": [], "after": []}
    for planned in runs:
        run_dirs[planned.label].append(execute(planned, profiles[planned.label], args))
    return finish(run_dirs, args)


def check_reachable(profile: Profile, allow_remote: bool) -> None:
    """Refuse to load a target outside loopback unless the profile or a flag says so."""
    remote = [h for h in profile.hosts() if not is_loopback(h)]
    if remote and not (allow_remote or profile.target.allow_non_loopback):
        raise InputError(
            f"{profile.path}: target {', '.join(remote)} is not on loopback; set "
            "target.allow_non_loopback = true in the profile or pass --allow-remote if you mean it"
        )


def preflight(profiles: dict[str, Profile], runs: list[PlannedRun], args: argparse.Namespace) -> None:
    """Say what is about to happen before any load is sent."""
    plan = plan_of(args.locust_args)
    print(f"gateload campaign: {len(runs)} runs ({args.replicates} per side, ABAB) into {args.out}")
    for label, profile in profiles.items():
        where = (
            "embedded reference farm" if profile.farm else f"{profile.portal.url}, ssh {profile.gateway.host}"
        )
        servers = f", {len(profile.server_ids)} servers" if profile.farm else ""
        print(f"  {label:6} {profile.target.name}: {where}{servers}")
    print(
        f"  load   {plan.describe()}; peak {plan.peak_users} sessions, ~{plan.duration_s:.0f} s per run, "
        f"~{plan.duration_s * len(runs) / 60:.1f} min in all"
    )
    sys.stdout.flush()


def execute(planned: PlannedRun, profile: Profile, args: argparse.Namespace) -> Path:
    """One run: start the farm if the target is the reference farm, then Locust."""
    print(f"\n== run {planned.run_id}: {profile.target.name}", flush=True)
    with _target(planned.profile_path, profile, args.out) as effective_profile:
        run = LocustRun(
            profile=effective_profile,
            results_dir=args.out,
            label=planned.label,
            run_id=planned.run_id,
            processes=args.processes,
            extra=args.locust_args,
        )
        return run.run()


@contextlib.contextmanager
def _target(profile_path: Path, profile: Profile, out: Path) -> Iterator[Path]:
    if profile.farm is None:
        yield profile_path
        return
    from gateload.targets.reference.harness import FarmProcess, FarmStartError

    farm = FarmProcess(profile_path, free_ports=True)
    try:
        farm.__enter__()
    except FarmStartError as exc:
        # the farm's own one-line error (a busy port, a bind beyond loopback, a damaged state folder)
        lines = [ln for ln in str(exc).splitlines() if ln.startswith("gateload: error: ")]
        why = lines[-1].removeprefix("gateload: error: ") if lines else str(exc).splitlines()[0]
        raise InputError(f"the reference farm of {profile_path} did not start: {why}") from None
    try:
        yield farm.profile_path
    finally:
        farm.__exit__(None, None, None)


def finish(run_dirs: dict[str, list[Path]], args: argparse.Namespace) -> int:
    """Compare, write the report, and point at it."""
    from gateload.analysis.compare import compare_runs
    from gateload.analysis.report import markdown

    report_dir = args.out / "report"
    started = time.monotonic()
    verdict = compare_runs(run_dirs["before"], run_dirs["after"], args.acceptance, report_dir)
    print(f"\n== comparison ({time.monotonic() - started:.1f} s)")
    print(markdown(verdict))
    print(f"verdict: {verdict.verdict}")
    print(f"report:  {report_dir / 'report.html'}")
    print(f"summary: {report_dir / 'summary.md'}")
    return verdict.exit_code
