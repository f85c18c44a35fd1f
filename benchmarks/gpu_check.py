"""One prepared GPU check: dva's speed and memory at full size, in one command that ends in under 8 minutes.

A GPU is lent for minutes, so everything that needs one is measured by this one command, each part in a process of
its own with its own time limit: a part that hangs, runs out of memory or fails is recorded (``ok``, ``failed``,
``timeout`` or ``skipped``, with a one-line reason) and the next part starts. The whole check stops starting parts
at ``--deadline`` (450 s). After each part, ``gpu-check.json``, ``gpu-check.md`` and ``gpu-check.log`` (the parts'
output) are rewritten in ``--out``, so a check cut short still leaves what it measured. Each part is a fork of this
process, which has imported torch, diffusers and dva once and never initialises CUDA (so each part starts in a
second and owns its CUDA context); ``--spawn`` starts fresh interpreters instead.

Parts, in order:

* ``build``: full-size stand-ins with random weights (speed and memory do not depend on weight values), built on the
  GPU and saved once: SD v1-4 as a dva model folder (diffusers layout: UNet of 859.5 M parameters and VAE in fp16,
  PNDM scheduler, a BERT-base encoder instead of CLIP) and RadBERT as on its hub page (BERT-base, vocabulary 28996,
  weights only as ``pytorch_model.bin``, a pickled state dict, with ``config.json`` and ``vocab.txt``), which dva
  loads through transformers with ``weights_only=True``; also the input images and a four-class data set;
* ``diffusers``: diffusers' ``StableDiffusionImg2ImgPipeline`` at the thesis' settings (512 px, PNDM 75 steps,
  strength 0.85, guidance 7.5, fp16), batch 1 and 8: the baseline every ratio is taken against;
* ``dva``: ``dva run`` (``dva.core.run.run``, end to end: reading, sampling, maps, writing) at the same settings,
  batch 1 and 8;
* ``fast``: ``dva run`` at the fastest setting of equal map quality: the sampling settings of the registry entry
  ``--fast-entry`` (default ``tiny-phantom``, the entry the attribution benchmark tunes), read at run time, with
  ``--fast-setting KEY=VALUE`` overrides, batch 8;
* ``writing``: ``dva run`` at the fast setting on 2048² inputs against 64² inputs: the seconds per image that
  writing full-size outputs adds while sampling goes on;
* ``finetune``: ``dva finetune --entry finetune-thesis`` (the thesis' recipe: DreamBooth, SD v1-4 and RadBERT
  trained jointly, bf16, batch 2 plus 2 prior-preservation images, 512 px) for 20 steps, four classes: steps/s and
  ``torch.cuda.max_memory_allocated``;
* ``dva-compile``: ``dva run --compile`` at the thesis' settings, batch 8 then 1 (last: compiling takes minutes).

Every dva row gives images/s, its ratio to diffusers at the same batch size, the UNet evaluations per image
(counted, the guidance batch included) and the first batch's seconds (loading and compiling). Thesis rows on a GPU
also give the fraction of the floor: 106.5 TFLOP per counterfactual at the GPU's dense fp16 peak.

    python benchmarks/gpu_check.py --out build/gpu-check        # on one CUDA GPU, under 8 minutes
    .venv/bin/python benchmarks/gpu_check.py --tiny              # the same on the CPU with tiny sizes (smoke run)

Exit status 0 when every part is ok (or skipped), else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()  # the deadline counts from here: imports and the machine's description included
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

DEADLINE_S = 450.0  # no part starts after this; the whole check then ends well under 8 minutes
LAST_START_S = 15.0  # a part is not started with less than this left before the deadline
FLOOR_TFLOP = 106.5  # per counterfactual at the thesis settings: 64 UNet calls x 1.61 TFLOP (batch 2) + the VAE
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}  # dense bf16/fp16
GIB = 2**30
RADBERT_VOCAB = 28996  # StanfordAIMI/RadBERT's config.json
CLASSES = ("Normal", "Lung Opacity", "COVID", "Viral Pneumonia")  # the thesis' schedule order
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD14_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)


@dataclass(frozen=True)
class Scale:
    """The sizes of one check: the GPU's, or the CPU smoke run's (``--tiny``)."""

    tiny: bool
    device: str
    dtype: str  # dva run's --dtype; diffusers runs in the same
    resolution: int
    steps_cap: int  # every sampling setting at most this many steps (0: as its entry says)
    batch_sizes: tuple[int, int]
    write_sides: tuple[int, int]  # (small, large) input side of the writing part
    write_images: int
    finetune_steps: int
    timed_batches: int  # batches per timed run
    min_images: int  # images per timed run, at least

    def timed_images(self, batch: int) -> int:
        return max(self.min_images, self.timed_batches * batch)


FULL = Scale(False, "cuda", "float16", 512, 0, (1, 8), (64, 2048), 16, 20, 2, 4)
TINY = Scale(True, "cpu", "float32", 64, 4, (1, 2), (64, 256), 2, 4, 1, 2)


@dataclass(frozen=True)
class Part:
    name: str
    limit_s: float
    title: str
    gpu_only: bool = False


PARTS = (
    Part("build", 90, "full-size stand-ins (SD v1-4 dva model folder, RadBERT pytorch_model.bin), inputs, data set"),
    Part("diffusers", 75, "diffusers img2img at the thesis' settings, batch 1 and 8"),
    Part("dva", 75, "dva run at the thesis' settings, batch 1 and 8"),
    Part("fast", 60, "dva run at the fastest equal-quality setting, batch 8"),
    Part("writing", 90, "dva run on 2048² inputs against 64² inputs (writing overlapped with sampling)"),
    Part("finetune", 150, "dva finetune --entry finetune-thesis, 20 steps"),
    Part("dva-compile", 240, "dva run --compile at the thesis' settings, batch 8 then 1", gpu_only=True),
)


# -- the parent: parts in order, each in its own process ---------------------------------------------------------


def set_environment(work: Path) -> None:
    """Offline, and every cache inside the output folder; set before anything is imported or a part forked."""
    caches = work / "caches"
    os.environ.update({
        "PYTORCH_NVML_BASED_CUDA_CHECK": "1",  # torch.cuda.is_available() without initialising CUDA before a fork
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVA_CACHE": str(caches / "dva"),
        "HF_HOME": str(caches / "huggingface"), "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
        "TRITON_CACHE_DIR": str(caches / "triton"), "MPLCONFIGDIR": str(caches / "matplotlib"),
    })


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def preload() -> None:
    """Import what the parts use once, here: each part is a fork of this process and starts without importing
    them again (seconds per part). CUDA is not initialised here, so each part initialises its own."""
    with contextlib.suppress(ImportError):  # a missing package fails the parts that need it, each with its reason
        import accelerate  # noqa: F401
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from diffusers import (  # noqa: F401
            AutoencoderKL,
            StableDiffusionImg2ImgPipeline,
            UNet2DConditionModel,
        )
        from transformers import BertModel  # noqa: F401

        import dva.cli.finetune
        import dva.core.run
        import dva.finetune.trainer  # noqa: F401


def forking_is_safe() -> bool:
    """Whether parts may be forks of this process: not once CUDA is initialised here (a forked child cannot use it)."""
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_initialized()


def start_part(name: str, plan_path: Path, log_path: Path, fork: bool) -> int:
    """Start the part's process, a process group of its own writing to ``log_path``; its pid. A fork starts with
    everything imported; otherwise a fresh interpreter runs this script with ``--part``."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if not fork:
        argv = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--plan", str(plan_path)]
        pid = os.posix_spawn(sys.executable, argv, os.environ, setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)])
        os.close(log)
        return pid
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(log)
        return pid
    code = 1
    try:
        os.setsid()
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = work_on(name, plan_path)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait_for(pid: int, limit: float) -> int | None:
    """The part's exit code (negative: the signal that ended it), or None once it ran ``limit`` seconds and its
    process group (compile workers too) was killed."""
    ends = time.perf_counter() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.perf_counter() >= ends:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.1)


def run_part(part: Part, limit: float, plan_path: Path, work: Path, cut_by_deadline: bool,
             fork: bool) -> dict[str, Any]:
    """Run one part in its own process, stopped at ``limit`` seconds; its record."""
    log_path = work / "logs" / f"{part.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    code = wait_for(start_part(part.name, plan_path, log_path, fork), limit)
    seconds = time.perf_counter() - started
    output = log_path.read_text(errors="replace")
    results_path = work / "results" / f"{part.name}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if code is None:
        why = "the overall deadline" if cut_by_deadline else "its limit"
        doing = results.get("stage") or f"last output: {last_line(output)}"
        status, reason = "timeout", f"stopped after {limit:.0f} s ({why}) during: {doing}"
    elif code == 0:
        status, reason = "ok", None
    elif code < 0:
        status, reason = "failed", f"ended by {signal.Signals(-code).name}; last output: {last_line(output)}"
    else:
        status, reason = "failed", last_line(output)
    return {"part": part.name, "title": part.title, "status": status, "reason": reason, "seconds": round(seconds, 2),
            "limit_s": round(limit, 1), "results": results, "log": output}


def not_run(part: Part, status: str, reason: str) -> dict[str, Any]:
    return {"part": part.name, "title": part.title, "status": status, "reason": reason, "seconds": 0.0,
            "limit_s": part.limit_s, "results": {}, "log": ""}


def machine() -> dict[str, Any]:
    """The machine: GPU name, driver and memory (nvidia-smi), versions; CUDA is not initialised here."""
    from importlib import metadata

    found: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                             "cpu_count": os.cpu_count()}
    for package in ("torch", "diffusers", "transformers", "accelerate"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    with contextlib.suppress(ImportError):
        import torch

        found.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True)
        name, driver, memory = (field.strip() for field in query.stdout.splitlines()[0].split(","))
        found.update(gpu=name, driver=driver, gpu_memory=memory)
    return found


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; each value read as JSON when it is JSON (``steps=12``, ``prior={"name": ...}``)."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--fast-setting {pair!r}: expected KEY=VALUE, e.g. --fast-setting steps=12.")
        try:
            settings[key.strip()] = json.loads(value)
        except ValueError:
            settings[key.strip()] = value
    return settings


def parse_limits(pairs: list[str]) -> dict[str, float]:
    limits = {}
    names = {part.name for part in PARTS}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in names:
            raise SystemExit(f"--limit {pair!r}: expected PART=SECONDS with PART one of {', '.join(sorted(names))}.")
        limits[name] = float(value)
    return limits


def make_plan(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """What every part reads: sizes, paths, the fast setting's entry and overrides, the test hook."""
    scale = TINY if args.tiny else FULL
    return {"scale": asdict(scale), "work": str(work), "fast_entry": args.fast_entry,
            "fast_overrides": parse_settings(args.fast_setting), "finetune_flags": args.finetune_flag,
            "fail_part": args.fail_part}


def check_parts(args: argparse.Namespace, plan_path: Path, work: Path, report: Callable[[list], None]) -> list:
    """Every part in order within the deadline; ``report`` is called with the records after each part."""
    fork = not args.spawn and forking_is_safe()
    limits = parse_limits(args.limit)
    chosen = set(args.parts.split(",")) if args.parts else {part.name for part in PARTS}
    records: list[dict[str, Any]] = []
    for part in PARTS:
        left = args.deadline - (time.perf_counter() - STARTED)
        built = next((r["status"] == "ok" for r in records if r["part"] == "build"), False)
        if part.name not in chosen and part.name != "build":
            continue
        if part.gpu_only and args.tiny:
            records.append(not_run(part, "skipped", "torch.compile is measured on a GPU only (--tiny runs on the CPU)"))
        elif part.name != "build" and not built:
            records.append(not_run(part, "failed", "not started: it needs the stand-ins, which the build part did not make"))
        elif left < min(LAST_START_S, limits.get(part.name, part.limit_s)):
            records.append(not_run(part, "timeout", f"not started: the overall deadline ({args.deadline:.0f} s) was reached"))
        else:
            limit = limits.get(part.name, part.limit_s)
            print(f"{part.name}: {part.title} (limit {min(limit, left):.0f} s)", flush=True)
            records.append(run_part(part, min(limit, left), plan_path, work, left < limit, fork))
            print(f"  {records[-1]['status']} in {records[-1]['seconds']:.1f} s"
                  f"{': ' + records[-1]['reason'] if records[-1]['reason'] else ''}", flush=True)
        report(records)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/gpu-check"), help="folder of the results (default "
                        "build/gpu-check): gpu-check.json, gpu-check.md, gpu-check.log")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: a smoke run of every part")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="no part starts after this many seconds "
                        f"(default {DEADLINE_S:.0f}); each part's limit is cut to what is left")
    parser.add_argument("--parts", help="comma-separated parts to run (default all; build always runs)")
    parser.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS", help="a part's own time limit")
    parser.add_argument("--fast-entry", default="tiny-phantom", help="registry entry whose sampling settings are the "
                        "fastest equal-quality setting (default tiny-phantom)")
    parser.add_argument("--fast-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="override one of the fast entry's settings (value as JSON), e.g. steps=12")
    parser.add_argument("--finetune-flag", action="append", default=[], metavar="FLAG",
                        help="add a flag to the finetune part's dva finetune, e.g. --finetune-flag=--use-8bit-adam")
    parser.add_argument("--fail-part", help="test hook: make this part fail at its start")
    parser.add_argument("--work", type=Path, help="folder of the stand-ins, inputs, outputs and caches (default "
                        "OUT/work; several GB), emptied first and removed at the end")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder at the end")
    parser.add_argument("--spawn", action="store_true", help="start each part in a fresh interpreter instead of a "
                        "fork of this process (slower: each imports torch and diffusers again)")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # a spawned part's process
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        return work_on(args.part, args.plan)
    unknown = set((args.parts or "build").split(",")) - {part.name for part in PARTS}
    if unknown or args.fail_part not in (None, *(part.name for part in PARTS)):
        parser.error(f"unknown part {sorted(unknown or {args.fail_part})[0]!r}; the parts are "
                     f"{', '.join(part.name for part in PARTS)}.")
    out = args.out.resolve()
    work = (args.work or out / "work").resolve()
    if work.is_dir() and any(work.iterdir()) and not (work / "plan.json").exists():
        parser.error(f"--work {work} holds files that are not a GPU check's; pass a new or empty folder.")
    shutil.rmtree(work, ignore_errors=True)
    set_environment(work)
    from dva.core.io import atomic_write_text

    plan_path = work / "plan.json"
    plan = make_plan(args, work)
    atomic_write_text(plan_path, json.dumps(plan, indent=1))
    payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "tiny": args.tiny,
               "deadline_s": args.deadline, "machine": machine(), "plan": plan, "parts": []}

    def report(records: list[dict[str, Any]]) -> None:
        payload.update(parts=[{k: v for k, v in r.items() if k != "log"} for r in records],
                       wall_s=round(time.perf_counter() - STARTED, 1))
        atomic_write_text(out / "gpu-check.json", json.dumps(payload, indent=1, default=str) + "\n")
        atomic_write_text(out / "gpu-check.md", markdown(payload))
        atomic_write_text(out / "gpu-check.log", "".join(f"===== {r['part']} ({r['status']})\n{r['log']}\n"
                                                         for r in records))

    preload()
    try:
        records = check_parts(args, plan_path, work, report)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + markdown(payload))
    print(f"results: {out / 'gpu-check.json'}, {out / 'gpu-check.md'}, {out / 'gpu-check.log'}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in records) else 1


# -- the report ---------------------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def sampling_rows(parts: dict[str, dict[str, Any]], machine_info: dict[str, Any]) -> list[str]:
    """The sampling table: every run's images/s against diffusers at the same batch size."""
    baseline = {row["batch"]: row["images_per_s"] for row in parts.get("diffusers", {}).get("sampling", [])}
    peak = next((p for key, p in PEAK_TFLOPS.items() if key in (machine_info.get("gpu") or "")), None)
    lines = ["| run | batch | images/s | s/image | vs diffusers | UNet evaluations/image | first batch s | "
             "fraction of floor |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("diffusers", "dva", "dva-compile", "fast"):
        for row in parts.get(name, {}).get("sampling", []):
            ratio = row["images_per_s"] / baseline[row["batch"]] if row["batch"] in baseline else None
            floor = FLOOR_TFLOP / peak * row["images_per_s"] if peak and row.get("thesis") else None
            lines.append(f"| {row['run']} | {row['batch']} | {row['images_per_s']:.2f} | {row['s_per_image']:.3f} | "
                         f"{fmt(ratio, '.2f')}{'x' if ratio else ''} | {fmt(row.get('unet_evaluations_per_image'), '.0f')} | "
                         f"{fmt(row.get('first_batch_s'), '.1f')} | {fmt(floor, '.0%')} |")
    return lines


def other_tables(parts: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    writing = parts.get("writing", {}).get("writing")
    if writing:
        lines += ["", "| inputs | images | s/image | added s/image |", "|---|---:|---:|---:|"]
        lines += [f"| {row['side']}² | {row['images']} | {row['s_per_image']:.3f} | {fmt(row.get('added_s_per_image'))} |"
                  for row in writing]
    tune = parts.get("finetune", {}).get("finetune")
    if tune:
        lines += ["", "| fine-tuning | steps | steps/s | peak allocated GiB | peak reserved GiB | load + steps + save s |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| {tune['recipe']} | {tune['steps']} | {fmt(tune.get('steps_per_s'))} | "
                  f"{fmt(tune.get('peak_allocated_gib'), '.2f')} | {fmt(tune.get('peak_reserved_gib'), '.2f')} | "
                  f"{tune['wall_s']:.1f} |"]
    stand_ins = parts.get("build", {}).get("stand_ins")
    if stand_ins:
        lines += ["", "| stand-in | parameters | on disk | built and saved in s |", "|---|---:|---:|---:|"]
        lines += [f"| {row['name']} | {row['parameters'] / 1e6:.1f} M | {row['bytes'] / 1e9:.2f} GB | {row['seconds']:.1f} |"
                  for row in stand_ins]
    return lines


def markdown(payload: dict[str, Any]) -> str:
    """The check as Markdown: the machine, each part's status, then the measured tables."""
    info = payload["machine"]
    gpu = f"{info['gpu']} ({info.get('gpu_memory')}, driver {info.get('driver')})" if info.get("gpu") else "no GPU"
    lines = [f"GPU check{' (--tiny: CPU, tiny sizes; no GPU numbers)' if payload['tiny'] else ''}: {gpu}; "
             f"torch {info.get('torch')} (CUDA {info.get('cuda')}), diffusers {info.get('diffusers')}, "
             f"transformers {info.get('transformers')}; {info.get('cpu_count')} CPUs; "
             f"{payload.get('wall_s', 0):.0f} s (deadline {payload['deadline_s']:.0f} s)", "",
             "| part | status | s | limit s | reason |", "|---|---|---:|---:|---|"]
    for record in payload["parts"]:
        lines.append(f"| {record['part']} | {record['status']} | {record['seconds']:.1f} | {record['limit_s']:.0f} | "
                     f"{(record['reason'] or '').replace('|', '/')} |")
    parts = {record["part"]: record["results"] for record in payload["parts"]}
    return "\n".join(lines + [""] + sampling_rows(parts, info) + other_tables(parts)) + "\n"


# -- the parts (each runs in its own process) ---------------------------------------------------------------------


class Recorder:
    """A part's results, rewritten after each measurement: a part stopped at its limit keeps what it measured."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def add(self, key: str, row: dict[str, Any]) -> None:
        self.data.setdefault(key, []).append(row)
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def stage(self, doing: str) -> None:
        """What the part is doing now: a part stopped at its limit is reported as stopped during it."""
        self.set("stage", doing)

    def save(self) -> None:
        from dva.core.io import atomic_write_text

        atomic_write_text(self.path, json.dumps(self.data, indent=1, default=str))


@dataclass
class Context:
    """What a part works with: its plan, sizes, folders and recorder."""

    plan: dict[str, Any]
    scale: Scale
    work: Path
    recorder: Recorder

    @property
    def model(self) -> Path:
        return self.work / "sd-v1-4"

    @property
    def radbert(self) -> Path:
        return self.work / "radbert"

    def inputs(self, side: int) -> list[Path]:
        return sorted((self.work / f"inputs-{side}").glob("*.png"))


def work_on(name: str, plan_path: Path) -> int:
    """A part's process: run it, and end with one line saying why when it fails."""
    plan = json.loads(plan_path.read_text())
    scale = Scale(**{**plan["scale"], "batch_sizes": tuple(plan["scale"]["batch_sizes"]),
                     "write_sides": tuple(plan["scale"]["write_sides"])})
    work = Path(plan["work"])
    context = Context(plan, scale, work, Recorder(work / "results" / f"{name}.json"))
    try:
        from bench_run import quiet_libraries

        quiet_libraries()
        if plan["fail_part"] == name:
            raise RuntimeError("forced to fail by --fail-part (a test hook)")
        WORKERS[name](context)
    except Exception as error:  # recorded by the parent as this part's reason; the other parts go on
        message = str(error).strip().splitlines()[0][:250] if str(error).strip() else ""
        print(f"part {name} failed: {type(error).__name__}{': ' + message if message else ''}", file=sys.stderr)
        return 1
    return 0


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bert_vocabulary(size: int) -> list[str]:
    """A WordPiece vocabulary of ``size`` tokens laid out as BERT-base-cased's (RadBERT's): [PAD], [unused*],
    [UNK], [CLS], [SEP], [MASK], then characters, dva's prompt words and fillers."""
    import string

    from dva.components.tokenizers import WORDS

    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(string.ascii_letters + string.digits + ".,-") + ["##" + c for c in string.ascii_lowercase] + WORDS
    tokens = list(dict.fromkeys(tokens))
    return tokens + [f"[filler{i}]" for i in range(size - len(tokens))]


def build_radbert(context: Context) -> tuple[Any, Any]:
    """RadBERT's hub layout with random weights: config.json, pytorch_model.bin (``torch.save`` of the state
    dict), vocab.txt; loaded back through transformers (the .bin path, ``weights_only=True``). Model, tokenizer."""
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    from dva.plugins.encoders import TINY_BERT

    folder = context.radbert
    folder.mkdir(parents=True)
    config = BertConfig(vocab_size=RADBERT_VOCAB, architectures=["BertModel"], **(TINY_BERT if context.scale.tiny else {}))
    torch.manual_seed(0)
    with torch.device(context.scale.device):
        model = BertModel(config)
    config.save_pretrained(folder)
    torch.save({key: value.cpu() for key, value in model.state_dict().items()}, folder / "pytorch_model.bin")
    (folder / "vocab.txt").write_text("\n".join(bert_vocabulary(RADBERT_VOCAB)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    if AutoModel.from_pretrained(folder).config.vocab_size != RADBERT_VOCAB:
        raise RuntimeError(f"the RadBERT stand-in in {folder} did not load back")
    return model, AutoTokenizer.from_pretrained(folder)


def build_sd14(context: Context, bert: Any, tokenizer: Any) -> tuple[Any, Any]:
    """SD v1-4 as a dva model folder: UNet and VAE (random, fp16 on a GPU), PNDM, the BERT as its encoder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dva.components.text_encoders import TextEncoder
    from dva.core.model_folder import write_dva_json
    from dva.testing.tiny import sd_scheduler, tiny_unet, tiny_vae

    folder, tiny = context.model, context.scale.tiny
    torch.manual_seed(0)
    with torch.device(context.scale.device):
        unet = tiny_unet() if tiny else UNet2DConditionModel(**SD14_UNET)
        vae = tiny_vae() if tiny else AutoencoderKL(**SD14_VAE)
    dtype = torch.float32 if tiny else torch.float16
    unet.to(dtype).save_pretrained(folder / "unet")
    vae.to(dtype).save_pretrained(folder / "vae")
    sd_scheduler().save_pretrained(folder / "scheduler")
    TextEncoder("radbert", "bert", tokenizer, bert).save_pretrained(folder)
    write_dva_json(folder, encoder="radbert", encoder_family="bert", modality="chest-xray",
                   prompts={"healthy": "normal chest x ray"}, base_model="random weights (benchmarks/gpu_check.py)",
                   note="Random weights, for speed and memory measurements only.")
    return unet, vae


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def build_inputs(context: Context) -> None:
    """Input images (upscaled bundled chest X-rays) and a four-class data set for fine-tuning."""
    from bench_run import make_inputs

    scale = context.scale
    sides = {scale.resolution: scale.timed_images(max(scale.batch_sizes)),
             scale.write_sides[0]: scale.write_images, scale.write_sides[1]: scale.write_images}
    for side, count in sides.items():
        make_inputs(context.work / f"inputs-{side}", count, side)
    pictures = context.inputs(scale.resolution)
    for label in CLASSES:  # the same pictures in every class: speed does not depend on what they show
        (context.work / "data" / label).mkdir(parents=True)
        for picture in pictures[:4]:
            shutil.copy(picture, context.work / "data" / label / picture.name)


def part_build(context: Context) -> None:
    began = time.perf_counter()
    context.recorder.stage("building and saving the RadBERT stand-in")
    bert, tokenizer = build_radbert(context)
    synchronize()
    rows = [{"name": "RadBERT (BERT-base, pytorch_model.bin)", "parameters": sum(p.numel() for p in bert.parameters()),
             "bytes": folder_bytes(context.radbert), "seconds": time.perf_counter() - began}]
    began = time.perf_counter()
    context.recorder.stage("building and saving the SD v1-4 stand-in")
    unet, vae = build_sd14(context, bert, tokenizer)
    synchronize()
    parameters = sum(p.numel() for module in (unet, vae, bert) for p in module.parameters())
    rows.append({"name": "SD v1-4 (dva model folder: UNet, VAE, PNDM, BERT)", "parameters": parameters,
                 "bytes": folder_bytes(context.model), "seconds": time.perf_counter() - began,
                 "unet_parameters": sum(p.numel() for p in unet.parameters())})
    context.recorder.set("stand_ins", rows)
    began = time.perf_counter()
    context.recorder.stage("writing the input images and the data set")
    build_inputs(context)
    context.recorder.set("inputs_s", time.perf_counter() - began)


@contextlib.contextmanager
def counting_unet_evaluations() -> Any:
    """Count the images the UNet evaluates (a batch doubled by guidance counts twice), for eager runs."""
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.forward
    counter = {"evaluations": 0}

    def forward(self: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        counter["evaluations"] += int(sample.shape[0])
        return original(self, sample, *args, **kwargs)

    UNet2DConditionModel.forward = forward
    try:
        yield counter
    finally:
        UNet2DConditionModel.forward = original


def rate(run: str, batch: int, images: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"run": run, "batch": batch, "images": images, "s_per_image": seconds / images,
            "images_per_s": images / seconds, **extra}


def part_diffusers(context: Context) -> None:
    """diffusers' img2img on the same components, prompt embeddings from dva's encoder (diffusers knows only CLIP)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from PIL import Image

    from dva.core.model_folder import inspect_model
    from dva.core.plugins import load_catalogue
    from dva.core.runtime import load_encoder

    model, device = context.model, torch.device(context.scale.device)
    dtype = getattr(torch, context.scale.dtype)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype).to(device)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype).to(device)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                          scheduler=PNDMScheduler.from_pretrained(model, subfolder="scheduler"),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    catalogue = load_catalogue(entry_points=False)
    recipe = dva_recipe(context, "thesis", 1)  # the settings dva runs at, read from the registry
    encoder = load_encoder(recipe, catalogue, inspect_model(str(model)), int(unet.config.cross_attention_dim))
    embeds = encoder.to(device).encode([recipe.prompt, recipe.negative_prompt], device).to(dtype)

    def call(paths: list[Path]) -> None:
        images = [Image.open(path).convert("RGB") for path in paths]
        pipe(prompt_embeds=embeds[:1].repeat(len(paths), 1, 1), negative_prompt_embeds=embeds[1:].repeat(len(paths), 1, 1),
             image=images, strength=recipe.prior_options["strength"], num_inference_steps=recipe.steps,
             guidance_scale=recipe.guidance_scale, output_type="np",
             generator=[torch.Generator("cpu").manual_seed(0) for _ in paths])

    for batch in context.scale.batch_sizes:
        paths = context.inputs(context.scale.resolution)[: context.scale.timed_images(batch)]
        context.recorder.stage(f"diffusers img2img at batch {batch}")
        began = time.perf_counter()
        call(paths[:batch])
        synchronize()
        first = time.perf_counter() - began
        with counting_unet_evaluations() as counter:
            began = time.perf_counter()
            for start in range(0, len(paths), batch):
                call(paths[start:start + batch])
            synchronize()
            seconds = time.perf_counter() - began
        context.recorder.add("sampling", rate("diffusers img2img", batch, len(paths), seconds, thesis=True,
                                              unet_evaluations_per_image=counter["evaluations"] / len(paths),
                                              first_batch_s=first))


def timed_dva_run(recorder: Recorder, recipe: Any, inputs: list[Path], out: Path, warm_up: bool = True,
                  count: bool = True) -> dict[str, Any]:
    """Seconds per image of ``dva run`` from the model being loaded to the run's end (reading, sampling, maps,
    writing, manifest, report), after a warm-up run of one batch (loading, compiling). Any failed image fails it."""
    from dva.core.plugins import load_catalogue
    from dva.core.run import RunEvents, run

    catalogue = load_catalogue(entry_points=False)
    began = time.perf_counter()
    what = f"{recipe.entry} at batch {recipe.batch_size}{', compiled' if recipe.compile else ''}"
    if warm_up:
        recorder.stage(f"the first batch of {what} (loading{', compiling' if recipe.compile else ''})")
        run(recipe, [str(p) for p in inputs[: recipe.batch_size]], out / "warm-up", catalogue)
    recorder.stage(f"the timed run of {what}, {len(inputs)} images")
    first = time.perf_counter() - began
    times: dict[str, float] = {}

    class Clock(RunEvents):
        def loaded(self, runtime: Any) -> None:
            times.setdefault("loaded", time.perf_counter())

    with counting_unet_evaluations() if count else contextlib.nullcontext({}) as counter:
        result = run(recipe, [str(p) for p in inputs], out / "timed", catalogue, events=Clock())
        synchronize()
        seconds = time.perf_counter() - times["loaded"]
    failed = [job for job in result.jobs if job.status != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(inputs)} images not done; first: {failed[0].status}, {failed[0].error}")
    found = {"first_batch_s": first if warm_up else None, "seconds": seconds}
    if counter:
        found["unet_evaluations_per_image"] = counter["evaluations"] / len(inputs)
    return found


def dva_recipe(context: Context, entry: str, batch: int, **overrides: Any) -> Any:
    """The recipe of ``entry`` on the SD v1-4 stand-in, at the check's device and dtype."""
    from dva.core.plugins import load_catalogue
    from dva.core.registry import load_entries, resolve

    settings = {"model": str(context.model), "device": context.scale.device, "dtype": context.scale.dtype,
                "batch_size": batch, **overrides}
    recipe = resolve(load_entries(), load_catalogue(entry_points=False), entry, settings)
    cap = context.scale.steps_cap
    if cap and recipe.steps > cap:
        recipe = resolve(load_entries(), load_catalogue(entry_points=False), entry, {**settings, "steps": cap})
    return recipe


def thesis_runs(context: Context, compiled: bool) -> None:
    scale = context.scale
    batches = sorted(scale.batch_sizes, reverse=compiled)  # compiled: batch 8 first, the row that matters most
    for batch in batches:
        recipe = dva_recipe(context, "thesis", batch, compile=compiled)
        inputs = context.inputs(scale.resolution)[: scale.timed_images(batch)]
        found = timed_dva_run(context.recorder, recipe, inputs,
                              context.work / f"out-{'compiled' if compiled else 'eager'}-{batch}", count=not compiled)
        seconds = found.pop("seconds")
        context.recorder.add("sampling", rate("dva run --compile" if compiled else "dva run", batch, len(inputs),
                                              seconds, thesis=True, **found))


def fast_recipe(context: Context, batch: int) -> Any:
    """The fast entry's recipe with the ``--fast-setting`` overrides."""
    return dva_recipe(context, context.plan["fast_entry"], batch, **context.plan["fast_overrides"])


def describe(recipe: Any) -> dict[str, Any]:
    values = recipe.to_dict()
    keys = ("entry", "prior", "prior_options", "scheduler", "steps", "guidance_scale", "reference", "samples")
    return {key: values[key] for key in keys}


def part_fast(context: Context) -> None:
    scale = context.scale
    batch = max(scale.batch_sizes)
    recipe = fast_recipe(context, batch)
    context.recorder.set("setting", describe(recipe))
    inputs = context.inputs(scale.resolution)[: scale.timed_images(batch)]
    found = timed_dva_run(context.recorder, recipe, inputs, context.work / "out-fast")
    seconds = found.pop("seconds")
    name = f"dva run, {recipe.entry}: {recipe.prior} {recipe.scheduler} {recipe.steps} steps"
    context.recorder.add("sampling", rate(name, batch, len(inputs), seconds, thesis=False, **found))


def part_writing(context: Context) -> None:
    """Small inputs first (with the warm-up), then large ones on the warm model; the difference is writing's."""
    scale = context.scale
    batch = max(scale.batch_sizes)
    recipe = fast_recipe(context, batch)
    context.recorder.set("setting", describe(recipe))
    small = None
    for side in scale.write_sides:
        inputs = context.inputs(side)
        found = timed_dva_run(context.recorder, recipe, inputs, context.work / f"out-write-{side}",
                              warm_up=small is None, count=False)
        per_image = found["seconds"] / len(inputs)
        small = per_image if small is None else small
        context.recorder.add("writing", {"side": side, "images": len(inputs), "batch": batch, "s_per_image": per_image,
                                         "added_s_per_image": per_image - small if side != scale.write_sides[0] else None})


def training_rate(log: Path) -> tuple[int, float | None]:
    """Steps and steps/s from ``train_log.csv``, the first step (cuDNN's autotuning, allocations) left out."""
    rows = [line.split(",") for line in log.read_text().splitlines()[1:] if line.strip()]
    seconds = [float(row[-1]) for row in rows]
    if len(seconds) < 2:
        return len(seconds), None
    return len(seconds), (len(seconds) - 1) / (seconds[-1] - seconds[0])


def part_finetune(context: Context) -> None:
    """``dva finetune`` as its command line runs it; its sentence on failure becomes this part's reason."""
    import torch

    from dva.cli import main as dva_main

    scale = context.scale
    share = scale.finetune_steps // len(CLASSES)
    schedule = ",".join(f"{label}:{share + (i < scale.finetune_steps % len(CLASSES))}" for i, label in enumerate(CLASSES))
    out = context.work / "finetuned"
    argv = ["finetune", "--entry", "finetune-thesis", "--model", str(context.model), "--encoder-path",
            str(context.radbert), "--data", str(context.work / "data"), "--schedule", schedule, "--out", str(out),
            *context.plan["finetune_flags"]]
    if scale.tiny:  # bf16 autocast on a CPU without bf16 units is many times slower: float32 there
        argv += ["--device", "cpu", "--mixed-precision", "no"]
    context.recorder.stage(f"dva finetune (loading, {scale.finetune_steps} steps, saving)")
    began, errors = time.perf_counter(), io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            dva_main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    wall = time.perf_counter() - began
    if code != 0:
        raise RuntimeError(f"dva finetune exited with {code}: {last_line(errors.getvalue())}")
    steps, per_s = training_rate(out / "train_log.csv")
    recipe = " ".join(["finetune-thesis", *context.plan["finetune_flags"]]) + (" (float32 on the CPU)" if scale.tiny else "")
    found = {"recipe": recipe, "command": "dva " + " ".join(argv),
             "steps": steps, "steps_per_s": per_s, "wall_s": wall}
    if torch.cuda.is_available() and not scale.tiny:
        found.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                     peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB)
    context.recorder.set("finetune", found)


WORKERS: dict[str, Callable[[Context], None]] = {
    "build": part_build,
    "diffusers": part_diffusers,
    "dva": lambda context: thesis_runs(context, compiled=False),
    "fast": part_fast,
    "writing": part_writing,
    "finetune": part_finetune,
    "dva-compile": lambda context: thesis_runs(context, compiled=True),
}


if __name__ == "__main__":
    sys.exit(main())
