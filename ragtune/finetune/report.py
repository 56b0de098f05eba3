"""What a finished run shows: a loss-curve PNG and a summary table."""

from __future__ import annotations

from pathlib import Path

SUMMARY_KEYS = ("train_loss", "eval_loss", "eval_perplexity", "eval_accuracy", "eval_precision", "eval_recall",
                "eval_macro_f1", "train_runtime", "train_samples_per_second", "epoch")


def plot_losses(history: list[dict], path: Path, *, title: str) -> Path | None:
    """Training loss per logging step and validation loss per evaluation, against optimizer steps."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never opens a window
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    valid = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not valid:
        return None
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        axis.plot(*zip(*train), label="training loss", color="#1f77b4")
    if valid:
        axis.plot(*zip(*valid), label="validation loss", color="#d62728", marker="o")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def print_summary(console, recipe, result) -> None:
    from rich.table import Table

    table = Table(title=f"run {recipe.name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("method / model", f"{recipe.method} / {recipe.model}")
    table.add_row("trainable parameters", f"{result.data['trainable_parameters']:,} of {result.data['total_parameters']:,}")
    table.add_row("examples (train / validation)", f"{result.data['train_examples']} / {result.data['validation_examples']}")
    for key in SUMMARY_KEYS:
        if key in result.metrics:
            value = result.metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    if result.best_checkpoint:
        table.add_row("best checkpoint", Path(result.best_checkpoint).name)
    table.add_row("run directory", str(result.run_dir))
    table.add_row("time", f"{result.seconds:.1f} s")
    console.print(table)
