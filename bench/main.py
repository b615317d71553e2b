"""
``python -m bench``: measure everything in one run and write ``docs/benchmarks.md``.

Order of a run: start a private Redis for the keyspace benchmark (its URL must be
in the settings before Django starts), create the database, tables and rows,
measure the row, page and save groups, run the cachepatterns, cacheops and
cachalot children (one process each), build the million-key keyspace and time the
family invalidations, then write the report and remove every key the run wrote.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from bench.profiling import PATHS as PROFILE_PATHS

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
#: The environment variables that choose the servers (shown in the report's command).
ENV = ("DATABASE_URL", "REDIS_URL")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rounds", type=int, default=2000, help="rounds of the single-row group (others scale from it)"
    )
    p.add_argument("--quick", action="store_true", help="a fifth of the rounds; for a smoke test")
    p.add_argument(
        "--seed-rounds", type=int, default=0, help="rounds of the seed's KEYS + DEL (default 10, quick 3)"
    )
    p.add_argument(
        "--keyspace", type=int, default=1_000_000, help="keys in the private Redis for the family test"
    )
    p.add_argument("--no-families", action="store_true", help="skip the private-Redis family benchmark")
    p.add_argument(
        "--no-alternatives",
        action="store_true",
        help="skip the own-process runs (cachepatterns, cacheops, cachalot)",
    )
    p.add_argument("--no-refresh", action="store_true", help="skip refresh-ahead vs cache-aside")
    p.add_argument(
        "--refresh-seconds",
        type=float,
        default=0,
        help="seconds of reads of the refresh-ahead comparison (default 60, quick 15)",
    )
    p.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"), help="the Markdown report")
    p.add_argument(
        "--profile",
        choices=list(PROFILE_PATHS),
        help="instead of benchmarking, cProfile one path and print where its time goes",
    )
    return p


def _say(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = _parser().parse_args(argv)
    # Set before anything imports demo_project, whose package sets its own default.
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    rounds = max(50, args.rounds // 5) if args.quick else args.rounds
    seed_rounds = args.seed_rounds or (3 if args.quick else 10)
    scratch = None
    if not args.no_families and not args.profile:
        from bench.scratch import ScratchRedis

        scratch = ScratchRedis()
        os.environ["BENCH_SCRATCH_REDIS_URL"] = scratch.start()
        _say(f"private Redis for the keyspace test on {scratch.url}")
    try:
        return _run(args, rounds, seed_rounds, started)
    finally:
        if scratch is not None:
            scratch.stop()
            _say("private Redis stopped")


def _setup_django() -> None:
    import django

    from bench.data import create_database

    django.setup()
    create_database()


def _run(args: argparse.Namespace, rounds: int, seed_rounds: int, started: float) -> int:
    _setup_django()
    from django.conf import settings
    from django_redis import get_redis_connection

    from bench import data

    redis = get_redis_connection("default")
    data.cleanup_redis(redis)  # leftovers of an interrupted run
    data.purge_tasks()
    data.create_tables()
    data.create_rows()
    _say(f"database {settings.DATABASES['default']['NAME']} ready; Redis {settings.REDIS_URL}")
    if args.profile:
        from bench.profiling import profile

        try:
            return profile(args.profile)
        finally:
            data.cleanup_redis(redis)
    try:
        run = _measure(args, rounds, seed_rounds, redis)
    finally:
        data.cleanup_redis(redis)
        data.purge_tasks()
    run["duration"] = time.monotonic() - started
    _write(run, Path(args.output))
    return 0


def _measure(args: argparse.Namespace, rounds: int, seed_rounds: int, redis: Any) -> dict[str, Any]:
    from django.conf import settings

    from bench import data
    from bench.harness import measure
    from bench.pages import PageBench, decorators_error
    from bench.rows import RowBench

    machine = data.machine_note(redis.info("server"))
    servers = (getattr(settings, "DATABASE_URL", "?"), getattr(settings, "REDIS_URL", "?"))
    machine["Servers"] = ", ".join(_mask(url) for url in servers)
    results: dict[str, Any] = {}
    notes: list[str] = []
    rows = RowBench()
    rows.warm()
    checks = rows.run_checks()
    reads = rows.read_variants()
    problem = decorators_error()
    if problem is None:
        pages = PageBench()
        checks.update(pages.warm())
        reads += pages.variants()
    else:
        notes.append(f"`@cache_aside` not measured: cachepatterns_app.decorators is unusable ({problem}).")
    warmup = max(20, rounds // 20)
    _say(f"single-row reads and page hits: {len(reads)} variants x {rounds} rounds")
    results.update(measure(reads, rounds, warmup, _progress("reads")))
    _say(f"statistics on and off: {rounds} rounds")
    results.update(measure(rows.stats_variants(), rounds, warmup))
    results.update(measure(rows.record_variants(), rounds, warmup))
    bulk_rounds = max(30, rounds // 8)
    _say(f"one hundred rows: {bulk_rounds} rounds")
    results.update(measure(rows.bulk_variants(), bulk_rounds, max(5, bulk_rounds // 20)))
    write_rounds = max(50, rounds // 3)
    _say(f"save(): {write_rounds} rounds")
    results.update(measure(rows.write_variants(), write_rounds, max(10, write_rounds // 20)))
    from bench.write_behind import WriteBehindBench

    wb = WriteBehindBench()
    _say(f"write-behind save(): {write_rounds} rounds")
    results.update(measure(wb.save_variants(), write_rounds, max(10, write_rounds // 20)))
    wb.drain()
    _say("write-behind flush: per-row cost of 500-row batches")
    results["wb_flush_row"], results["wb_flush_update_row"] = wb.flush_per_row(5 if args.quick else 20, 500)
    results["wb_raw_insert_row"] = wb.floor
    checks.update(wb.workers((1, 2, 4), 5000 if args.quick else 20000, _say))
    data.purge_tasks()  # the early-flush triggers of those saves: no worker ran to take them

    alternatives = []
    if not args.no_alternatives:
        from bench.alternatives import LIBRARIES, run_alternative

        for name in LIBRARIES:
            _say(f"{name} in its own process: {rounds} rounds")
            alternatives.append(run_alternative(name, rounds))
        results.update(_isolated(alternatives))

    if not args.no_families:
        if problem is None:
            results.update(_families(args, rounds, seed_rounds, checks, machine))
        else:
            notes.append("Family invalidation not measured: it needs `@cache_aside` (see above).")

    refresh = None
    if not args.no_refresh:
        from bench.refresh import refresh_bench

        seconds = args.refresh_seconds or (15.0 if args.quick else 60.0)
        try:
            refresh = refresh_bench(seconds, _say)
        except RuntimeError as e:
            notes.append(f"Refresh-ahead not measured: {e}")
    machine["Load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "results": results,
        "checks": checks,
        "machine": machine,
        "alternatives": alternatives,
        "notes": notes,
        "options": f"rounds={rounds}, seed rounds={seed_rounds}, keyspace={args.keyspace:,}",
        "keyspace": args.keyspace,
        "refresh": refresh,
        "command": _command(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _isolated(alternatives: list[dict[str, Any]]) -> dict[str, Any]:
    """Return cachepatterns' own-process measurements as ``iso_*`` summaries (a second view of its hit)."""
    from bench.harness import summary_of

    for alt in alternatives:
        if alt.get("library") == "cachepatterns" and alt.get("ok"):
            return {
                f"iso_{name}": summary_of(f"iso_{name}", f"{r['label']} (own process)", r["samples"])
                for name, r in alt["results"].items()
            }
    return {}


def _families(
    args: argparse.Namespace, rounds: int, seed_rounds: int, checks: dict[str, str], machine: dict[str, str]
) -> dict[str, Any]:
    from bench.families import FamilyBench, on_scratch

    with on_scratch():
        bench = FamilyBench(args.keyspace)
        _say(f"building a {args.keyspace:,}-key keyspace on the private Redis")
        bench.prepare(_say)
        machine["Private Redis (family test)"] = f"{bench.info()['redis_version']}, started by the bench"
        _say(f"invalidate_family(): {rounds} rounds")
        out = bench.ours(rounds)
        _say(f"seed KEYS + DEL: {seed_rounds} rounds")
        out.update(bench.seed(seed_rounds))
        checks.update(bench.checks)
    return out


def _command() -> str:
    """Return the command line of this run, with the environment variables that chose the servers."""
    env = [f"{name}={shlex.quote(_mask(os.environ[name]))}" for name in ENV if os.environ.get(name)]
    return " ".join([*env, "python -m bench", *map(shlex.quote, sys.argv[1:])])


def _mask(url: str) -> str:
    """Return ``url`` without its password."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _progress(group: str) -> Any:
    return lambda where: _say(f"  {group} {where}")


def _write(run: dict[str, Any], output: Path) -> None:
    from bench.families import SIZES
    from bench.plot import family_plot, latency_plot
    from bench.refresh import refresh_verdicts
    from bench.report import evaluate, markdown, text_table

    results = run["results"]
    run["verdicts"] = evaluate(results, run["checks"]) + refresh_verdicts(run.get("refresh"))
    output.parent.mkdir(parents=True, exist_ok=True)
    plot = family_plot(results, SIZES, output.parent / "benchmarks-families", run["keyspace"])
    run["plot"] = plot.name if plot else None
    if run.get("refresh"):
        run["refresh_plot"] = latency_plot(run["refresh"], output.parent / "benchmarks-refresh").name
    output.write_text(markdown(run), encoding="utf-8")
    raw = ROOT / "bench" / "results"
    raw.mkdir(exist_ok=True)
    dump = {
        **{k: v for k, v in run.items() if k != "results"},
        "results": {k: {"label": s.label, "samples_ns": s.samples} for k, s in results.items()},
        "alternatives": [
            {
                **alt,
                "results": {
                    k: {x: y for x, y in r.items() if x != "samples"} for k, r in alt["results"].items()
                },
            }
            if alt.get("ok")
            else alt
            for alt in run["alternatives"]
        ],
    }
    (raw / "latest.json").write_text(json.dumps(dump, default=str), encoding="utf-8")
    sys.stdout.write(text_table(results, run["verdicts"]) + "\n")
    sys.stdout.write("\nOther libraries (each in its own process, ratios against its own raw GET)\n")
    for alt in run["alternatives"]:
        if not alt.get("ok"):
            sys.stdout.write(f"  {alt['library']}: could not run: {alt['error']}\n")
            continue
        r = alt["results"]
        line = f"  {alt['library']}: row hit / raw GET = {r['hit']['median'] / r['raw_get']['median']:.2f}x"
        if "page_hit" in r:
            line += f", page hit / raw GET = {r['page_hit']['median'] / r['page_raw_get']['median']:.2f}x"
        sys.stdout.write(line + "\n")
    sys.stdout.write(
        f"\nWrote {output}" + (f" and {output.parent / run['plot']}" if run["plot"] else "") + "\n"
    )
