"""What agentctl and the demo print for people: results as tables or key-value lines, and one
readable line per task event (``agentctl tail`` and ``agentd demo`` print the same lines).

What is rendered is JSON as the daemon sent it (``object``, looked at with isinstance). An event
is shaped as over ``/ws`` and the control socket (``event``, ``seq``, ``ts``, ``data``); known
event types get a sentence of their own, any other shows its data as compact JSON, so a new
event type is still seen, never dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeGuard

__all__ = [
    "NODE_COLUMNS",
    "TASK_COLUMNS",
    "Columns",
    "event_line",
    "fmt",
    "is_waiting_for_input",
    "key_values",
    "render",
    "table",
]

_CELL_MAX = 60
DETAIL_MAX = 160  # characters of detail, except the agent's own words (shown whole)
_WORDS = frozenset({"agent.text", "agent.question", "user.message"})

Data = Mapping[str, object]


# ------------------------------------------------------------------------------ results


def _is_timestamp(value: object, key: str) -> TypeGuard[int | float]:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value > 1e9
        and (key in ("ts", "created", "updated") or key.endswith("_at"))
    )


def fmt(value: object, key: str = "") -> str:
    """One value as text for a person."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_timestamp(value, key):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _flatten(mapping: Mapping[str, object], prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            pairs += _flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", fmt(value, str(key))))
    return pairs


def key_values(mapping: Mapping[str, object]) -> str:
    pairs = _flatten(mapping)
    width = max((len(k) for k, _ in pairs), default=0)
    lines = []
    for key, value in pairs:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{key + ':':<{width + 1}} {first}")
        lines += [" " * (width + 2) + line for line in rest]
    return "\n".join(lines)


Columns = list[tuple[str, tuple[str, ...]]]  # header, keys to look for in this order
TASK_COLUMNS: Columns = [
    ("ID", ("id", "task_id")),
    ("STATUS", ("status",)),
    ("USER", ("user", "login", "user_login", "user_id")),
    ("ATTEMPT", ("attempt", "attempts")),
    ("REPO", ("repo", "repo_url")),
    ("NODE", ("node",)),
    ("CREATED", ("created", "created_at")),
]
NODE_COLUMNS: Columns = [
    ("NODE", ("name",)),
    ("ID", ("id",)),
    ("STATE", ("state",)),
    ("HEARTBEAT AGE S", ("heartbeat_age_s",)),
    ("RUNNING", ("running",)),
    ("CONCURRENCY", ("concurrency",)),
    ("HOST", ("host",)),
    ("PID", ("pid",)),
]


def _cell(row: Mapping[str, object], keys: tuple[str, ...]) -> str:
    for key in keys:
        if key in row:
            text = " ".join(fmt(row[key], key).split())
            return text if len(text) <= _CELL_MAX else text[: _CELL_MAX - 1] + "…"
    return "-"


def table(rows: Sequence[Mapping[str, object]], columns: Columns | None = None) -> str:
    """Rows as aligned columns: the ``columns`` any row has, else every key seen."""
    if columns is not None:
        columns = [(h, ks) for h, ks in columns if any(k in r for r in rows for k in ks)]
    if not columns:
        seen = dict.fromkeys(k for row in rows for k in row)
        columns = [(k.upper(), (k,)) for k in seen]
    cells = [[h for h, _ in columns]] + [[_cell(r, ks) for _, ks in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def _rows(result: object) -> list[dict[str, object]] | None:
    """The list of records in a result: the result itself or its one list-of-records value."""
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):
        return result
    if isinstance(result, dict):
        lists = [v for v in result.values() if isinstance(v, list) and all(isinstance(r, dict) for r in v)]
        if len(lists) == 1:
            return lists[0]
    return None


def render(result: object, columns: Columns | None = None, empty: str = "(none)") -> str:
    if result is None or result is True:
        return "ok"
    if isinstance(result, (dict, list)):
        rows = _rows(result)
        if rows is not None and (columns is not None or isinstance(result, list)):
            return table(rows, columns) if rows else empty
        if isinstance(result, dict):
            return key_values(result)
        return "\n".join(fmt(item) for item in result)
    return fmt(result)


# ------------------------------------------------------------------------------- events


def _short(value: object, n: int = 10) -> str:
    return str(value)[:n] if value is not None else "-"


def _created(d: Data) -> str:
    return f"{d.get('repo_url')}: {d.get('prompt')}"


def _status(d: Data) -> str:
    attempt = f" (attempt {d['attempt']})" if d.get("attempt") else ""
    return f"{d.get('status')}{attempt}" + (f": {d['reason']}" if d.get("reason") else "")


def _finished(d: Data) -> str:
    return str(d.get("status")) + (f": {d['error']}" if d.get("error") else "")


def _retry(d: Data) -> str:
    return f"attempt {d.get('attempt')} failed, next in {d.get('delay_s')} s: {d.get('reason')}"


def _tool_call(d: Data) -> str:
    args = d.get("input")
    args = args if isinstance(args, dict) else {}
    if d.get("name") == "bash":
        shown = str(args.get("command", ""))
    else:  # the editor: its command and path, what it replaces; a whole new file by its size
        shown = " ".join(
            f"({len(v.splitlines())} lines)" if k == "file_text" else v
            for k, v in args.items()
            if isinstance(v, str)
        )
    return f"{d.get('name')} {shown}"


def _first_line(text: str) -> str:
    """The first line of some output, and how many more it has."""
    output = text.strip().splitlines()
    first = output[0] if output else "(no output)"
    extra = max(len(output) - 1, 0)
    more = {0: "", 1: " (+1 line)"}.get(extra, f" (+{extra} lines)")
    return first[:100] + more


def _tool_result(d: Data) -> str:
    return ("error: " if d.get("is_error") else "") + _first_line(str(d.get("output") or ""))


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _setup_steps(d: Data) -> str:
    steps = d.get("steps")
    return " then ".join(str(s) for s in steps) if isinstance(steps, list) and steps else "setup"


def _setup_started(d: Data) -> str:
    limit = d.get("timeout_s")
    return _setup_steps(d) + (f" (time limit {limit:g} s)" if _number(limit) else "")


def _setup_finished(d: Data) -> str:
    """How the setup phase ended (``daemon/agent/setup_phase.py``), then what its proxy did."""
    if d.get("skipped"):
        return f"{_setup_steps(d)} not run: {d['skipped']}"
    took = d.get("duration_s")
    after = f" after {took:g} s" if _number(took) else ""
    if d.get("timed_out"):
        ended = "stopped at its time limit" + after
    elif d.get("exit_code") == 0:
        ended = "succeeded" + after
    elif d.get("exit_code") is None:
        ended = "ended without an exit code" + after
    else:
        ended = f"failed with exit code {d.get('exit_code')}{after}"
    proxy = []
    if _number(connections := d.get("proxy_connections")) and connections:
        proxy.append(f"{connections} proxy connection{'s' if connections != 1 else ''}")
    refused, total = d.get("refused"), d.get("refused_total")
    if _number(total) and total:
        first = refused[0] if isinstance(refused, list) and refused and isinstance(refused[0], dict) else {}
        where = f"{first.get('host')}:{first.get('port')} {first.get('reason')}" if first else ""
        proxy.append(f"refused {total}" + (f": {where}" if where else "") + (", …" if total > 1 else ""))
    return ended + (f" ({'; '.join(proxy)})" if proxy else "")


def _usage(d: Data) -> str:
    cost = d.get("cost_usd")
    money = f", ${cost:.4f}" if isinstance(cost, (int, float)) else ""
    return f"{d.get('input_tokens')} in / {d.get('output_tokens')} out{money}"


def _pushed(d: Data) -> str:
    files = d.get("files_changed")
    listed = ", ".join(str(f) for f in files) if isinstance(files, list) else ""
    return f"{d.get('branch')} at {_short(d.get('commit'))}: {listed}".rstrip(": ")


_DETAIL: dict[str, Callable[[Data], str]] = {
    "task.created": _created,
    "task.status": _status,
    "task.finished": _finished,
    "task.retry_scheduled": _retry,
    "workspace.ready": lambda d: f"cloned at {_short(d.get('commit'))}, working on {d.get('branch')}",
    "workspace.reset": lambda d: f"{d.get('previous_branch')} was gone, working on {d.get('branch')}",
    "agent.text": lambda d: str(d.get("text", "")),
    "agent.question": lambda d: f"asks: {d.get('text', '')}",
    "user.message": lambda d: f"user: {d.get('text', '')}",
    "agent.tool_call": _tool_call,
    "agent.tool_result": _tool_result,
    "agent.usage": _usage,
    "git.pushed": _pushed,
    "git.pr_opened": lambda d: str(d.get("url")),
    "setup.started": _setup_started,
    "setup.output": lambda d: _first_line(str(d.get("text") or "")),
    "setup.finished": _setup_finished,
}


def event_line(event: object) -> str:
    """``seq  HH:MM:SS  type  detail`` on one line (whitespace folded) for one task event."""
    if not isinstance(event, dict):
        return str(event)
    kind = str(event.get("event") or event.get("type") or "?")
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    describe = _DETAIL.get(kind)
    detail = " ".join((describe(data) if describe else fmt(data) if data else "").split())
    if kind not in _WORDS and len(detail) > DETAIL_MAX:
        detail = detail[: DETAIL_MAX - 1] + "…"
    seq, ts = event.get("seq"), event.get("ts")
    clock = (
        time.strftime("%H:%M:%S", time.localtime(ts))
        if isinstance(ts, (int, float)) and not isinstance(ts, bool)
        else "--:--:--"
    )
    return f"{'-' if seq is None else seq:>4}  {clock}  {kind:<18} {detail}".rstrip()


def is_waiting_for_input(event: object) -> bool:
    """True for the status event that says the task now waits for the user's answer."""
    return (
        isinstance(event, dict)
        and event.get("event") == "task.status"
        and isinstance(event.get("data"), dict)
        and event["data"].get("status") == "waiting_input"
    )
