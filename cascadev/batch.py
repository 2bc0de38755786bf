"""Many inputs per command (expanded by :mod:`cascadev.inputs`): sharing the work among accelerate
processes, skipping finished inputs, and the JSON-lines manifest.

A batch run writes each input's outputs into the output folder under the input's name and records
every input in ``OUTPUT/manifest.jsonl`` (input, outputs, seconds, frames, status, error). Outputs
are written atomically, so "every expected file exists" means "done": a killed run started again
skips those inputs. Under ``accelerate launch`` each process takes its share of the pending inputs
(``PartialState.split_between_processes`` over per-process lists balanced by frame count), keeps one
pipeline for all of them and writes its own manifest part; the main process merges the parts.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from tqdm.auto import tqdm

from .atomic import check_output_path, make_folder
from .errors import CascadeVError, first_line
from .inputs import LATENT_SUFFIXES, VIDEO_SUFFIXES, by_name, expand_inputs
from .overwrite import file_id

if TYPE_CHECKING:
    import argparse

    from accelerate import PartialState

MANIFEST = "manifest.jsonl"
_PART_GLOB = ".manifest.part*.jsonl"  # one per process, merged into MANIFEST at the end of a run


@dataclass(frozen=True)
class Job:
    """One input of a batch: its ``name`` (the file stem), where its task writes (``target``: a file or,
    for recon, a folder) and the files that exist once it is complete (``outputs``)."""

    source: Path
    name: str
    target: Path
    outputs: tuple[Path, ...]

    def complete(self) -> bool:
        return all(p.is_file() for p in self.outputs)


@dataclass
class BatchResult:
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "failed"]


def make_jobs(command: str, sources: Sequence[Path], out_dir: Path) -> list[Job]:
    """Name each input's outputs after it; two inputs with one name, or an output that is an input (an
    output folder that is the inputs' own), are errors."""
    jobs = []
    for name, source in by_name(sources).items():
        if command == "recon":
            from .reconstruct import recon_outputs

            folder = out_dir / name
            jobs.append(Job(source, name, folder, tuple(recon_outputs(folder).values())))
        else:
            target = out_dir / (name + (".safetensors" if command == "encode" else ".mp4"))
            jobs.append(Job(source, name, target, (target,)))
    # An existing output that is an input would count as done (or be overwritten): by file identity, so
    # that links count too, and in one pass over the outputs however many inputs there are.
    inputs = {key: path for path in sources if (key := file_id(path)) is not None}  # a missing one fails later
    for job in jobs:
        for out in job.outputs:
            key = file_id(out)
            source = None if key is None else inputs.get(key)
            if source is not None:
                raise CascadeVError(
                    f"The output {out} is the input {source}; writing it would destroy the input, so choose "
                    "another output folder."
                )
    return jobs


def count_frames(path: Path, latent: bool = False) -> int:
    """The input's frame count (its cost for balancing); 1 when it cannot be opened (it fails later, recorded)."""
    try:
        if latent:
            from .latent_io import LatentReader

            with LatentReader(path) as reader:
                return reader.num_frames
        from .video_io import VideoReader

        return VideoReader(path, num_threads=1).num_frames
    except Exception:
        return 1


def balance(costs: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of ``costs`` in ``parts`` lists of near-equal total cost (longest first to the lightest list),
    each list in input order."""
    buckets: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        k = loads.index(min(loads))
        buckets[k].append(i)
        loads[k] += costs[i]
    return [sorted(b) for b in buckets]


def distributed_state() -> PartialState:
    """accelerate's PartialState (one process unless started by ``accelerate launch``)."""
    import torch
    from accelerate import PartialState

    # Without a GPU accelerate only forms a (gloo) process group when told it runs on the CPU.
    return PartialState(cpu=not torch.cuda.is_available())


def share(state: PartialState, costs: Sequence[int]) -> list[int]:
    """This process's indices of the work items, balanced by cost across ``state.num_processes``."""
    if state.num_processes == 1:
        return list(range(len(costs)))
    with state.split_between_processes(balance(costs, state.num_processes)) as mine:
        return list(mine[0]) if mine else []


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines manifest (or part); a line an interrupted write or a hand edit damaged
    is skipped, and its input simply recorded again."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CascadeVError(f"The manifest {path} cannot be read ({exc.strerror or exc}).") from None
    records = []
    for line in data.splitlines():
        try:
            record = json.loads(line)  # bytes: a line that is not UTF-8 is a ValueError too
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("input"), str):
            records.append(record)
    return records


def _read_manifest(out_dir: Path) -> dict[str, dict[str, Any]]:
    """What earlier runs recorded, by input: ``manifest.jsonl``, then the parts a run that was stopped
    left (each process appends to its part as its jobs finish, so a stopped run's finished jobs count)."""
    records: dict[str, dict[str, Any]] = {}
    for path in (out_dir / MANIFEST, *sorted(out_dir.glob(_PART_GLOB))):
        records.update((r["input"], r) for r in _read_records(path))
    return records


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    from .atomic import atomic_output

    with atomic_output(path, "manifest") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, CascadeVError):
        return str(exc)
    return first_line(exc)


def run_batch(
    jobs: Sequence[Job],
    task: Callable[[Job], Sequence[str] | None],
    out_dir: Path,
    *,
    done: Callable[[Job], bool] = Job.complete,
    finish: Callable[[], None] | None = None,
    latent_inputs: bool = False,
    frames_limit: Callable[[int], int] = lambda n: n,
    progress: bool = True,
    desc: str = "files",
    settings: dict[str, Any] | None = None,
) -> BatchResult:
    """Run ``task`` on each pending job of this process's share; record all jobs in the manifest.

    A job's exception is recorded (status "failed") and the batch goes on; the caller reports failures.
    ``done(job)`` says whether a job's outputs are complete (default: its output files exist); ``task``
    may return the outputs it wrote, for the manifest; ``finish`` runs after this process's last job.
    ``settings`` (the options that shape the outputs) are recorded with each job: complete outputs that
    an earlier run made with other settings are refused, not taken for this run's.
    """
    state = distributed_state()
    if state.is_main_process:
        make_folder(out_dir)
        check_output_path(out_dir / MANIFEST, "manifest")  # before any work, not after it all
    previous = _read_manifest(out_dir)
    # Every process decides what is pending before any of them writes, so they agree on the split.
    complete = [done(j) for j in jobs]
    pending = [j for j, finished in zip(jobs, complete) if not finished]
    if settings is not None:
        _check_settings([j for j, finished in zip(jobs, complete) if finished], previous, settings, out_dir)
    costs = [frames_limit(count_frames(j.source, latent_inputs)) for j in pending]
    state.wait_for_everyone()
    part = _manifest_part(out_dir, state.process_index)
    part.write_text("", encoding="utf-8")  # read by every process above: this run's records start here
    for i in tqdm(share(state, costs), desc=desc, unit="file", disable=not progress or not state.is_main_process):
        record = _run_job(pending[i], task, frames=costs[i], process=state.process_index, settings=settings)
        with open(part, "a", encoding="utf-8") as f:  # at once: a run stopped later still counts this job
            f.write(json.dumps(record) + "\n")
    if finish is not None:
        finish()
    state.wait_for_everyone()
    result = BatchResult()
    if state.is_main_process:
        result.records = _merge_manifest(jobs, out_dir, state.num_processes, previous)
    state.wait_for_everyone()
    if not state.is_main_process:
        mine = {str(j.source) for j in jobs}
        result.records = [r for key, r in _read_manifest(out_dir).items() if key in mine]
    return result


def _check_settings(
    complete: Sequence[Job], previous: dict[str, dict[str, Any]], settings: dict[str, Any], out_dir: Path
) -> None:
    """Complete outputs count as this run's only if the manifest says they were made with ``settings``.
    A record without settings (an older version's) is taken at its word, and so are outputs in a folder
    whose manifest records no settings at all; outputs no record accounts for, in a folder that records
    them, are not (another command's files, say)."""
    recorded = any(isinstance(r.get("settings"), dict) for r in previous.values())
    for job in complete:
        old = previous.get(str(job.source))
        if old is None:
            if recorded:
                raise CascadeVError(
                    f"{out_dir} holds outputs for {job.source} that its manifest does not account for; "
                    "remove them, or choose another output folder."
                )
            continue
        made_with = old.get("settings")
        if made_with is None or made_with == settings:
            continue
        made_with = made_with if isinstance(made_with, dict) else {}  # a hand-edited record: other options
        changed = [k for k in sorted(set(settings) | set(made_with)) if settings.get(k) != made_with.get(k)]
        shown = ", ".join(f"{k}={made_with.get(k)!r} (now {settings.get(k)!r})" for k in changed[:3])
        raise CascadeVError(
            f"{out_dir} holds outputs of {job.source} made with other options ({shown}); remove them, or "
            "choose another output folder."
        )


def _manifest_part(out_dir: Path, process: int) -> Path:
    """The manifest lines of one process's share, merged into ``manifest.jsonl`` by the main process."""
    return out_dir / f".manifest.part{process}.jsonl"


def _record(job: Job, status: str, **fields: Any) -> dict[str, Any]:
    """A manifest line: the input, its outputs, seconds, frames, status, error and the process that ran it."""
    record = dict(input=str(job.source), outputs=[str(p) for p in job.outputs], seconds=None, frames=None)
    return {**record, "status": status, "error": None, "process": None, **fields}


def _run_job(job: Job, task: Callable[[Job], Sequence[str] | None], **fields: Any) -> dict[str, Any]:
    """``task(job)``, timed; its exception is recorded (status "failed"), not raised, so the batch goes on."""
    started = time.perf_counter()
    record = _record(job, "done", **fields)
    try:
        written = task(job)
        if isinstance(written, (list, tuple)):
            record["outputs"] = list(written)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if os.environ.get("CASCADEV_DEBUG"):
            traceback.print_exc()
        record.update(status="failed", error=_error_line(exc))
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def _merge_manifest(
    jobs: Sequence[Job], out_dir: Path, processes: int, previous: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The main process's last step: every process's part merged into ``manifest.jsonl``, in the jobs'
    order; a job no process ran was complete before this run ("skipped", with its earlier figures). The
    records of other inputs, from earlier runs into the folder, are kept after them. Returns this run's."""
    ran: dict[str, list[dict[str, Any]]] = {}
    for k in range(processes):
        for record in _read_records(_manifest_part(out_dir, k)):
            ran.setdefault(record["input"], []).append(record)
    records = []
    for job in jobs:
        key = str(job.source)
        if key in ran:
            records.extend(ran[key])  # one record per input, unless a process repeated one
        else:
            old = previous.get(key, {})
            records.append(
                _record(job, "skipped", **{k: old.get(k) for k in ("seconds", "frames", "settings") if k in old})
            )
    mine = {str(job.source) for job in jobs}
    _write_jsonl(out_dir / MANIFEST, records + [r for key, r in previous.items() if key not in mine])
    for path in out_dir.glob(_PART_GLOB):
        path.unlink(missing_ok=True)
    return records


def report(result: BatchResult, out_dir: Path) -> None:
    """The final "cascadev: wrote" line on stdout, or, when any input failed, a CascadeVError (exit 2) saying so."""

    counts = {s: sum(r["status"] == s for r in result.records) for s in ("done", "skipped", "failed")}
    if not distributed_state().is_main_process:
        return
    failed = result.failed
    if failed:  # one error line, from the main process
        first = failed[0]
        what = first["error"] if first["input"] in first["error"] else f"{first['input']}: {first['error']}"
        raise CascadeVError(
            f"{len(failed)} of {len(result.records)} inputs failed (first: {what.rstrip('.')}); "
            f"{counts['done']} done, {counts['skipped']} already complete; see {out_dir / MANIFEST}."
        )
    print(
        f"cascadev: wrote {out_dir} ({counts['done']} done, {counts['skipped']} already complete; "
        f"manifest {out_dir / MANIFEST})"
    )


def use_process_device(args: argparse.Namespace) -> None:
    """Under accelerate each process works on its own device (``--device auto`` -> the process's GPU)."""
    state = distributed_state()
    if state.num_processes > 1 and getattr(args, "device", None) == "auto":
        args.device = "cpu" if state.device.type == "cpu" else str(state.device)


def on_main_process(work: Callable[[], None], everyone: bool = False) -> None:
    """A single input: every process runs ``work`` when it splits the input itself (``everyone``),
    otherwise the main process alone does (the others wait), so no output is written twice."""
    state = distributed_state()
    if everyone or state.is_main_process:
        work()
    state.wait_for_everyone()


def run_command(
    args: argparse.Namespace,
    inputs: Sequence[str],
    make_loader: Callable[[Sequence[str]], Callable],
    parts_task: tuple[list[str], Callable[[Path, Path, Callable], object]],
) -> None:
    """``cascadev recon|encode|decode|upscale|interpolate`` over many inputs into the folder ``args.output``."""
    import functools

    from .video_io import frames_used

    parts, task = parts_task
    latent = args.command == "decode"
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise CascadeVError(f"With several inputs the output {out_dir} must be a folder, but it is a file.")
    jobs = make_jobs(args.command, expand_inputs(inputs, LATENT_SUFFIXES if latent else VIDEO_SUFFIXES), out_dir)
    load = functools.cache(make_loader(parts))  # checks the weights now; each process loads the models once
    frames = functools.partial(
        frames_used, start=getattr(args, "start", 0), num_frames=getattr(args, "num_frames", None)
    )

    def run_one(job: Job) -> None:
        if args.command == "recon":  # recon locks its folder itself
            return task(job.source, job.target, load)
        from .outlock import output_lock

        with output_lock(job.target):  # one writer per output, also across concurrent batches
            return task(job.source, job.target, load)

    result = run_batch(
        jobs,
        run_one,
        out_dir,
        latent_inputs=latent,
        frames_limit=frames,
        progress=not args.quiet,
        desc=args.command,
        settings=output_settings(args),
    )
    report(result, out_dir)


# What a batch's options say of where it reads and writes and how fast it runs, not of what it writes.
_NOT_OUTPUT_SETTINGS = frozenset({"video", "latent", "output", "quiet", "device", "batch_size"})


# Options that name files: recorded as full paths, so that another spelling (or folder) of one file is the same.
_PATH_SETTINGS = frozenset({"config", "ckpt", "weights_dir"})


def output_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The command and the options that shape its outputs, as the manifest records them (JSON values)."""
    chosen = {
        k: os.path.realpath(v) if k in _PATH_SETTINGS and v is not None else v
        for k, v in sorted(vars(args).items())
        if k not in _NOT_OUTPUT_SETTINGS
    }
    return json.loads(json.dumps(chosen, default=str))
