"""Write a comparison (compare.compare_runs) as report.json, report.md and a self-contained report.html.

Why self-contained: the report is mailed, attached to tickets and opened offline, so the plots are
inline SVG (matplotlib rendering into memory, text drawn as paths, so no fonts are needed) and there
is no external CSS, JS or font. Every piece of user text (predictions, questions, ids, strategy
names) is escaped: a model's answer may contain markup, and a report must never run it.
"""

from __future__ import annotations

import html
import io
import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
          "th:first-child,td:first-child{text-align:left}.rec{background:#eef6ee;padding:1em;border-left:4px solid #4a4}"
          "pre{white-space:pre-wrap;margin:0}.figure{margin:1em 0}")


def _svg(fig) -> str:
    """The figure as an inline <svg> element: no XML prolog, no comments (they would carry raw text)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    text = re.sub(r"<!--.*?-->", "", text[text.index("<svg"):], flags=re.S)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # a timestamp and licence URLs, nothing shown
    return text


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width, height))


def metric_bars(result: dict) -> str:
    names, metric = list(result["strategies"]), result["metric"]
    means = [result["strategies"][n][metric] for n in names]
    lows = [means[i] - result["intervals"][n][metric][0] for i, n in enumerate(names)]
    highs = [result["intervals"][n][metric][1] - means[i] for i, n in enumerate(names)]
    fig = _figure(6, 3.2)
    ax = fig.subplots()
    ax.bar(range(len(names)), means, yerr=[lows, highs], capsize=6, color="#5b8bd0")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"{metric} (mean, 95% interval)")
    return _svg(fig)


def latency_plot(result: dict) -> str | None:
    data = {n: v for n, v in result["latencies"].items() if v}
    if not data:
        return None
    fig = _figure(6, 3.2)
    ax = fig.subplots()
    ax.boxplot(list(data.values()), showfliers=True)
    ax.set_xticks(range(1, len(data) + 1), list(data))
    ax.set_ylabel("latency per answer (s)")
    return _svg(fig)


def category_heatmap(result: dict) -> str | None:
    categories, names = result["categories"], list(result["strategies"])
    if not categories:
        return None
    rows = list(categories)
    values = [[categories[c][n] for n in names] for c in rows]
    fig = _figure(1.5 + 1.2 * len(names), 1 + 0.45 * len(rows))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", aspect="auto", vmin=0, vmax=max(1.0, max(map(max, values))))
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(rows)), [f"{c} (n={categories[c]['n']})" for c in rows])
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.6 else "k")
    fig.colorbar(image, ax=ax, label=result["metric"])
    return _svg(fig)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _metric_columns(result: dict) -> list[str]:
    keys = [k for k in result["differences"] if k != result["metric"]]
    return [result["metric"], *keys]


def training_text(training: dict | None) -> str:
    """'412 s, 1.2M tokens' for a strategy ragtune trained; '-' for one that needed no training."""
    if not training or training.get("train_seconds") is None:
        return "-"
    tokens = training.get("train_tokens")
    text = f"{float(training['train_seconds']):.0f} s"
    if tokens:
        text += f", {tokens / 1e6:.2f}M tokens" if tokens >= 1e5 else f", {int(tokens)} tokens"
    return text


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Strategy x (metric means, difference to best on the primary metric, latency, tokens)."""
    metric, columns = result["metric"], _metric_columns(result)
    header = ["strategy", *columns, f"{metric} vs best [95% interval]", "p", "latency p50 s", "latency p95 s",
              "tokens/answer", "training"]
    diffs = result["differences"][metric]
    body = []
    for name, s in result["strategies"].items():
        row = diffs["rows"].get(name)
        diff = "best" if row is None else f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"
        body.append([name, *[_fmt(s.get(c)) for c in columns], diff, "" if row is None else f"{row['p_value']:.3g}",
                     _fmt(s["latency_p50_s"]), _fmt(s["latency_p95_s"]), _fmt(s["completion_tokens_per_answer"]),
                     training_text(s.get("training"))])
    return header, body


def scripting(result: dict, out_dir: Path) -> dict:
    """The report.json content: the documented shape plus the details behind it."""
    strategies = {name: {k: v for k, v in s.items()} for name, s in result["strategies"].items()}
    return {"strategies": strategies,
            "recommendation": {"strategy": result["recommendation"]["strategy"],
                               "reasons": result["recommendation"]["reasons"]},
            "report": str(out_dir / "report.html"), "metric": result["metric"],
            "knowledge_changes": result["knowledge_changes"], "n_examples": result["n_examples"],
            "dropped_examples": result["dropped_examples"], "differences": result["differences"],
            "categories": result["categories"],
            **({"versus": result["versus"]} if result.get("versus") else {})}


def markdown(result: dict) -> str:
    header, body = table_rows(result)
    rec = result["recommendation"]
    lines = ["# ragtune compare", "", f"{result['n_examples']} shared examples ({result['dropped_examples']} dropped "
             f"as missing from some run); primary metric `{result['metric']}`; knowledge changes "
             f"{result['knowledge_changes']}.", "", f"**Recommendation: {rec['strategy'] or 'none'}**", ""]
    lines += [f"- {reason}" for reason in rec["reasons"]]
    if result.get("versus"):
        versus = result["versus"]
        lines += ["", f"Against {versus['baseline']} ({versus['metric']}, paired 95% interval, {versus['metric']} of "
                      f"the strategy minus {versus['baseline']}'s):", ""]
        lines += [f"- {name}: {row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}], p = {row['p_value']:.3g}"
                  f" ({row['test']}){'' if row['separable'] else ', not separable'}"
                  for name, row in versus["rows"].items()]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    if result["categories"]:
        names = list(result["strategies"])
        lines += ["", f"## {result['metric']} per category", "", "| category | n | " + " | ".join(names) + " |",
                  "|" + "---|" * (len(names) + 2)]
        lines += [f"| {c} | {v['n']} | " + " | ".join(f"{v[n]:.3f}" for n in names) + " |"
                  for c, v in result["categories"].items()]
    return "\n".join(lines) + "\n"


def _html_table(header: list[str], body: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _examples_html(result: dict) -> str:
    esc, names, parts = html.escape, list(result["strategies"]), []
    for example in result["examples"]:
        parts.append(f"<h3>{esc(example['id'])}</h3><p><b>Question:</b> {esc(example['question'] or '(not in dataset)')}"
                     f"<br><b>Gold:</b> {esc(' | '.join(example['answers']))}</p>")
        header = ["strategy", "answer", result["metric"], "retrieved ids"]
        body = [[n, example["by_strategy"][n]["prediction"], _fmt(example["by_strategy"][n]["score"]),
                 ", ".join(map(str, example["by_strategy"][n]["retrieved_ids"]))] for n in names]
        parts.append(_html_table(header, body))
    return "".join(parts)


def html_report(result: dict) -> str:
    esc, rec = html.escape, result["recommendation"]
    header, body = table_rows(result)
    figures = [("Primary metric with 95% intervals", metric_bars(result)), ("Latency per answer", latency_plot(result)),
               (f"{result['metric']} per category", category_heatmap(result))]
    plots = "".join(f'<div class="figure"><h3>{esc(title)}</h3>{svg}</div>' for title, svg in figures if svg)
    reasons = "".join(f"<li>{esc(r)}</li>" for r in rec["reasons"])
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>ragtune compare</title><style>{_STYLE}</style>"
            f"</head><body><h1>ragtune compare</h1><p>{result['n_examples']} shared examples "
            f"({result['dropped_examples']} dropped as missing from some run); primary metric "
            f"<code>{esc(result['metric'])}</code>; knowledge changes {esc(result['knowledge_changes'])}.</p>"
            f"<div class=\"rec\" id=\"recommendation\"><h2>Recommendation: {esc(rec['strategy'] or 'none')}</h2>"
            f"<ul>{reasons}</ul></div><h2>Metrics</h2>{_html_table(header, body)}<h2>Plots</h2>{plots}"
            f"<h2>Example answers</h2>{_examples_html(result)}</body></html>\n")


def write_reports(result: dict, out_dir) -> dict:
    """Write report.json, report.md and report.html into out_dir; returns the report.json content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = scripting(result, out_dir)
    (out_dir / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(markdown(result), encoding="utf-8")
    (out_dir / "report.html").write_text(html_report(result), encoding="utf-8")
    log.info("wrote report.json, report.md and report.html to %s", out_dir)
    return data
