"""Plot a training run's curves: loss, held-out loss, tau (default tree and chain).

    python docs/examples/plot_training.py RUN_DIR OUT.png

``RUN_DIR`` is an ``eagle3-ref train --out`` directory: its ``history.json`` when the run has
finished, else the history kept in its latest checkpoint (a run still going, or stopped to be
resumed). Prints the evaluation rows as a markdown table too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load_history(run: Path) -> list[dict]:
    """The run's history: ``history.json``, or the latest checkpoint's ``trainer_state.pt``."""
    if (run / "history.json").is_file():
        return json.loads((run / "history.json").read_text())
    import torch

    latest = run / (run / "latest").read_text().strip()
    return torch.load(latest / "trainer_state.pt", weights_only=False)["history"]


def eval_table(history: list[dict]) -> str:
    """The evaluation steps as a markdown table."""
    rows = [r for r in history if "tau" in r or "eval_loss" in r]
    lines = ["| step | train loss (mean of the last 50) | held-out loss | held-out acc, step 1 / 7 | tau (tree) "
             "| tau (chain) |", "|---|---|---|---|---|---|"]
    for r in rows:
        recent = [h["loss"] for h in history if r["step"] - 50 < h["step"] <= r["step"]]
        acc = r.get("eval_acc") or []
        lines.append(f"| {r['step']} | {sum(recent) / len(recent):.3f} | {r.get('eval_loss', float('nan')):.3f} | "
                     f"{acc[0] if acc else float('nan'):.3f} / {acc[-1] if acc else float('nan'):.3f} | "
                     f"{r.get('tau', float('nan')):.2f} | {r.get('tau_chain', float('nan')):.2f} |")
    return "\n".join(lines)


def plot(history: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    window = 50
    smooth = [sum(h["loss"] for h in history[max(0, i - window + 1):i + 1]) / min(window, i + 1)
              for i in range(len(history))]
    evals = [h for h in history if "eval_loss" in h or "tau" in h]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, smooth, label=f"train loss (mean of {window})")
    if any("eval_loss" in h for h in evals):
        left.plot([h["step"] for h in evals if "eval_loss" in h], [h["eval_loss"] for h in evals if "eval_loss" in h],
                  "o-", label="held-out loss")
    left.set_xlabel("step")
    left.set_ylabel("TTT loss (sum over steps, 0.8^k)")
    left.legend()
    for key, label in (("tau", "tau, default tree"), ("tau_chain", "tau, 7-deep chain")):
        points = [(h["step"], h[key]) for h in evals if key in h]
        if points:
            right.plot(*zip(*points), "o-", label=label)
    right.set_xlabel("step")
    right.set_ylabel("accepted tokens per target forward")
    right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    history = load_history(Path(argv[0]))
    plot(history, Path(argv[1]))
    print(eval_table(history))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
