"""Scale: cold ``aniso produce`` against the reference ReAlign script on the same rows.

For each size (rows per modality) this writes planted-gap rows (d=512) once, in both forms: fp16
``.npy`` files (what ``produce`` reads, in place) and the reference's 200,000-row fp16 pickle
files. It then alternates, ``--repeat`` times: the reference (``bench/reference_realign.py``:
pickles in, float64 numpy, pickles out), then a cold ``aniso produce --method realign`` (a fresh
output root: every stage runs, the Prefect server starts). Each run is a child process whose
peak memory is the sampled (0.1 s) sum of the RSS of its whole process tree (main, Prefect
server, Dask workers), measured with psutil. Optionally ``--anisoalign`` adds cold AnisoAlign
runs at the largest size. ``--fixed`` measures the fixed costs: three cold produce runs on 3,000 rows,
``aniso --help`` and ``import aniso`` (time, RSS, whether torch was imported).

Run (figures in docs/performance.md)::

    nice -n 5 .venv/bin/python bench/scale.py --rows 200000 1000000 --repeat 2 --anisoalign --fixed

Threads: BLAS is limited to 1 thread per process (``OMP_NUM_THREADS=1`` etc.) for both sides,
so the 2 Dask workers and the reference use the same cores without oversubscription.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ANISO = str(Path(PY).with_name("aniso"))
PICKLE_ROWS = 200_000
BLOCK = 100_000
THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


# -- data -----------------------------------------------------------------------------------
def planted_rows(n: int, d: int, *, image: bool, seed: int = 0):
    """Planted-gap rows (aniso.testing.synthetic's model) generated block by block: same basis for every
    block, so any size streams in bounded memory. Yields fp16 unit rows."""
    rng = np.random.default_rng(seed)
    latent, gap_rank = 16, 3
    basis = np.linalg.qr(rng.normal(size=(d, latent + gap_rank + 2)))[0]
    sem, res = basis[:, :latent], basis[:, latent:latent + gap_rank]
    cone = basis[:, -1] if image else basis[:, -2]
    block_rng = np.random.default_rng([seed, 1 + int(image)])
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        z = block_rng.normal(size=(m, latent)) * np.linspace(1.0, 0.3, latent)
        x = z @ sem.T * 0.25 + 0.6 * cone + block_rng.normal(scale=0.02, size=(m, d))
        if image:
            x += (block_rng.normal(size=(m, gap_rank)) * 0.35 * np.linspace(1.0, 0.5, gap_rank)) @ res.T
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield start, x.astype(np.float16)


def write_inputs(base: Path, n: int, d: int) -> dict[str, Path]:
    """``<base>/<n>/{text,image}.npy`` and ``{text,image}_pkl/*.pkl`` (skipped when present)."""
    folder = base / f"n{n}"
    done = folder / "DONE"
    paths = {m: folder / f"{m}.npy" for m in ("text", "image")}
    paths.update({f"{m}_pkl": folder / f"{m}_pkl" for m in ("text", "image")})
    if done.exists():
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for modality in ("text", "image"):
        arr = np.lib.format.open_memmap(paths[modality], mode="w+", dtype=np.float16, shape=(n, d))
        pkl = paths[f"{modality}_pkl"]
        pkl.mkdir()
        buffer: list[np.ndarray] = []
        written = 0
        for start, block in planted_rows(n, d, image=modality == "image"):
            arr[start:start + block.shape[0]] = block
            buffer.append(block)
            while sum(b.shape[0] for b in buffer) >= PICKLE_ROWS or (start + block.shape[0] == n and buffer):
                rows = np.concatenate(buffer)
                part, rest = rows[:PICKLE_ROWS], rows[PICKLE_ROWS:]
                ids = [f"{modality[0]}{written + i}" for i in range(part.shape[0])]
                with open(pkl / f"{modality}_{written // PICKLE_ROWS:04d}.pkl", "wb") as f:
                    pickle.dump({"ids": ids, "embeddings": part}, f, protocol=pickle.HIGHEST_PROTOCOL)
                written += part.shape[0]
                buffer = [rest] if rest.shape[0] else []
        arr.flush()
        del arr
    done.write_text("ok")
    return paths


# -- measuring a child process tree ---------------------------------------------------------
def measure(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict:
    """Wall, CPU (reaped descendants) and peak summed RSS of ``cmd``'s process tree."""
    env = {**os.environ, **THREADS, **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"sum": 0, "processes": 0}
    stop = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            total, count = 0, 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                    count += 1
                except psutil.NoSuchProcess:
                    pass
            if total > peak["sum"]:
                peak.update(sum=total, processes=count)
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_tree_mib": peak["sum"] / 2**20, "processes": peak["processes"], "stdout": out, "stderr": err}


def run_reference(paths: dict[str, Path], work: Path) -> dict:
    out = work / "ref-out"
    shutil.rmtree(out, ignore_errors=True)
    r = measure([PY, str(ROOT / "bench" / "reference_realign.py"), "--text", str(paths["text_pkl"]),
                 "--image", str(paths["image_pkl"]), "--out", str(out)])
    r.update(json.loads(r.pop("stdout").strip().splitlines()[-1]))
    r.pop("stderr")
    shutil.rmtree(out, ignore_errors=True)
    return r


STAGE_RE = re.compile(r"stage (\w[\w ]*?): ([0-9.]+) s")


def run_produce(paths: dict[str, Path], work: Path, method: str) -> dict:
    out = work / f"produce-{method}"
    shutil.rmtree(out, ignore_errors=True)
    r = measure([ANISO, "produce", "--text", str(paths["text"]), "--image", str(paths["image"]), "--out", str(out),
                 "--dataset", "bench", "--method", method, "--verbose"], env={"ANISO_PROFILE": "default"})
    stages = {m.group(1): float(m.group(2)) for m in STAGE_RE.finditer(r["stderr"])}
    gates = json.loads(next((out / "bench" / "runs").glob("*/quality/gates.json")).read_text())
    r.update(stages=stages, gate_s=float(gates["seconds"]), gate_timings=gates.get("timings", {}),
             passed=bool(gates["passed"]))
    r.pop("stdout")
    r.pop("stderr")
    shutil.rmtree(out, ignore_errors=True)
    return r


def fixed_costs(work: Path, repeat: int = 3) -> dict:
    paths = write_inputs(work, 3000, 512)
    runs = [run_produce(paths, work, "realign") for _ in range(repeat)]
    produce = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]  # the median run, with its stages
    produce["wall_runs_s"] = [r["wall_s"] for r in runs]
    help_s = [measure([ANISO, "--help"])["wall_s"] for _ in range(5)]
    probe = ("import time, resource, sys; t = time.perf_counter(); import aniso; "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'torch' in sys.modules)")
    imports = []
    for _ in range(5):
        t, rss, torch = subprocess.run([PY, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
        imports.append((float(t), float(rss), torch == "True"))
    base_rss = float(subprocess.run([PY, "-c", "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
                                    capture_output=True, text=True, check=True).stdout)
    return {"produce_3000": produce, "help_s": help_s, "import_s": [i[0] for i in imports],
            "import_rss_mib": statistics.median(i[1] for i in imports), "bare_python_rss_mib": base_rss,
            "import_loads_torch": any(i[2] for i in imports)}


def fmt_runs(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs]
    return f"min {min(values):.1f} / median {statistics.median(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[200_000, 1_000_000],
                        help="sizes (rows per modality); '--rows' alone runs none (e.g. with --fixed)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/aniso-scale"))
    parser.add_argument("--anisoalign", action="store_true", help="cold AnisoAlign runs at the largest size")
    parser.add_argument("--fixed", action="store_true", help="fixed costs (3,000 rows, --help, import)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, "
          f"{psutil.virtual_memory().available / 2**30:.1f} GiB available; BLAS threads 1 per process")
    results: dict = {"sizes": {}}
    for n in args.rows:
        paths = write_inputs(args.workdir, n, args.dim)
        ref, ours = [], []
        # the reference holds both corpora as float64 (+ fp16 copies while loading): never run it
        # without that much memory free plus a margin (this machine is shared)
        need = 2 * n * args.dim * (8 + 2) * 1.15 + 3 * 2**30
        for _ in range(args.repeat):
            available = psutil.virtual_memory().available
            if not args.no_reference and available > need:
                ref.append(run_reference(paths, args.workdir))
            elif not args.no_reference:
                print(f"(reference skipped at {n:,} rows: needs ≈ {need / 2**30:.1f} GiB with margin, "
                      f"{available / 2**30:.1f} GiB available)")
            ours.append(run_produce(paths, args.workdir, "realign"))
        entry = {"reference": ref, "produce_realign": ours, "load_after": os.getloadavg()[0]}
        results["sizes"][n] = entry
        print(f"\n== {n:,} text + {n:,} image rows, d={args.dim} (load average now {entry['load_after']:.1f})")
        if ref:
            print(f"reference ReAlign script: wall {fmt_runs(ref, 'wall_s')} s, CPU {fmt_runs(ref, 'cpu_s')} s, "
                  f"peak tree memory {max(r['peak_tree_mib'] for r in ref):.0f} MiB "
                  f"(load {statistics.median(r['load_s'] for r in ref):.1f} s, math {statistics.median(r['realign_s'] for r in ref):.1f} s, "
                  f"save {statistics.median(r['save_s'] for r in ref):.1f} s)")
        print(f"aniso produce --method realign (cold): wall {fmt_runs(ours, 'wall_s')} s, CPU {fmt_runs(ours, 'cpu_s')} s, "
              f"peak tree memory {max(r['peak_tree_mib'] for r in ours):.0f} MiB over {max(r['processes'] for r in ours)} processes")
        stages = ours[-1]["stages"]
        print("  stages (last run): " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
        if ref:
            speed = [r["wall_s"] / o["wall_s"] for r, o in zip(ref, ours)]
            print(f"  → produce is {min(speed):.2f}–{max(speed):.2f}× faster than the reference (pairs run back to back)")
        apply_s, gate_stage_s = stages.get("apply"), stages.get("gates")
        if apply_s and gate_stage_s is not None:
            timings = ours[-1]["gate_timings"]
            # the gate stage after apply is what the run waits for; the samples and their
            # metrics ("prepared") are computed in a thread while apply runs
            print(f"  gates + report after apply: stage {gate_stage_s:.2f} s = {100 * gate_stage_s / apply_s:.1f}% of apply "
                  f"({apply_s:.1f} s); gate_run {ours[-1]['gate_s']:.2f} s; samples + metrics prepared beside apply "
                  f"in {timings.get('prepared', float('nan')):.2f} s; gate timings {timings}")
    if len(args.rows) > 1:
        small, large = results["sizes"][args.rows[0]], results["sizes"][args.rows[-1]]
        ratio = max(r["peak_tree_mib"] for r in large["produce_realign"]) / max(r["peak_tree_mib"] for r in small["produce_realign"])
        print(f"\npeak memory {args.rows[-1]:,} rows / {args.rows[0]:,} rows: {ratio:.2f}×")
    if args.anisoalign:
        n = args.rows[-1]
        paths = write_inputs(args.workdir, n, args.dim)
        aa = run_produce(paths, args.workdir, "anisoalign")
        ra = results["sizes"][n]["produce_realign"]
        results["anisoalign"] = aa
        print(f"\naniso produce --method anisoalign at {n:,} (cold): wall {aa['wall_s']:.1f} s = "
              f"{aa['wall_s'] / statistics.median(r['wall_s'] for r in ra):.2f}× the realign median; "
              f"peak tree memory {aa['peak_tree_mib']:.0f} MiB; stages " + ", ".join(f"{k} {v:.1f} s" for k, v in aa["stages"].items()))
    if args.fixed:
        fc = fixed_costs(args.workdir)
        results["fixed"] = fc
        p = fc["produce_3000"]
        print(f"\ncold produce on 3,000 rows ({len(p['wall_runs_s'])} runs): wall min {min(p['wall_runs_s']):.1f} / median "
              f"{statistics.median(p['wall_runs_s']):.1f} s, peak tree memory {p['peak_tree_mib']:.0f} MiB; "
              "stages (median run) " + ", ".join(f"{k} {v:.1f} s" for k, v in p["stages"].items()))
        print(f"aniso --help: min {min(fc['help_s']):.2f} s / median {statistics.median(fc['help_s']):.2f} s (5 runs)")
        print(f"import aniso: min {min(fc['import_s']) * 1000:.0f} ms / median {statistics.median(fc['import_s']) * 1000:.0f} ms, "
              f"RSS {fc['import_rss_mib']:.0f} MiB (bare python {fc['bare_python_rss_mib']:.0f} MiB), torch imported: {fc['import_loads_torch']}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
