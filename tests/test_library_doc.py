"""docs/library.md stays true: its code blocks run top to bottom, as one notebook, on the tiny model.

Blocks fenced ```python run here; blocks fenced ```python argilla run too in
tests/integrations/test_library_page.py, against a real local argilla-server.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable

from curator.model.sampling import SamplingConfig

PAGE = Path(__file__).resolve().parents[1] / "docs" / "library.md"
FENCE = re.compile(r"^```(python[^\n]*)\n(.*?)^```", re.M | re.S)
STRATEGIES = ["clarify", "cot", "direct", "evaluate"]


def blocks() -> list[tuple[str, str]]:
    return [(info.strip(), code) for info, code in FENCE.findall(PAGE.read_text(encoding="utf-8"))]


def run_page(kinds: set[str], settings: dict[str, Any], after: dict[str, Callable[[dict[str, Any]], None]] | None = None, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Exec the page's blocks of the given kinds in one namespace; ``settings`` replace the first block's values.

    ``after[marker](ns)`` runs after each block whose code holds ``marker``; blocks holding a
    ``skip`` string are left out.
    """
    ns: dict[str, Any] = {"__name__": "library_page", **settings}
    ran = []
    for i, (kind, code) in enumerate(blocks(), start=1):
        if kind not in kinds or any(s in code for s in skip):
            continue
        exec(compile(code, f"{PAGE}: block {i}", "exec"), ns)  # noqa: S102 (the page is the test's input)
        ran.append(i)
        if len(ran) == 1:
            assert set(settings) <= set(ns), f"the settings block no longer defines {sorted(set(settings) - set(ns))}"
            ns.update(settings)
        for marker, hook in (after or {}).items():
            if marker in code:
                hook(ns)
    ns["ran"] = ran
    return ns


def tiny_settings(tmp_path: Path) -> dict[str, Any]:
    return {"MODEL": "tiny-random", "OUT": tmp_path / "out", "SAMPLING": SamplingConfig(k=2, max_new_tokens=8), "DIM": 64}


def test_page_has_the_pipeline_in_order() -> None:
    kinds = [k for k, _ in blocks()]
    assert set(kinds) == {"python", "python argilla"}
    code = "\n".join(c for _, c in blocks())
    order = ["load_candidates", "score_candidates", "select_strategy", "generate_file", "index_rows", "influence_scores", "run_study", "rank_candidates", "push(", "pull(", "export(", "run_validate", "run_demo"]
    positions = [code.index(v) for v in order]
    assert positions == sorted(positions)
    assert "curator.cli" not in code and "subprocess" not in code  # the page uses no CLI


def test_library_page_runs_on_the_tiny_model(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        ns = run_page({"python"}, tiny_settings(tmp_path))
    out = tmp_path / "out"
    assert len(ns["ran"]) == 9
    assert ns["gen"].selected == 2 and {k: c.written + c.empty for k, c in ns["gen"].strategies.items()} == {"direct": 2, "cot": 2, "own-words": 2}
    assert len(ns["sample"].table) == sum(c.written for c in ns["gen"].strategies.values())
    assert (len(ns["cands"]), len(ns["evals"])) == (96, 16)
    assert len(ns["aligned"].table) == 96 and (out / "scores.parquet").is_file()
    assert ns["selection"]["recommended"] in STRATEGIES and (out / "selection" / "report.md").is_file()
    assert (ns["train"].rows_added, ns["ev"].rows_added) == (96, 16)
    assert json.loads((out / "train_store" / "manifest.json").read_text())["projection"]["dim"] == 64
    assert len(ns["influence"]) == 96 and sorted(ns["study"]["strategies"]) == STRATEGIES
    assert set(ns["study"]["verdicts"]) == set(STRATEGIES) - {ns["study"]["baseline"]}
    assert len(ns["ranking"]) == 96 and set(ns["ranking"]["rank"]) == {1, 2, 3, 4}
    assert sorted(ns["validation"].report["measured_ranking"]) == STRATEGIES
    sources = {Path(e["source"]).parent.name for e in ns["validation"].report["predictors"].values()}
    assert sources == {"study", "selection"}  # the page's own reports, nothing recomputed
    assert ns["demo"].summary["n_candidates"] == 96 and ns["demo"].summary["recommended"] in STRATEGIES
