"""The timeline of one workflow instance: its activations as ticks on a time axis and each
recorded operation as a bar from its creation to its outcome (pending ones open-ended).

One model (:func:`build`) from a :class:`~lambda_workflow.models.History`, drawn two ways:
:func:`render_text` for a terminal (``history ID --timeline``) and :func:`render_svg` /
:func:`render_html` for a page (``history ID --html FILE`` and the web console).

Times come from the records: an operation's ``created_at``/``resolved_at`` and the
activations that created and resolved it. An activation's time is the earliest event it
recorded (the instance's creation for activation 1); an activation that recorded nothing has
no tick. The axis is compressed: every distinct event time is a point on it and the gap to
the next point grows with the logarithm of the time between them, so milliseconds of calls
and days of timers are both visible; the labels give the real times.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from html import escape

import orjson

from ._opnames import display
from .models import History, InstanceStatus, OperationRecord, OperationState

__all__ = ["Activation", "Bar", "Timeline", "build", "render_html", "render_svg",
           "render_text"]


@dataclass(frozen=True, slots=True)
class Activation:
    """One activation of the instance at the time of its first recorded event."""

    number: int
    at: float


@dataclass(frozen=True, slots=True)
class Bar:
    """One operation: from ``start`` (created) to ``end`` (resolved; ``None`` while it is
    pending). ``outcome`` is ``completed``, ``failed``, ``pending`` or ``timed out`` (a callback
    whose timeout fired: its record stays pending, the workflow no longer waits on it; its bar
    ends when the timer fired)."""

    op_id: str
    kind: str
    name: str
    outcome: str
    start: float
    end: float | None
    created_in: int
    resolved_in: int | None
    detail: str = ""
    error: str = ""
    site: str = ""

    @property
    def label(self) -> str:
        """``#op_id kind name`` as the history prints it."""
        return f"#{self.op_id} {self.kind} {display(self.kind, self.name)}"


@dataclass(slots=True)
class Timeline:
    """An instance's activations and operation bars, in the order the workflow created them."""

    workflow_id: str
    workflow_name: str
    status: InstanceStatus
    start: float
    end: float
    activations: list[Activation] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    error: str = ""

    @property
    def last(self) -> int:
        """The axis's last activation slot: one past the last activation while the instance
        runs (where pending bars end open)."""
        last = max([a.number for a in self.activations] + [1])
        return last + 1 if self.status is InstanceStatus.RUNNING else last

    def points(self) -> list[tuple[float, int]]:
        """Every distinct event as (time, activation), sorted: the points of the axis."""
        points = {(self.start, 1), (self.end, self.last)}
        points.update((a.at, a.number) for a in self.activations)
        for bar in self.bars:
            points.add((bar.start, bar.created_in))
            if bar.end is not None:
                points.add((bar.end, bar.resolved_in or bar.created_in))
        return sorted(points)

    def start_of(self, bar: Bar) -> tuple[float, int]:
        return (bar.start, bar.created_in)

    def end_of(self, bar: Bar) -> tuple[float, int]:
        """Where a bar ends: its outcome, or the axis's end while it is pending."""
        if bar.end is None:
            return (self.end, self.last)
        return (bar.end, bar.resolved_in or bar.created_in)


def _error_text(payload: bytes | None) -> str:
    if payload is None:
        return ""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload.decode(errors="replace")
    if isinstance(value, dict) and "type" in value:
        return f"{value.get('type')}: {value.get('message', '')}"
    return payload.decode(errors="replace")


def _detail(op: OperationRecord) -> str:
    from ._operate import _what  # the same words as `history` prints

    return _what(op, False)


def build(history: History) -> Timeline:
    """The timeline of ``history``."""
    from ._runtime.heartbeats import callback_timed_out

    inst = history.instance
    first: dict[int, float] = {1: inst.created_at} if inst.activations else {}
    bars: list[Bar] = []
    for op in history.operations:
        if op.kind == "trace":  # the trace context tracing recorded: not an operation
            continue
        first[op.created_in] = min(first.get(op.created_in, op.created_at), op.created_at)
        end: float | None = None
        resolved_in = op.resolved_in
        if op.state is OperationState.PENDING:
            outcome = "pending"
            # a callback whose timeout (or heartbeat timeout) timer fired ends there
            fired = next((t for t in history.operations if t.kind == "timer"
                          and callback_timed_out(op, [t])), None)
            if fired is not None:
                outcome = "timed out"
                end, resolved_in = fired.resolved_at, fired.resolved_in
        else:
            outcome = op.state.value
            end = op.resolved_at if op.resolved_at is not None else op.created_at
            if op.resolved_in is not None:
                first[op.resolved_in] = min(first.get(op.resolved_in, end), end)
        bars.append(Bar(
            op.op_id, op.kind, op.name, outcome, op.created_at, end, op.created_in,
            resolved_in, _detail(op),
            _error_text(op.result) if op.state is OperationState.FAILED else "", op.site))
    activations = [Activation(n, at) for n, at in sorted(first.items()) if n >= 1]
    times = [inst.created_at, *(a.at for a in activations)]
    times += [b.end for b in bars if b.end is not None]
    times += [b.start for b in bars]
    end = max(times)
    if inst.status is not InstanceStatus.RUNNING:
        end = max(end, inst.updated_at)
    return Timeline(inst.workflow_id, inst.workflow_name, inst.status, inst.created_at, end,
                    activations, bars, _error_text(inst.error))


def _format_time(at: float) -> str:
    from ._operate import format_time

    return format_time(at)


class _Axis:
    """Maps events (time, activation) to positions 0..1: each distinct event is a point, the
    gap to the next 1 plus log10(1 + milliseconds between them), so events of successive
    activations at the same (virtual) time are still apart."""

    def __init__(self, points: list[tuple[float, int]]) -> None:
        self.offsets: dict[tuple[float, int], float] = {points[0]: 0.0}
        total = 0.0
        for before, after in itertools.pairwise(points):
            gap_ms = max(0.0, (after[0] - before[0]) * 1000)
            total += 1 + math.log10(1 + gap_ms)
            self.offsets[after] = total
        self.total = total or 1.0

    def __call__(self, point: tuple[float, int]) -> float:
        return self.offsets[point] / self.total


# -- the terminal drawing ----------------------------------------------------------------------
# A bar: '=' from creation to outcome, ending in '|' (completed), 'X' (failed), '>' (pending:
# open to the end of the axis) or 'T' (a callback whose timeout fired).
_ENDS = {"completed": "|", "failed": "X", "pending": ">", "timed out": "T"}


def render_text(timeline: Timeline, width: int = 48) -> str:
    """The timeline as lines of text: a header, the axis with activation ticks (``^`` and
    the activation numbers below), then one bar per operation with its label, outcome and
    what it waits on or why it failed."""
    axis = _Axis(timeline.points())
    cols = max(10, width)

    def col(point: tuple[float, int]) -> int:
        return min(cols - 1, round(axis(point) * (cols - 1)))

    labels = [bar.label for bar in timeline.bars]
    pad = max([len(x) for x in labels] + [len("activations")])
    pad = min(pad, 40)
    lines = [f"{timeline.workflow_id} ({timeline.workflow_name}) {timeline.status.value}, "
             f"{len(timeline.activations)} activations, "
             f"{_format_time(timeline.start)} .. {_format_time(timeline.end)}"]
    ticks = [" "] * cols
    numbers = [" "] * (cols + 8)
    for act in timeline.activations:
        c = col((act.at, act.number))
        ticks[c] = "^"
        text = str(act.number)
        if all(ch == " " for ch in numbers[max(0, c - 1): c + len(text) + 1]):
            numbers[c: c + len(text)] = text
    lines.append(f"{'':<{pad}} {'-' * cols}")
    lines.append(f"{'activations':<{pad}} {''.join(ticks)}")
    lines.append(f"{'':<{pad}} {''.join(numbers).rstrip()}")
    for bar, label in zip(timeline.bars, labels, strict=True):
        row = [" "] * cols
        a = col(timeline.start_of(bar))
        b = col(timeline.end_of(bar))
        for c in range(a, b):
            row[c] = "="
        row[b] = _ENDS.get(bar.outcome, "|")
        note = bar.outcome
        if bar.outcome == "failed" and bar.error:
            note += f": {bar.error}"
        elif bar.detail:
            note += f"; {bar.detail}"
        shown = label if len(label) <= pad else label[: pad - 3] + "..."
        lines.append(f"{shown:<{pad}} {''.join(row)}  {note}")
    if timeline.error:
        lines.append(f"{timeline.status.value}: {timeline.error}")
    return "\n".join(lines) + "\n"


# -- the SVG picture ---------------------------------------------------------------------------
_COLOURS = {"completed": "#3b7d3b", "failed": "#c0392b", "pending": "#d4a017",
            "timed out": "#7f5aa2"}


def render_svg(timeline: Timeline) -> str:
    """The timeline as an inline SVG element. Each bar is a ``<g class="bar">`` with
    ``data-op``, ``data-kind`` and ``data-outcome`` attributes; each activation tick a
    ``<line class="activation" data-activation="N">``. Every text from the records is
    escaped."""
    axis = _Axis(timeline.points())
    left, plot, row_h, top = 260, 560, 22, 46
    height = top + row_h * max(1, len(timeline.bars)) + 30
    total_w = left + plot + 30

    def x(point: tuple[float, int]) -> float:
        return round(left + axis(point) * plot, 1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" '
             f'width="{total_w}" height="{height}" viewBox="0 0 {total_w} {height}" '
             f'data-workflow-id="{escape(timeline.workflow_id)}" font-family="sans-serif" '
             f'font-size="12">',
             f'<title>{escape(timeline.workflow_id)} ({escape(timeline.workflow_name)}): '
             f'{escape(timeline.status.value)}</title>',
             f'<line x1="{left}" y1="{top - 8}" x2="{left + plot}" y2="{top - 8}" '
             f'stroke="#888"/>']
    for act in timeline.activations:
        ax = x((act.at, act.number))
        parts.append(f'<line class="activation" data-activation="{act.number}" x1="{ax}" '
                     f'y1="{top - 16}" x2="{ax}" y2="{height - 24}" stroke="#bbb" '
                     f'stroke-dasharray="2,3"><title>activation {act.number} at '
                     f'{escape(_format_time(act.at))}</title></line>')
        parts.append(f'<text x="{ax}" y="{top - 20}" text-anchor="middle" fill="#555">'
                     f'{act.number}</text>')
    parts.append(f'<text x="{left - 8}" y="{top - 20}" text-anchor="end" fill="#555">'
                 'activations</text>')
    for i, bar in enumerate(timeline.bars):
        y = top + i * row_h
        x0 = x(timeline.start_of(bar))
        x1 = x(timeline.end_of(bar))
        w = max(3.0, round(x1 - x0, 1))
        colour = _COLOURS.get(bar.outcome, "#555")
        tip = (f"{bar.label}: {bar.outcome}; created {_format_time(bar.start)} (activation "
               f"{bar.created_in})")
        if bar.end is not None:
            tip += f"; resolved {_format_time(bar.end)} (activation {bar.resolved_in})"
        if bar.detail:
            tip += f"; {bar.detail}"
        if bar.error:
            tip += f"; {bar.error}"
        if bar.site:
            tip += f"; at {bar.site}"
        label = bar.label if len(bar.label) <= 38 else bar.label[:35] + "..."
        parts.append(f'<g class="bar" data-op="{escape(bar.op_id)}" '
                     f'data-kind="{escape(bar.kind)}" data-outcome="{escape(bar.outcome)}">'
                     f'<title>{escape(tip)}</title>'
                     f'<text x="{left - 8}" y="{y + 14}" text-anchor="end">'
                     f'{escape(label)}</text>')
        dash = ' stroke-dasharray="4,3" fill-opacity="0.35"' if bar.end is None else ""
        parts.append(f'<rect x="{x0}" y="{y + 4}" width="{w}" height="{row_h - 8}" '
                     f'fill="{colour}" stroke="{colour}"{dash}/>')
        if bar.outcome == "failed":
            parts.append(f'<text class="mark" x="{x0 + w + 3}" y="{y + 15}" fill="{colour}" '
                         f'font-weight="bold">\u2715</text>')
        elif bar.end is None:
            parts.append(f'<text class="mark" x="{left + plot + 3}" y="{y + 15}" '
                         f'fill="{colour}">\u2192</text>')
        parts.append("</g>")
    parts.append(f'<text x="{left}" y="{height - 8}" fill="#555">'
                 f'{escape(_format_time(timeline.start))}</text>')
    parts.append(f'<text x="{left + plot}" y="{height - 8}" text-anchor="end" fill="#555">'
                 f'{escape(_format_time(timeline.end))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(timeline: Timeline) -> str:
    """A self-contained page (no external assets) with the timeline as inline SVG and a
    table of the operations."""
    rows = []
    for bar in timeline.bars:
        rows.append(
            f'<tr class="{escape(bar.outcome.replace(" ", "-"))}"><td>{escape(bar.op_id)}</td>'
            f"<td>{escape(bar.kind)}</td><td>{escape(display(bar.kind, bar.name))}</td>"
            f"<td>{escape(bar.outcome)}</td><td>{escape(_format_time(bar.start))} "
            f"({bar.created_in})</td><td>"
            + (f"{escape(_format_time(bar.end))} ({bar.resolved_in})" if bar.end is not None
               else "") + f"</td><td>{escape(bar.error or bar.detail)}</td>"
            f"<td>{escape(bar.site)}</td></tr>")
    error = (f'<p class="error">{escape(timeline.error)}</p>' if timeline.error else "")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(timeline.workflow_id)} timeline</title><style>"
        "body{font-family:sans-serif;margin:1.5em;color:#222}"
        "table{border-collapse:collapse;margin-top:1em}td,th{border:1px solid #ccc;"
        "padding:2px 6px;font-size:13px;text-align:left}.failed td{color:#c0392b}"
        ".error{color:#c0392b}</style></head><body>"
        f"<h1>{escape(timeline.workflow_id)} <small>({escape(timeline.workflow_name)}, "
        f"{escape(timeline.status.value)})</small></h1>{error}"
        f"{render_svg(timeline)}"
        "<table><tr><th>op</th><th>kind</th><th>name</th><th>outcome</th>"
        "<th>created (activation)</th><th>resolved (activation)</th><th>detail</th>"
        "<th>site</th></tr>" + "".join(rows) + "</table></body></html>\n")
