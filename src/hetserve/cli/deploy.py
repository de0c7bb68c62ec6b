"""`hetserve deploy`: render a plan for a target, or the steps from one plan to the next."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from hetserve.errors import HetserveError, write_text


def deploy_cmd(
    plan_file: Annotated[Path | None, typer.Argument(help="plan file (hetserve plan --out)")]
    = None,
    target: Annotated[str, typer.Option(
        "--target", help="kubernetes, skypilot or ray")] = "kubernetes",
    out: Annotated[Path | None, typer.Option(
        "--out", help="folder for the files (created if missing, but only inside a folder "
        "that exists; files of the same name replaced)")] = None,
    cluster: Annotated[str | None, typer.Option(
        "--cluster", help="kubernetes: how nodes name their GPUs: gke, eks (Karpenter), aks, "
        "or gfd (NVIDIA GPU feature discovery; the default)")] = None,
    namespace: Annotated[str, typer.Option("--namespace", help="kubernetes namespace")]
    = "default",
    image: Annotated[str | None, typer.Option(
        "--image", help="engine image for every group instead of the plan's")] = None,
    gateway_image: Annotated[str | None, typer.Option(
        "--gateway-image", help="hetserve's image (gateway, and engines with --emulate)")]
    = None,
    emulate: Annotated[bool, typer.Option(
        "--emulate", help="run `hetserve emulate` of each group instead of its engine (no "
        "GPU: to try a cluster's wiring)")] = False,
    from_plan: Annotated[Path | None, typer.Option(
        "--from", help="the plan deployed now: print the steps to --to")] = None,
    to_plan: Annotated[Path | None, typer.Option("--to", help="the plan to move to")] = None,
    apply: Annotated[bool, typer.Option(
        "--apply", help="with --from/--to: run the steps (kubectl) instead of printing them")]
    = False,
) -> None:
    """Render a plan for Kubernetes, SkyPilot or Ray Serve; or, with --from and --to, the
    kubectl steps from one plan to the next (new capacity first)."""
    from hetserve.deploy import CLUSTERS, GATEWAY_IMAGE, TARGETS, Options, dns_label, render
    from hetserve.plan.planfile import load_plan

    if target not in TARGETS:
        raise HetserveError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
    if cluster is not None and target != "kubernetes":
        raise HetserveError("--cluster applies only with --target kubernetes")
    cluster = cluster or "gfd"
    if cluster not in CLUSTERS:
        raise HetserveError(f"--cluster {cluster!r}: expected one of {', '.join(CLUSTERS)}")
    if dns_label(namespace) != namespace:
        raise HetserveError(f"--namespace {namespace!r}: expected a DNS label (lower-case "
                            "letters, digits and '-', at most 63)")
    opts = Options(cluster=cluster, namespace=namespace, image=image,
                   gateway_image=gateway_image or GATEWAY_IMAGE, emulate=emulate)
    if (from_plan is None) != (to_plan is None):
        raise HetserveError("--from and --to: give both (the plan deployed now, and the next)")
    if from_plan is not None:
        if plan_file is not None:
            raise HetserveError("give a plan file, or --from and --to, not both")
        if target != "kubernetes":
            raise HetserveError("--from/--to: steps are written for --target kubernetes")
        _diff(load_plan(from_plan), load_plan(to_plan), str(to_plan), opts, out, apply)
        return
    if apply:
        raise HetserveError("--apply: only with --from and --to")
    if plan_file is None:
        raise HetserveError("expected a plan file (hetserve plan --out), or --from and --to")
    if out is None:
        raise HetserveError("--out: expected a folder for the files")
    _check_folder(out)
    plan = load_plan(plan_file)
    files = render(plan, target, opts, str(plan_file))
    _write(files, out)
    print(f"wrote {len(files)} files to {out}: {', '.join(sorted(files))}", flush=True)
    if target == "skypilot":
        from hetserve.deploy.skypilot import instance_notes

        for note in instance_notes(plan):
            print(f"warning: {note}", file=sys.stderr)


def _check_folder(out: Path) -> None:
    """The --out folder: an existing folder, or a new one in a folder that exists."""
    if out.exists() and not out.is_dir():
        raise HetserveError(f"--out {out}: is a file, expected a folder")
    if not out.exists() and not out.absolute().parent.is_dir():
        raise HetserveError(f"--out {out}: folder '{out.parent}' does not exist (--out makes "
                            "one new folder, inside a folder that exists)")


def _write(files: dict[str, str], out: Path) -> None:
    _check_folder(out)
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise HetserveError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    for name, text in files.items():
        write_text(out / name, text)


def _diff(old, new, where: str, opts, out: Path | None, apply: bool) -> None:
    from hetserve.deploy.diff import actions, changes, manifests

    folder = out or Path("deploy")
    _check_folder(folder)
    steps = actions(old, new, opts, str(folder))
    for c in changes(old, new):
        print(f"# {c.kind:6s} {c.name}: {c.old} -> {c.new} replicas")
    if not steps:
        print("# the plans are the same: nothing to do")
        return
    _write(manifests(old, new, opts, where), folder)
    print(f"# manifests of {where} in {folder}")
    for step in steps:
        print(step, flush=True)
        if apply:
            try:
                done = subprocess.run(shlex.split(step), check=False)
            except OSError as exc:
                raise HetserveError(f"--apply: cannot run {step.split()[0]} "
                                    f"({exc.strerror})") from None
            if done.returncode != 0:
                raise HetserveError(f"--apply: '{step}' failed with exit code "
                                    f"{done.returncode}; the steps before it were done")
    if not apply:
        print("# dry run: nothing was changed (--apply runs these)")
