"""How `trainyard ab` draws a report: the variants, the comparisons with their intervals, the sample-ratio check,
the shadow, and a sparkline of each challenger's cumulative difference over time."""
from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from domain.vocabulary import HIGHER_IS_BETTER

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 60  # the most points a sparkline draws (and the bucket choice aims for)
AB_BUCKETS_S = (60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 86400)
DECISION_STYLE = {"challenger_better": "green", "control_better": "red"}  # any other decision: yellow


def _f3(x: Any, signed: bool = False) -> str:
    return "-" if x is None else f"{x:+.3f}" if signed else f"{x:.3f}"


def _with_ci(x: Any, ci: list[float] | None, signed: bool = False) -> str:
    """'0.871 [0.842, 0.897]'; signed: '+0.021 [+0.004, +0.038]'."""
    text = _f3(x, signed)
    return f"{text} [{_f3(ci[0], signed)}, {_f3(ci[1], signed)}]" if x is not None and ci else text


def _pvalue(p: Any) -> str:
    return "-" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def _ms(x: Any) -> str:
    return "-" if x is None else f"{x:.1f}"


def _pct(x: Any, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _duration(s: int) -> str:
    """60 -> '1 min', 7200 -> '2 h', 30 -> '30 s'."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size and s % size == 0:
            return f"{s // size} {unit}"
    return f"{s} s"


def ab_bucket(span_s: float) -> int:
    """The smallest bucket that draws `span_s` seconds in at most SPARK_WIDTH points (60 s for an hour)."""
    return next((b for b in AB_BUCKETS_S if span_s / b <= SPARK_WIDTH), AB_BUCKETS_S[-1])


def sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """One block character per value, ▁ at the minimum, █ at the maximum (at most `width`: evenly picked values,
    the last always among them)."""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARK[3] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / (hi - lo) * len(SPARK)))] for v in values)


def _pairs(d: dict[str, Any], suffix: str = "") -> str:
    return ", ".join(f"{k}={v}{suffix}" for k, v in d.items()) or "-"


def _srm_lines(srm: dict[str, Any]) -> list[Text]:
    checks = srm.get("revisions") or []
    bad = [c for c in checks if c.get("mismatch")]
    if not bad and not srm.get("mismatch"):
        return [Text("sample ratio: ok" if checks else "sample ratio: - (no traffic yet)",
                     style="green" if checks else "")]
    if not bad:
        return [Text("sample ratio: MISMATCH", style="red")]
    lines = []
    for c in bad:
        text = (f"sample ratio: MISMATCH in revision {c.get('revision')}: observed {_pairs(c.get('observed') or {})} "
                f"vs weights {_pairs(c.get('weights') or {}, '%')}")
        if c.get("p_value") is not None:
            text += f" (chi-square p={c['p_value']:.2g})"
        if c.get("unexpected"):
            text += f"; traffic to weight-0 {', '.join(c['unexpected'])}"
        lines.append(Text(text, style="red"))
    return lines


def _shadow_line(sh: dict[str, Any], metric: str, control: str) -> Text:
    text = (f"shadow: agreement {_pct(sh.get('agreement'))} of {sh.get('compared', 0)} compared, "
            f"p99 {_ms(sh.get('latency_p99_ms'))} ms, {metric} {_with_ci(sh.get('value'), sh.get('ci'))}")
    vc = sh.get("versus_control") or {}
    if vc.get("difference") is not None:
        text += f", vs {control} {_f3(vc['difference'], True)} ({vc.get('decision')})"
    return Text(text)


def _spark_lines(report: dict[str, Any], series: dict[str, Any] | None) -> list[Text]:
    """Per challenger: its cumulative difference from the control over time, as a sparkline with min/max/now."""
    points = (series or {}).get("points") or []
    control = report.get("control")
    names = [c["challenger"] for c in report.get("comparisons") or []]
    for p in points:
        names += [n for n in p.get("comparisons") or {} if n not in names]
    bucket = _duration(int((series or {}).get("bucket_s") or 0))
    lines = []
    for name in names:
        values = [d for p in points if (d := ((p.get("comparisons") or {}).get(name) or {}).get("difference"))
                  is not None]
        if not values:
            continue
        lines.append(Text(f"{name} − {control}, cumulative ({bucket} buckets): min {_f3(min(values), True)}, "
                          f"max {_f3(max(values), True)}, now {_f3(values[-1], True)}"))
        lines.append(Text("  " + sparkline(values), style="cyan"))
    return lines


def ab_view(report: dict[str, Any], series: dict[str, Any] | None, note: Text | None = None) -> Group:
    """The report as rich renderables: a header, the variants, the comparisons, SRM, shadow, sparklines, method."""
    metric, control = report.get("metric", "accuracy"), report.get("control")
    variants = report.get("variants") or []
    first = variants[0] if variants else {}
    better = "higher" if first.get("higher_is_better", HIGHER_IS_BETTER.get(metric, False)) else "lower"
    confidence = f"{100 * (first.get('confidence') or 0.95):.0f}%"
    window = report.get("window") or {}
    scope = f"revision {window['revision']} only" if window.get("revision") else "all revisions"
    parts: list[Any] = [Text(f"{report.get('deployment')} revision {report.get('revision')}: {metric} ({better} is "
                             f"better), control {control}, {scope}", style="bold")]

    table = Table(box=None, pad_edge=False)
    for col in ("variant", "weight", "requests", "labelled", "errors", "p50/95/99 ms", f"{metric} [{confidence} CI]"):
        table.add_column(col, justify="left" if col == "variant" else "right",
                         no_wrap=col.startswith(("p50", metric)), overflow="fold")
    for v in variants:
        latency = "/".join(_ms(v.get(f"latency_{q}_ms")) for q in ("p50", "p95", "p99"))
        table.add_row(Text(str(v.get("name")), style="bold" if v.get("name") == control else ""),
                      f"{v.get('weight', 0)}%", str(v.get("requests", 0)), str(v.get("labelled", 0)),
                      _pct(v.get("error_rate"), 2), latency, _with_ci(v.get("value"), v.get("ci")))
    parts.append(table)

    comparisons = report.get("comparisons") or []
    if comparisons:
        table = Table(box=None, pad_edge=False)
        for col in (f"vs {control}", f"difference [{confidence} CI]", "lift", "p-value", "decision"):
            table.add_column(col, justify="left" if col.startswith(("vs", "decision")) else "right",
                             no_wrap=col != "lift" and not col.startswith("vs"), overflow="fold")
        for c in comparisons:
            decision = str(c.get("decision"))
            table.add_row(str(c.get("challenger")), _with_ci(c.get("difference"), c.get("ci"), signed=True),
                          "-" if c.get("relative_difference") is None else f"{100 * c['relative_difference']:+.1f}%",
                          _pvalue(c.get("p_value")), Text(decision, style=DECISION_STYLE.get(decision, "yellow")))
        parts.append(table)

    parts += _srm_lines(report.get("srm") or {})
    if report.get("shadow"):
        parts.append(_shadow_line(report["shadow"], metric, str(control)))
    parts += _spark_lines(report, series)
    method = report.get("method") or first.get("method")
    if method:
        parts.append(Text(f"method: {method}; intervals and p-values valid at every look", style="dim"))
    if note is not None:
        parts.append(note)
    return Group(*parts)
