"""What a search's trials amount to: the Pareto front, the student chosen under the budget, a table and a plot."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from xdray.config import OBJECTIVES, BudgetConfig


def dominates(a: dict, b: dict, objectives: list[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for name in objectives:
        x, y = (a[name], b[name]) if OBJECTIVES[name] == "max" else (b[name], a[name])
        if x < y:
            return False
        better |= x > y
    return better


def pareto_front(points: list[dict], objectives: list[str]) -> list[dict]:
    """The points no other point dominates, sorted by the second objective (the first if there is one)."""
    front = [p for p in points if not any(dominates(q, p, objectives) for q in points)]
    return sorted(front, key=lambda p: tuple(p[o] if OBJECTIVES[o] == "min" else -p[o] for o in objectives[::-1]))


def choose(points: list[dict], budget: BudgetConfig) -> dict | None:
    """The most accurate point within the budget (ties: the faster, then the smaller); None if none fits."""
    fits = [p for p in points
            if (budget.latency_ms is None or p["latency_ms"] <= budget.latency_ms)
            and (budget.params is None or p["params"] <= budget.params)]
    return min(fits, key=lambda p: (-p["dev_accuracy"], p["latency_ms"], p["params"]), default=None)


COLUMNS = ["trial_id", "arch", "dev_accuracy", "latency_ms", "params", "status", "seconds"]


def table(trials: list[dict], front: list[dict], chosen: dict | None) -> str:
    """Markdown: every trial, front members and the chosen one marked."""
    on_front = {t["trial_id"] for t in front}
    rows = []
    for t in sorted(trials, key=lambda t: (t["status"] != "completed", -t.get("dev_accuracy", 0))):
        mark = ("front" if t["trial_id"] in on_front else "") + (" chosen" if chosen and t is chosen else "")
        rows.append([t.get(c, "") for c in COLUMNS] + [mark.strip()])
    return tabulate(rows, headers=COLUMNS + [""], tablefmt="github", floatfmt=".4g")


def plot(trials: list[dict], front: list[dict], chosen: dict | None, x: str, path: Path) -> Path:
    """Dev accuracy against ``x`` (latency or params) for every trial, the front as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    done = [t for t in trials if t["status"] == "completed"]
    stopped = [t for t in trials if t["status"] == "stopped" and x in t]
    ax.scatter([t[x] for t in done], [t["dev_accuracy"] for t in done], c="tab:blue", label="completed trial")
    if stopped:
        ax.scatter([t[x] for t in stopped], [t["dev_accuracy"] for t in stopped], c="tab:gray", marker="x",
                   label="stopped early (last dev)")
    ax.step([t[x] for t in front], [t["dev_accuracy"] for t in front], where="post", c="tab:red",
            label="Pareto front")
    for t in done:
        ax.annotate(t["arch"], (t[x], t["dev_accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if chosen:
        ax.scatter([chosen[x]], [chosen["dev_accuracy"]], s=160, facecolors="none", edgecolors="tab:green",
                   label="chosen (within budget)")
    ax.set_xlabel("latency, ms per sentence" if x == "latency_ms" else "parameters")
    ax.set_ylabel("dev accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
