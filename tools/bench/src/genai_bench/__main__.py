"""`python -m genai_bench` (make bench): start everything, measure, print the tables, write docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import resource
import signal
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from genai_bench import report, rig
from genai_bench.suite import QUICK, Bench, Plan


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no", "off")


def _raise_open_files_limit() -> None:
    # A thousand streams need a thousand sockets here and two in nginx; children inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_async(coro: object) -> object:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def main() -> None:
    root = rig.repo_root()
    parser = argparse.ArgumentParser(prog="genai-bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", default=_flag("BENCH_QUICK", False), help="short runs"
    )
    parser.add_argument("--output", type=Path, default=root / "docs" / "benchmarks.md")
    parser.add_argument("--work-dir", type=Path, default=root / ".work" / "bench")
    parser.add_argument(
        "--no-litellm", action="store_true", default=not _flag("BENCH_LITELLM", True), help="skip LiteLLM"
    )
    parser.add_argument(
        "--no-litellm-matched",
        action="store_true",
        default=not _flag("BENCH_LITELLM_MATCHED", True),
        help="skip LiteLLM's feature-matched configuration (Redis rate limits and cache)",
    )
    profile = os.environ.get("BENCH_PROFILE", "")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None if profile == "" else _flag("BENCH_PROFILE", True),
        help="py-spy profile of the services under load (default: in full runs only)",
    )
    parser.add_argument(
        "--litellm-workers",
        type=int,
        default=int(os.environ.get("BENCH_LITELLM_WORKERS") or os.cpu_count() or 1),
    )
    parser.add_argument("--invoked-as", default="", help="the command to record in the report")
    args = parser.parse_args()

    plan: Plan = QUICK if args.quick else Plan()
    if args.profile is False:
        plan = replace(plan, profile_s=0)
    elif args.profile and not plan.profile_s:
        plan = replace(plan, profile_s=5)
    command = args.invoked_as or " ".join([Path(sys.executable).name, "-m", "genai_bench", *sys.argv[1:]])

    # One run at a time: runs share the work folder (PostgreSQL's data, the venvs) and the two cores.
    args.work_dir.mkdir(parents=True, exist_ok=True)
    lock = open(args.work_dir / "bench.lock", "w")  # noqa: SIM115 (held until the process exits)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"another bench is running (lock: {args.work_dir / 'bench.lock'}); wait for it to finish")
    _raise_open_files_limit()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    load_before = report.load_average()
    t0 = time.monotonic()
    print(
        f"starting PostgreSQL, Redis, the stack on the simulator{'' if args.no_litellm else ' and LiteLLM'} ...",
        flush=True,
    )
    bench_rig = rig.start(
        args.work_dir,
        with_litellm=not args.no_litellm,
        litellm_workers=args.litellm_workers,
        litellm_matched=not args.no_litellm_matched,
    )
    try:
        for target in (bench_rig.direct(), bench_rig.ours(), *bench_rig.litellm_targets()):
            rig.smoke(target)
        print(
            f"ready after {time.monotonic() - t0:.0f} s; measuring ({'quick' if plan.quick else 'full'} plan)",
            flush=True,
        )
        results = _run_async(Bench(bench_rig, plan, log=lambda line: print(line, flush=True)).run())
    finally:
        print("stopping ...", flush=True)
        bench_rig.close()
    info = report.RunInfo(
        command=command,
        started=started,
        duration_s=time.monotonic() - t0,
        load_before=load_before,
        load_after=report.load_average(),
        litellm_version=bench_rig.lite.version if bench_rig.lite else "",
        litellm_workers=args.litellm_workers if bench_rig.lite else 0,
    )
    page = report.render(results, info, report.previous_notes(args.output))  # type: ignore[arg-type]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(page)
    print()
    # The tables, without the page's how-to header.
    print("## Last run" + page.split("## Last run", 1)[1])
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
