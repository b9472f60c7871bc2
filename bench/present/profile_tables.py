"""The profile's tables (``bench profile``, ``run --profile``): profile.md, profile.csv and breakdown.csv from the
summaries the capture wrote (bench/measure/profiler.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..runs.schema import CATEGORIES, atomic_write, case_label


def write_profile(out: Path, summaries: list[dict]) -> pd.DataFrame:
    """profile.md, profile.csv (operators) and breakdown.csv (one row per case and implementation)."""
    rows = [{k: v for k, v in s.items() if k != "operators"} for s in summaries]
    table = pd.DataFrame(rows)
    atomic_write(out / "breakdown.csv", table.to_csv(index=False))
    ops = [{"case_key": s["case_key"], "impl": s["impl"], **o} for s in summaries for o in s.get("operators", [])]
    atomic_write(out / "profile.csv", pd.DataFrame(ops).to_csv(index=False))
    md = ["# Where the time goes", "",
          "Per call, in ms, from torch.profiler after validation and warm-up (the callable `bench run` times). "
          "Traces open in https://ui.perfetto.dev.", ""]
    cats = [f"{c} ms" for c in CATEGORIES]
    for key, grp in table.groupby("case_key", sort=False):
        first = grp.iloc[0]
        md += [f"## {case_label(first.to_dict())}", "", f"`{key}`", ""]
        ok = grp[grp["status"] == "ok"]
        if len(ok):
            show = ok.set_index("impl")[["wall ms", *cats]]
            md += [show.to_markdown(floatfmt=".3g"), ""]
            md += [_reading(ok), ""]
            for _, r in ok.iterrows():
                md.append(f"- {r['impl']}: [trace]({r['trace']})")
            md.append("")
        for _, r in grp[grp["status"] != "ok"].iterrows():
            md += [f"- {r['impl']}: not profiled ({r['status']}: {r['reason']})"]
        for s in (s for s in summaries if s["case_key"] == key and s.get("operators")):
            top = pd.DataFrame(s["operators"])
            md += ["", f"### {s['impl']}: top operators (per call)", "", top.to_markdown(index=False, floatfmt=".3g")]
        md.append("")
    if summaries and summaries[0].get("method"):
        md += ["Method: " + summaries[0]["method"] + ".", ""]
    atomic_write(out / "profile.md", "\n".join(md))
    return table


def _reading(ok: pd.DataFrame) -> str:
    """One sentence per implementation: where most of its time goes, and how it compares with the fastest."""
    cats = [f"{c} ms" for c in CATEGORIES]
    fastest = ok.loc[ok["wall ms"].idxmin()]
    lines = []
    for _, r in ok.iterrows():
        total = r["wall ms"] or 1.0
        shares = sorted(((r[c] / total, c[:-3]) for c in cats), reverse=True)
        main = ", ".join(f"{name} {share:.0%}" for share, name in shares[:3] if share >= 0.01)
        extra = ""
        if r["impl"] != fastest["impl"]:
            diff = {c[:-3]: r[c] - fastest[c] for c in cats}
            worst = max(diff, key=diff.get)
            extra = (f"; {r['wall ms'] / fastest['wall ms']:.2f}× {fastest['impl']}'s time, most of the difference in "
                     f"{worst} (+{diff[worst]:.3g} ms)")
        lines.append(f"- **{r['impl']}** {r['wall ms']:.3g} ms per call: {main}{extra}.")
    return "\n".join(lines)
