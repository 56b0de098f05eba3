"""Training recipes: a typed, validated YAML file that says what to train, on what, and how.

Every field has a default a laptop can run; unknown keys are rejected so a typo (`learning_rte`)
fails loudly instead of silently training with the default. Errors name the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError

METHODS = ("lora", "qlora", "full", "freeze", "classify")
# Metrics a run can select on; which exist depends on the method (classification adds the others).
LOWER_IS_BETTER = {"eval_loss", "eval_perplexity"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    train: Path
    validation: Optional[Path] = None
    # auto | chat | alpaca | sharegpt | prompt_completion | classify (see ragtune/finetune/formats.py)
    format: str = "auto"
    max_length: int = Field(512, ge=16, le=32768)
    # Without a validation file this share of train is held out (0 disables validation).
    validation_share: float = Field(0.1, ge=0.0, lt=0.9)


class EarlyStopping(_Strict):
    metric: str = "eval_loss"
    patience: int = Field(2, ge=1)

    @field_validator("metric")
    @classmethod
    def _prefixed(cls, value: str) -> str:
        return value if value.startswith("eval_") else f"eval_{value}"

    @property
    def greater_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER


class Training(_Strict):
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup: float = Field(0.05, ge=0, description="share of steps (< 1) or a number of steps (>= 1)")
    epochs: float = Field(3, gt=0)
    max_steps: Optional[int] = Field(None, ge=1)
    # a wall-clock budget: training stops (and saves) at the first step after this many minutes
    max_minutes: Optional[float] = Field(None, gt=0)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    # measure a step of the longest examples first and, where batch_size of them would not fit in
    # memory, train fewer at a time with more accumulation (finetune/memory.py)
    fit_memory: bool = True
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    # batches of similar length (less padding: faster on CPU when lengths vary, e.g. RAFT contexts)
    group_by_length: bool = False
    # padding-free batches (finetune/packing.py): a micro-batch's examples side by side in rows of at
    # most packing_length tokens (None: the longest example's length), positions restarting per example
    packing: bool = False
    packing_length: Optional[int] = Field(None, ge=16)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: Optional[int] = Field(None, ge=1)
    # Validation and checkpoints happen together ("epoch" or every N optimizer steps), so the best
    # checkpoint is always one that was validated.
    checkpoint_every: Union[Literal["epoch"], int] = "epoch"
    keep_checkpoints: int = Field(2, ge=1)
    logging_steps: int = Field(5, ge=1)
    early_stopping: Optional[EarlyStopping] = None

    @field_validator("checkpoint_every")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'epoch' or a positive number of steps")
        return value


class LoraSpec(_Strict):
    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # "all-linear" (PEFT's shorthand) or explicit module names such as [q_proj, v_proj]
    target_modules: Union[Literal["all-linear"], list[str]] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # adapters only in the top N transformer blocks (None: all): backward then stops at the lowest
    # adapted block, so training costs about forward + N/depth of a backward pass
    layers: Optional[int] = Field(None, ge=1)


class FreezeSpec(_Strict):
    train_top_blocks: int = Field(2, ge=1)
    # The output layer is trained too; in models that tie it to the input embeddings (SmolLM2)
    # that also updates the embeddings, so it can be turned off.
    train_head: bool = True


class ClassifySpec(_Strict):
    labels: Optional[list[str]] = None  # default: the sorted labels found in the training data
    freeze_layers: int = Field(0, ge=0, description="lower encoder blocks (and embeddings) kept frozen")
    # "balanced" weighs each class's loss by n / (classes * count), as sklearn does: rare labels
    # stop being ignored, which is what macro-F1 rewards.
    class_weights: Literal["none", "balanced"] = "none"


class SearchRange(_Strict):
    low: float
    high: float
    log: bool = False
    step: Optional[float] = None

    @model_validator(mode="after")
    def _ordered(self):
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Recipe(_Strict):
    name: str = "run"
    method: Literal["lora", "qlora", "full", "freeze", "classify"] = "lora"
    model: str = "SmolLM2-135M-Instruct"
    data: DataSpec
    output_dir: Optional[Path] = None  # default: runs/<name> in the working directory
    seed: int = 0
    training: Training = Field(default_factory=Training)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    freeze: FreezeSpec = Field(default_factory=FreezeSpec)
    classify: ClassifySpec = Field(default_factory=ClassifySpec)
    # For `ragtune tune`: dotted field -> a range {low, high, log} or a list of choices.
    search: dict[str, Union[SearchRange, list[Union[float, int, str, bool]]]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        for key in self.search:
            _check_search_key(self, key)
        if self.method == "classify" and self.data.format not in ("auto", "classify"):
            raise ValueError(f"method classify needs classification data, but data.format is {self.data.format!r}")
        if self.training.packing and self.method == "classify":
            raise ValueError("training.packing lays chat examples end to end for a language model; "
                             "method classify cannot use it: remove training.packing")
        if self.training.packing_length is not None and not self.training.packing:
            raise ValueError("training.packing_length is set but training.packing is false; "
                             "set training.packing: true, or remove training.packing_length")
        return self

    @property
    def is_classifier(self) -> bool:
        return self.method == "classify"

    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    def with_values(self, values: dict) -> "Recipe":
        """A copy with dotted fields replaced (`training.learning_rate`), validated again."""
        data = self.model_dump(mode="json")
        for key, value in values.items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
        return validate_recipe(data, source="search")

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _check_search_key(recipe: Recipe, key: str) -> None:
    node = recipe
    for part in key.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise ValueError(f"search key {key!r} is not a recipe field (e.g. training.learning_rate, lora.r)")
        node = getattr(node, part)


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith(("function-after", "literal[", "int", "list[")))


def validate_recipe(data: dict, *, source: str = "recipe", base_dir: Path | None = None) -> Recipe:
    """Validate a recipe mapping; relative paths are taken from `base_dir` (the recipe's folder)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a recipe is a YAML mapping (method:, model:, data:, ...), got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = _field_path(error["loc"]) or "(top level)"
            message = "unknown field; check the spelling against docs/finetune.md" if error["type"] == "extra_forbidden" \
                else error["msg"]
            lines.append(f"{source}: {where}: {message}")
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None
    if base_dir is not None:
        recipe = _resolved_paths(recipe, Path(base_dir))
    return recipe


def _resolved_paths(recipe: Recipe, base: Path) -> Recipe:
    def resolve(path):
        if path is None:
            return None
        path = Path(path).expanduser()
        return path if path.is_absolute() else (base / path).resolve()

    data = recipe.data.model_copy(update={"train": resolve(recipe.data.train), "validation": resolve(recipe.data.validation)})
    output_dir = resolve(recipe.output_dir) or (Path.cwd() / "runs" / recipe.name).resolve()
    updates = {"data": data, "output_dir": output_dir}
    if not Path(recipe.model).is_absolute() and (base / recipe.model).is_dir():
        updates["model"] = str((base / recipe.model).resolve())  # a local model folder beside the recipe
    return recipe.model_copy(update=updates)


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"recipe {path}: {exc.strerror}; pass the path of a recipe YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"recipe {path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return validate_recipe(data, source=str(path), base_dir=path.parent)
