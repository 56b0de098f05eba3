"""`ragtune train RECIPE --ray --workers N`: the same recipe, data-parallel under Ray Train's TorchTrainer.

Each worker is one process of a DistributedDataParallel run (gloo on CPUs, NCCL on GPUs). It builds
the tokenizer, data and model exactly as a local run does (run.prepare), and the transformers Trainer
gives every worker its share of each global batch. The global batch stays the recipe's
(batch_size x gradient_accumulation examples per optimizer step): the accumulation, else the
micro-batch, is divided by the workers, so a 2-worker run follows a local run's loss curve
(tests/test_ray.py). What every process must agree on is decided once, by process 0, and broadcast:
the precision and the micro-batch that fits memory (precision.py, memory.py); the time budget's stop
is broadcast by trainer.py.

Checkpoints go to Ray: `RayTrainReportCallback` uploads each Trainer checkpoint (every worker's files,
so each one's RNG state too) to `<run dir>/ray/`, Ray Train's storage for the run. Ray restarts a
failed worker group from the latest one by itself (FailureConfig), and `--resume` continues a stopped
run from it (Ray Train restores a run by its storage path and name). The final model travels as the
last checkpoint, and the driver writes the run directory as a local run does (model/, metrics.json,
loss.png), so export, `ask --model` and compare read it unchanged.

On a real cluster the run directory must be on storage that every node sees (NFS), which Ray Train
requires of a local storage path, and the recipe's model and data must be at the same paths on every node.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger(__name__)
STORAGE_NAME = "ray"  # <run dir>/ray: Ray Train's folder for the run (storage_path = the run directory)
FINAL_RECORD = "record.json"
MAX_FAILURES = 2  # a failed worker group is restarted from the latest checkpoint this many times


def split_global_batch(recipe, workers: int):
    """The recipe each of `workers` processes runs so that an optimizer step still averages the recipe's
    batch_size x gradient_accumulation examples: the accumulation divided when it can be, else the batch."""
    t = recipe.training
    if t.gradient_accumulation % workers == 0:
        update = {"gradient_accumulation": t.gradient_accumulation // workers}
    elif t.batch_size % workers == 0:
        update = {"batch_size": t.batch_size // workers}
    else:
        raise ConfigError(
            f"--workers {workers}: the recipe's global batch (training.batch_size {t.batch_size} x "
            f"training.gradient_accumulation {t.gradient_accumulation}) cannot be shared evenly by {workers} workers; "
            f"make training.gradient_accumulation or training.batch_size a multiple of {workers}, or change --workers")
    return recipe.model_copy(update={"training": t.model_copy(update=update)})


def ray_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / STORAGE_NAME
    return sorted(folder.glob("checkpoint_*")) if folder.is_dir() else []


def _worker_resources(workers: int) -> tuple[dict, bool, int]:
    """(resources per worker, whether workers take a GPU, torch threads): GPUs when the cluster has one per
    worker, and each worker an equal share of the CPUs, no more than the largest node has."""
    import ray

    total = ray.cluster_resources()
    gpus = total.get("GPU", 0) >= workers
    per_node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    cpus = max(1, min(int(per_node), int(total.get("CPU", workers)) // workers))
    return {"CPU": cpus}, gpus, cpus


def train_on_ray(recipe, *, workers: int = 2, address: str | None = None, resume: bool = False,
                 progress: bool = True, console=None):
    """Train `recipe` on `workers` Ray Train workers; write the run directory as `run.train` does."""
    from rich.console import Console

    from .. import distributed
    from .run import write_record

    console = console or Console(stderr=True)
    started = time.perf_counter()
    run_dir = recipe.run_dir().resolve()
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("checkpoint-*")):
        raise ConfigError(f"{run_dir} holds the checkpoints of a run trained without --ray; resume it without --ray, "
                          "or set output_dir (or name) to start a new one")
    saved = ray_checkpoints(run_dir)
    if saved and not resume:
        raise ConfigError(f"{run_dir} already holds checkpoints of a run ({run_dir / STORAGE_NAME}); pass --resume "
                          "to continue it, or set output_dir (or name) to start a new one")
    if resume and not saved:
        console.print(f"[yellow]warning:[/] no checkpoint in {run_dir / STORAGE_NAME}; starting from the beginning",
                      highlight=False)
    per_worker = split_global_batch(recipe, workers)
    distributed.connect(address, workers, worker_logs=progress)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    resources, gpus, cpus = _worker_resources(workers)
    threads = recipe.training.threads or cpus
    console.print(f"training {recipe.name} on Ray: {workers} workers ({'a GPU' if gpus else f'{cpus} CPU'} and "
                  f"{threads} threads each), global batch {recipe.training.batch_size} x "
                  f"{recipe.training.gradient_accumulation} as {per_worker.training.batch_size} x "
                  f"{per_worker.training.gradient_accumulation} on each", highlight=False)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"recipe": per_worker, "run": uuid.uuid4().hex[:12], "threads": threads},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus, resources_per_worker=resources),
        run_config=RunConfig(name=STORAGE_NAME, storage_path=str(run_dir),
                             checkpoint_config=CheckpointConfig(num_to_keep=recipe.training.keep_checkpoints + 1),
                             failure_config=FailureConfig(max_failures=MAX_FAILURES)))
    result = trainer.fit()  # raises when the workers failed more often than FailureConfig allows
    with result.checkpoint.as_directory() as folder:
        record = json.loads((Path(folder) / FINAL_RECORD).read_text(encoding="utf-8"))
        _replace_folder(Path(folder) / "model", run_dir / "model")
    return write_record(recipe, run_dir, record, record["data"], record["resumed_from"], started,
                        console=console, progress=progress)


def _replace_folder(source: Path, target: Path) -> None:
    """Copy `source` to `target`, replacing it only once the copy is whole."""
    staging = target.with_name(target.name + ".incoming")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _restore_latest(local: Path) -> str | None:
    """The Trainer checkpoint of Ray's latest (when resuming or restarted after a failure), copied where the
    Trainer keeps its own."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        source = Path(folder) / RayTrainReportCallback.CHECKPOINT_NAME
        state = json.loads((source / "trainer_state.json").read_text(encoding="utf-8"))
        target = local / "checkpoints" / f"checkpoint-{state['global_step']}"
        if not target.exists():
            shutil.copytree(source, target)
    return str(target)


def _agreed(value, rank: int):
    """Process 0's `value` (a picklable thunk's result) on every process."""
    import torch.distributed as dist

    box = [value() if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def worker_loop(config: dict) -> None:
    """One Ray Train worker: a local run's steps, with Ray's checkpoints and process 0's decisions."""
    import ray
    import ray.train
    import torch.distributed as dist
    from ray.train import Checkpoint
    from ray.train.huggingface.transformers import RayTrainReportCallback
    from rich.console import Console

    from ..runtime import quiet_transformers, set_torch_threads
    from .run import announce_start, build_trainer, decide_precision_and_batch, finish, last_complete_checkpoint, prepare

    recipe = config["recipe"]
    rank = ray.train.get_context().get_world_rank()
    console = Console(stderr=True, quiet=rank != 0)
    warn = lambda message: console.print(f"warning: {message}", highlight=False)  # noqa: E731
    set_torch_threads(config["threads"])
    quiet_transformers()
    # the Trainer's own checkpoints, on this node (each node's first process writes the weights there)
    local = Path(tempfile.gettempdir()) / f"ragtune-train-{config['run']}-{ray.get_runtime_context().get_node_id()[:12]}"
    local.mkdir(parents=True, exist_ok=True)
    last = _restore_latest(local)
    prepared = prepare(recipe, warn, console)
    recipe, precision, memory = _agreed(lambda: (*decide_precision_and_batch(recipe, prepared, last, console),
                                                 prepared.data.get("memory")), rank)
    prepared.data.update(precision=precision, memory=memory)
    trainer = build_trainer(recipe, prepared.model, prepared.tokenizer, prepared.train_set.features,
                            prepared.validation_set.features, prepared.labels, local / "checkpoints", progress=False,
                            callbacks=[*_worker_callbacks(console), RayTrainReportCallback()],
                            precision=precision, save_on_each_node=True)
    announce_start(console, recipe, prepared, precision, f"{trainer.args.world_size} Ray workers", last)
    output = trainer.train(resume_from_checkpoint=last)
    final = local / f"final-{rank}"
    record = finish(recipe, trainer, prepared.tokenizer, output, final / "model", prepared.has_validation)
    newest = last_complete_checkpoint(local / "checkpoints")
    if newest:
        shutil.copytree(newest, final / RayTrainReportCallback.CHECKPOINT_NAME, dirs_exist_ok=True)
    if rank == 0:
        record.update(data=prepared.data, resumed_from=Path(last).name if last else None,
                      best_checkpoint=Path(record["best_checkpoint"]).name if record["best_checkpoint"] else None)
        (final / FINAL_RECORD).write_text(json.dumps(record, default=str), encoding="utf-8")
    else:
        shutil.rmtree(final / "model", ignore_errors=True)  # process 0's copy is the one kept
    ray.train.report({"step": trainer.state.global_step, "final": True}, checkpoint=Checkpoint.from_directory(final))
    dist.barrier()
    shutil.rmtree(local, ignore_errors=True)


def _worker_callbacks(console) -> list:
    """A checkpoint at the last step too (so a finished run can be continued with more steps), and a line
    per logging step (process 0's console; Ray shows it on the driver). Built here so that importing this
    module does not import transformers."""
    from transformers import TrainerCallback

    class SaveAtEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = True
            return control

    class StepPrinter(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            shown = ", ".join(f"{k} {v:.4g}" for k, v in (logs or {}).items() if isinstance(v, float) and "loss" in k)
            if shown:
                console.print(f"step {state.global_step}/{state.max_steps}: {shown}", highlight=False)

    return [SaveAtEnd(), StepPrinter()]
