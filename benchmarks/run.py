"""One command: woqconv's speed and memory at real model scale, beside `cp` and INC's own route.

Synthesizes GPTQ v1 4-bit g128 checkpoints with real shapes and random codes (benchmarks/synth.py):
Llama-2-7B as one ~3.9 GB model.safetensors and as shards, and TinyLlama-1.1B. For each it times,
side by side and as the median of ``--runs`` runs: ``cp -r`` of the checkpoint (the floor), ``woqconv
convert`` to each target, ``woqconv inspect``, and a Python that only imports torch (the start-up
every conversion pays). Every measurement is a child process; its peak RSS
comes from ``wait4``. INC's own route to the Gaudi layout (``load(..., format="huggingface",
device="hpu")`` under woqconv's CPU emulation, benchmarks/inc_route.py) runs on the 1B checkpoint.

    .venv/bin/python benchmarks/run.py [--scratch /tmp/woqconv-bench] [--runs 3] [--cache warm|cold]

Data goes under ``--scratch`` (never the repository) and is removed at the end unless ``--keep``.
The machine's load average is recorded with every run: other work on the cores skews the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> (synth shape, shards)
CASES = {"7b": ("7b", 1), "7b-sharded": ("7b", 2), "7b-8l": ("7b-8l", 1), "1b": ("1b", 1), "tiny": ("tiny", 1),
         "tiny-sharded": ("tiny", 2)}
TARGETS = ("awq", "gptq-v2", "inc-hf", "hpu")
CP_SYNC = "cp + fsync"
# ``hpu`` writes twice the checkpoint's bytes (its inc-hf checkpoint and the Gaudi cache). Writing
# 7.8 GB is not twice the time of 3.9 GB here: past the kernel's dirty-page limit (20% of memory,
# about 4.6 GB) writers are held to the disk's pace (cp of the 7B file: 2.0-3.0 s; cp of it twice:
# 5.5-13 s). So hpu gets a floor of its own: cp of the checkpoint twice, the bytes it writes.
CP_TWICE = "cp twice (hpu's bytes)"
# What every woqconv conversion pays before it touches the checkpoint: starting Python and importing
# torch. Measured in the same rounds, so that the table shows how much of a small conversion it is.
STARTUP = "python + import torch"


@dataclass
class Run:
    seconds: float
    cpu_seconds: float  # user + system of the child: what the work costs, less sensitive to other load
    peak_rss_mb: float
    load_avg_1m: float
    returncode: int
    written_bytes: int = 0  # size of the output it left (0 for inspect)
    round: int = 0  # which round of the run: steps of one round ran back to back


@dataclass
class Measurement:
    case: str
    what: str  # "cp", "convert awq", "inspect", "inc route (load, device=hpu)"
    source_bytes: int
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.returncode == 0 for r in self.runs)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(r.cpu_seconds for r in self.runs)

    @property
    def peak_rss_mb(self) -> float:
        return statistics.median(r.peak_rss_mb for r in self.runs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ok=self.ok, median_seconds=round(self.seconds, 3) if self.runs else None,
                 median_cpu_seconds=round(self.cpu_seconds, 3) if self.runs else None,
                 median_peak_rss_mb=round(self.peak_rss_mb, 1) if self.runs else None,
                 median_written_bytes=int(statistics.median(r.written_bytes for r in self.runs)) if self.runs else None,
                 throughput_mb_s=round(self.source_bytes / self.seconds / 1e6, 1) if self.runs and self.seconds else None)
        return d


def timed(cmd: list[str], *, cwd: Path, timeout: float | None = None, log: Path | None = None) -> Run:
    """Run ``cmd`` as a child; wall time, its own peak RSS (wait4, not our process's), load average."""
    load = os.getloadavg()[0]
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline and time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - start
    finally:
        if log:
            out.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return Run(round(seconds, 3), round(cpu, 3), round(usage.ru_maxrss / 1024, 1), load, proc.returncode)


def checkpoint_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def evict(path: Path) -> None:
    """Drop the checkpoint's pages from the page cache (this file set only), for a cold read."""
    for p in checkpoint_files(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(path: Path) -> None:
    buf = bytearray(1 << 20)  # small: children start from a copy of this process, and its RSS counts in theirs
    for p in checkpoint_files(path):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def settle(out: Path) -> None:
    """Remove the last output and write back dirty pages, so one run's writeback never lands in the next."""
    if out.exists():
        shutil.rmtree(out)
    os.sync()


def measure_rounds(steps: list[tuple[Measurement, object]], src: Path, scratch: Path, runs: int, cache: str, log=None,
                   swapped: set[int] = frozenset()) -> None:
    """Run every step once per round, ``runs`` rounds. This VM's page-cache speed drifts by 3x over
    minutes (``cp`` of the same 3.9 GB took 3.8 s and 13.6 s in one session); interleaving puts each
    conversion beside a ``cp`` that ran under the same conditions, and the paired ratios show it.
    ``swapped``: steps ``i`` that trade places with step ``i + 1`` in every other round (a conversion and
    the baseline's: whichever runs second finds the disk still busy with the first one's output)."""
    out = scratch / "out"
    for r in range(runs):
        order = list(steps)
        if r % 2:
            for i in swapped:
                order[i], order[i + 1] = order[i + 1], order[i]
        for m, cmd_for in order:
            settle(out)
            evict(src) if cache == "cold" else warm(src)
            run = timed(cmd_for(out), cwd=scratch, log=log)
            run.round = r
            run.written_bytes = sum(p.stat().st_size for p in checkpoint_files(out)) if out.exists() else 0
            m.runs.append(run)
            print(f"  {m.case:12s} {m.what:30s} {run.seconds:8.2f} s  cpu {run.cpu_seconds:7.2f} s  {run.peak_rss_mb:8.0f} MB  "
                  f"load {run.load_avg_1m:.2f}  round {r + 1}" + ("" if run.returncode == 0 else f"  EXIT {run.returncode}"), flush=True)
    settle(out)


def paired_ratio(m: Measurement, floor: Measurement) -> float | None:
    """Median over rounds of this step's wall time over the floor's wall time in the same round."""
    by_round = {r.round: r.seconds for r in floor.runs}
    ratios = [r.seconds / by_round[r.round] for r in m.runs if by_round.get(r.round)]
    return statistics.median(ratios) if ratios else None


def inc_route(case: str, src: Path, scratch: Path, woqconv_hpu: Measurement | None, timeout: float, log: Path,
              runs: int = 1) -> Measurement:
    """INC writes its cache into the checkpoint it loads: each run gets a fresh copy (copying is not timed)."""
    m = Measurement(case, "inc route (load, device=hpu)", sum(p.stat().st_size for p in checkpoint_files(src)))
    work = scratch / "inc-route"
    for r in range(runs):
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(src, work)
        os.sync()
        run = timed([sys.executable, str(HERE / "inc_route.py"), str(work)], cwd=scratch, timeout=timeout, log=log)
        run.round = r
        m.runs.append(run)
        shutil.rmtree(work)
        print(f"  {case:12s} {m.what:30s} {run.seconds:8.2f} s  cpu {run.cpu_seconds:7.2f} s  {run.peak_rss_mb:8.0f} MB  "
              f"load {run.load_avg_1m:.2f}  run {r + 1}", flush=True)
        if run.returncode != 0:
            m.note = f"did not finish within {timeout:.0f} s" if run.seconds >= timeout else f"exit {run.returncode}, see {log}"
            return m
    if woqconv_hpu is not None and woqconv_hpu.ok:
        m.note = f"{m.seconds / woqconv_hpu.seconds:.1f}x woqconv --to hpu ({woqconv_hpu.seconds:.2f} s)"
        print(f"  {case:12s} {m.what:30s} median {m.seconds:.2f} s: {m.note}", flush=True)
    return m


def written(m: Measurement) -> float:
    return statistics.median(r.written_bytes for r in m.runs) if m.runs else 0


def same_bytes_floor(m: Measurement, copies: list[Measurement]) -> Measurement | None:
    """The copy that wrote as many bytes as step ``m`` did (cp, or cp twice for hpu)."""
    return min(copies, key=lambda c: abs(written(c) - written(m)), default=None)


def table(results: list[Measurement]) -> str:
    floors = {m.case: m for m in results if m.what == "cp" and m.ok}
    synced = {m.case: m for m in results if m.what == CP_SYNC and m.ok}
    copies: dict[str, list[Measurement]] = {}
    for m in results:
        if m.what in ("cp", CP_TWICE) and m.ok:
            copies.setdefault(m.case, []).append(m)
    rows = [
        "| case | step | median wall s | x cp (wall) | x cp, paired | x cp of the bytes written, paired | x cp+fsync (wall) | MB/s | median CPU s | x cp (CPU) | peak RSS MB | written GB | load (1m) | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        if not m.runs:
            continue
        floor = floors.get(m.case) if m.what.startswith("convert") else None
        floor_synced = synced.get(m.case) if m.what.startswith("convert") else None
        ratio = f"{m.seconds / floor.seconds:.2f}" if floor else ""
        paired = paired_ratio(m, floor) if floor else None
        paired = f"{paired:.2f}" if paired else ""
        own_floor = same_bytes_floor(m, copies.get(m.case, [])) if m.what.startswith("convert") else None
        own_paired = paired_ratio(m, own_floor) if own_floor else None
        own_paired = f"{own_paired:.2f}" if own_paired else ""
        nbytes = written(m)
        nbytes = f"{nbytes / 1e9:.2f}" if nbytes else ""
        ratio_synced = f"{m.seconds / floor_synced.seconds:.2f}" if floor_synced else ""
        cpu_ratio = f"{m.cpu_seconds / floor.cpu_seconds:.2f}" if floor and floor.cpu_seconds else ""
        mbs = f"{m.source_bytes / m.seconds / 1e6:.0f}" if m.what not in ("inspect", STARTUP) else ""
        lo, hi = min(r.load_avg_1m for r in m.runs), max(r.load_avg_1m for r in m.runs)
        status = "" if m.ok else " (failed)"
        note = f"; {m.note}" if m.note else ""
        rows.append(f"| {m.case} | {m.what}{status}{note} | {m.seconds:.2f} | {ratio} | {paired} | {own_paired} | {ratio_synced} | {mbs} | "
                    f"{m.cpu_seconds:.2f} | {cpu_ratio} | {m.peak_rss_mb:.0f} | {nbytes} | {lo:.1f}-{hi:.1f} | {len(m.runs)} |")
    return "\n".join(rows)


BASELINE = " [baseline]"


def baseline_table(results: list[Measurement]) -> str:
    """Each conversion beside the same conversion by the baseline tree: medians, the median of the
    per-round ratios (this / baseline), and peak RSS."""
    rows = ["| case | target | this tree s | baseline s | this / baseline, paired | this CPU s | baseline CPU s | "
            "this peak RSS MB | baseline peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_key = {(m.case, m.what): m for m in results}
    for m in results:
        base = by_key.get((m.case, m.what + BASELINE))
        if not m.what.startswith("convert") or m.what.endswith(BASELINE) or base is None or not m.runs or not base.runs:
            continue
        paired = paired_ratio(m, base)
        rows.append(f"| {m.case} | {m.what[len('convert '):]} | {m.seconds:.2f} | {base.seconds:.2f} | "
                    f"{paired:.3f} | {m.cpu_seconds:.2f} | {base.cpu_seconds:.2f} | {m.peak_rss_mb:.0f} | {base.peak_rss_mb:.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scratch", type=Path, default=Path(os.environ.get("WOQCONV_BENCH_DIR", "/tmp/woqconv-bench")))
    ap.add_argument("--cases", default="7b,7b-sharded,1b", help=f"comma-separated, from {', '.join(CASES)}")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="woqconv convert --workers")
    ap.add_argument("--cache", choices=("warm", "cold"), default="warm",
                    help="warm: sources read once before each run; cold: their pages are evicted before each run")
    ap.add_argument("--inc-route", default="1b", help="cases to run INC's own route on (comma-separated, or 'none')")
    ap.add_argument("--inc-timeout", type=float, default=1800.0)
    ap.add_argument("--inc-runs", type=int, default=1, help="runs of INC's route per case (the median is reported)")
    ap.add_argument("--json", type=Path, help="where to write the results (default SCRATCH/results.json)")
    ap.add_argument("--keep", action="store_true", help="keep the synthesized checkpoints (reused by the next run)")
    ap.add_argument("--baseline", type=Path, help="another woqconv source tree (a worktree of an older commit): each "
                    "conversion also runs with it, right after this tree's in the same round, and a paired table compares them")
    args = ap.parse_args(argv)
    if args.baseline and args.runs % 2:
        # The two trees alternate which goes first, and the first of a round is slower here (the disk still
        # writes back the round's earlier output): an odd count puts one tree first once more. Measured at
        # 7B hpu: 3 rounds first against 2 gave this / baseline 1.42; 6 balanced rounds, 0.94.
        args.runs += 1
        print(f"--baseline: {args.runs} rounds, so each tree goes first in as many", flush=True)

    cases = [c for c in args.cases.split(",") if c]
    targets = [t for t in args.targets.split(",") if t]
    inc_cases = [] if args.inc_route == "none" else [c for c in args.inc_route.split(",") if c]
    scratch: Path = args.scratch.resolve()
    if ROOT in (scratch, *scratch.parents):
        ap.error("--scratch must lie outside the repository")
    scratch.mkdir(parents=True, exist_ok=True)
    log = scratch / "children.log"
    # Each tree first on the path (the same interpreter, packages and C extension build for both).
    python = ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "woqconv"]
    baseline = ["env", f"PYTHONPATH={args.baseline.resolve()}", sys.executable, "-m", "woqconv"] if args.baseline else None
    print(f"scratch {scratch}, {args.runs} runs each, page cache {args.cache}, woqconv --workers {args.workers}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    results: list[Measurement] = []
    made: list[Path] = []
    for case in cases:
        shape, shards = CASES[case]
        src = scratch / f"src-{case}"
        if not (src / "config.json").exists():
            if src.exists():
                shutil.rmtree(src)
            t = time.perf_counter()
            # In a child process: this runner never imports torch, so the children it forks (whose
            # peak RSS is measured) do not start from a copy of a large parent.
            subprocess.run([sys.executable, str(HERE / "synth.py"), str(src), "--shape", shape, "--shards", str(shards)],
                           check=True, stdout=subprocess.DEVNULL)
            print(f"synthesized {src} in {time.perf_counter() - t:.1f} s", flush=True)
            made.append(src)
        nbytes = sum(p.stat().st_size for p in checkpoint_files(src))
        print(f"{case}: {nbytes / 2**30:.2f} GiB in {len(list(src.glob('*.safetensors')))} safetensors file(s)", flush=True)
        steps = [(Measurement(case, "cp", nbytes), lambda out: ["cp", "-r", str(src), str(out)]),
                 # woqconv fsyncs every file before it renames the output into place; cp leaves the
                 # writeback for later. Both floors are reported.
                 (Measurement(case, CP_SYNC, nbytes), lambda out: ["sh", "-c", 'cp -r "$1" "$2" && sync "$2"/*', "sh", str(src), str(out)])]
        if "hpu" in targets:
            steps.append((Measurement(case, CP_TWICE, nbytes),
                          lambda out: ["sh", "-c", 'cp -r "$1" "$2" && mkdir "$2/again" && cp "$1"/*.safetensors "$2/again/"', "sh", str(src), str(out)]))
        by_target = {}
        swapped = set()
        for target in targets:
            extra = ["--allow-bf16"] if target == "hpu" else []  # random fp16 scales are not bf16-exact
            if baseline:
                swapped.add(len(steps))
            for tree, label in ((python, ""), (baseline, BASELINE)):
                if tree is None:
                    continue
                cmd = lambda out, t=target, e=extra, tree=tree: [*tree, "convert", str(src), "-o", str(out), "--to", t, "-q",
                                                                  "--workers", str(args.workers), *e]
                m = Measurement(case, f"convert {target}{label}", nbytes)
                by_target.setdefault(target, m)
                steps.append((m, cmd))
        steps.append((Measurement(case, "inspect", nbytes), lambda out: [*python, "inspect", str(src)]))
        steps.append((Measurement(case, STARTUP, nbytes), lambda out: [sys.executable, "-c", "import torch"]))
        measure_rounds(steps, src, scratch, args.runs, args.cache, log=log, swapped=swapped)
        results.extend(m for m, _ in steps)
        if case in inc_cases:
            results.append(inc_route(case, src, scratch, by_target.get("hpu"), args.inc_timeout, log, args.inc_runs))

    print()
    print(table(results))
    if baseline:
        print(f"\nThis tree ({ROOT}) against the baseline ({args.baseline}), paired by round:\n")
        print(baseline_table(results))
    path = args.json or scratch / "results.json"
    path.write_text(json.dumps({
        "cpus": os.cpu_count(), "runs": args.runs, "cache": args.cache, "workers": args.workers,
        "load_average_end": os.getloadavg(), "results": [m.to_dict() for m in results],
    }, indent=2))
    print(f"\nJSON: {path}")
    if not args.keep:
        for src in {*made, *(scratch / f"src-{c}" for c in cases)}:
            shutil.rmtree(src, ignore_errors=True)
    return 0 if all(m.ok for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
