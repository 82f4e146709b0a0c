"""The reproduction summary: the verdicts of :mod:`guiding_nc.experiments.claims` as a page a reader
can act on -- a bottom line, one row per claim with both protocols' verdicts and the counts that
decided them, and the rules in full.

Book: chapter "Reproduction summary".
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..experiments.claims import VERDICTS
from ..experiments.results import load_results, results_dir
from .tables import Table, table

__all__ = ["verdict_table", "verdict_counts", "bottom_line", "rules_table"]

_SHORT = {"reproduced": "reproduced", "partly": "partly", "not reproduced": "not reproduced",
          "not testable here": "not testable"}


def _why(r: Mapping[str, Any]) -> str:
    if r.get("total"):
        return f"holds in {r['passed']} of {r['total']} {r['counts']}"
    return "no results here"


def verdict_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """One row per claim: the claim and a link to its evidence, the one-switch protocol's verdict,
    the released protocol's (where it was run), and the counts that decided each; a rule changed
    after the results keeps its earlier verdict beside the new one."""
    out = []
    for i, r in enumerate(rows, 1):
        why = _why(r)
        if "released" in r:
            why += f"; released protocol: {_why({**r['released'], 'counts': r['counts']})}"
        prev = r.get("previous")
        if prev:
            why += (f" (earlier rule: **{prev['verdict']}** at `{prev['commit']}`, "
                    f"{prev['verdict_now']} on today's files)")
        released = _SHORT[r["released"]["verdict"]] if "released" in r else "–"
        out.append([str(i), f"{r['short']} ({r['paper']}; {{numref}}`{r['section']}`)",
                    f"**{_SHORT[r['verdict']]}**", released, why])
    return table(["#", "claim (paper; evidence)", "one-switch", "released", "why"], out, align="rllll",
                 note="Verdicts by the rules in full below, applied to the committed results of the chapters linked. "
                      "\"Released\": the same rule on the runs of the code release's protocol, where they were made.")


def verdict_counts(rows: Sequence[Mapping[str, Any]], protocol: str = "one_switch") -> Dict[str, int]:
    """How many claims got each verdict under ``protocol`` (``one_switch`` or ``paper``, the released
    one; claims it was not run for are left out)."""
    if protocol == "one_switch":
        verdicts = [r["verdict"] for r in rows]
    else:
        verdicts = [r["released"]["verdict"] for r in rows if "released" in r]
    return {v: sum(x == v for x in verdicts) for v in VERDICTS}


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {v}" for v, n in counts.items() if n)


def bottom_line(rows: Sequence[Mapping[str, Any]], root=None) -> str:
    """The bottom line, computed from the verdicts and the committed files: what reproduced, what did
    not, and the two findings the chapters' measurements support most directly."""
    one, rel = verdict_counts(rows), verdict_counts(rows, "paper")
    reproduced = [r["short"] for r in rows if r["verdict"] == "reproduced"]
    failed = [r["short"] for r in rows if r["verdict"] == "not reproduced"]
    lines = [f"**Of the {len(rows)} claims**, under the one-switch protocol: {_counts_text(one)}"
             + (f"; under the code release's protocol (where it was run): {_counts_text(rel)}." if sum(rel.values())
                else ".")]
    if reproduced:
        lines.append("**Reproduced:** " + "; ".join(reproduced) + ".")
    if failed:
        lines.append("**Not reproduced:** " + "; ".join(failed) + ".")
    findings = _findings(rows, root)
    if findings:
        lines.append("**Two findings to remember.**\n\n" + "\n".join(f"{i}. {f}" for i, f in enumerate(findings, 1)))
    return "\n\n".join(lines)


def _load(name: str, root) -> Optional[Dict[str, Any]]:
    path = (results_dir(name) if root is None else root / name)
    return load_results(path) if (path / "runs.csv").exists() else None


def _findings(rows, root) -> List[str]:
    out = []
    cpu = _load("ufm_scaling_cpu", root)
    nhs_row = next((r for r in rows if r["experiment"] == "ufm_no_head_start" and "loss threshold" in r["short"]), None)
    if cpu is not None and nhs_row is not None and nhs_row.get("total"):
        acc0 = [statistics.median(a[0] for k, a in cpu["step_accuracy"].items() if k.startswith(f"{c}/default/implicit/"))
                for c in dict.fromkeys(r["config"] for r in cpu["runs"])]
        out.append(f"The implicit ETF's speed on UFMs from the paper's random start is a head start: before any step "
                   f"it already classifies {100 * min(acc0):.0f}–{100 * max(acc0):.0f}% of the random features, "
                   f"because its classifier is computed from class means that contain each sample. From a start at "
                   f"chance it is the first to the loss threshold in {nhs_row['passed']} of {nhs_row['total']} "
                   "(size, optimiser) cells ({numref}`sec-scaling-no-head-start`).")
    rel, one = _load("real_offline_paper", root), _load("real_offline", root)
    group = "mnist5k_smallcnn/default/fixed"
    if rel is not None and one is not None and group in rel["summary"] and group in one["summary"]:
        a, b = rel["summary"][group]["train_top1"], one["summary"][group]["train_top1"]
        out.append(f"Under the code release's protocol the fixed-ETF baseline does not train on the small CNN: "
                   f"median final train top-1 {100 * a['median']:.1f}% "
                   f"[{100 * a['min']:.1f}, {100 * a['max']:.1f}], against {100 * b['median']:.1f}% under the "
                   "one-switch protocol; a comparison with that baseline is a comparison with a broken network "
                   "({numref}`sec-real-released`; what each difference does, the final ReLU and the centring among "
                   "them: {numref}`sec-real-switches`).")
    return out


def rules_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """Every claim with its rule (when it was written, and an earlier rule with its verdicts) and
    what was measured, under each protocol."""
    out = []
    for i, r in enumerate(rows, 1):
        rule = r["rule"]
        if r.get("written") and r["written"] != "before the results":
            rule += f" *(rule written {r['written']})*"
        prev = r.get("previous")
        if prev:
            rule += (f" *Earlier rule:* {prev['rule']} — verdict at `{prev['commit']}`: {prev['verdict']}; on today's "
                     f"files: {prev['verdict_now']}")
        measured = r["measured"]
        if "released" in r:
            measured += f" **Released protocol** (`{r['released']['experiment']}`): {r['released']['measured']}"
        out.append([str(i), f"{r['claim']} ({r['paper']})", rule, measured])
    return table(["#", "claim (paper)", "rule", "measured here"], out, align="rlll")
