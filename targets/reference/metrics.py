"""Render the farm's counters as JSON or as Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import json
from typing import Any

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (metric, type, help) of the per-server series
_SERVER_METRICS: tuple[tuple[str, str, str], ...] = (
    ("gateload_active_sessions", "gauge", "Open sessions on a server, by kind (portal, ssh)."),
    ("gateload_busy_workers", "gauge", "Worker slots in use."),
    ("gateload_workers", "gauge", "Worker slots configured."),
    ("gateload_queue_depth", "gauge", "Operations waiting for a worker slot."),
    ("gateload_served_total", "counter", "Operations served, by operation."),
    ("gateload_busy_seconds_total", "counter", "Worker-seconds spent serving operations."),
    ("gateload_refused_total", "counter", "Requests (portal, 503) and sessions (ssh) refused."),
)


def render_json(snapshot: dict[str, Any]) -> str:
    """The snapshot as indented JSON."""
    return json.dumps(snapshot, indent=2, sort_keys=False)


def render_prometheus(snapshot: dict[str, Any]) -> str:
    """The snapshot in Prometheus text format, one series per server (and kind or operation)."""
    servers: dict[str, dict[str, Any]] = snapshot["servers"]
    samples: dict[str, list[str]] = {name: [] for name, _, _ in _SERVER_METRICS}
    for sid, s in servers.items():
        label = f'server="{sid}"'
        samples["gateload_active_sessions"] += [
            f'gateload_active_sessions{{{label},kind="portal"}} {s["portal_sessions"]}',
            f'gateload_active_sessions{{{label},kind="ssh"}} {s["ssh_sessions"]}',
        ]
        samples["gateload_busy_workers"].append(f"gateload_busy_workers{{{label}}} {s['busy']}")
        samples["gateload_workers"].append(f"gateload_workers{{{label}}} {s['workers']}")
        samples["gateload_queue_depth"].append(f"gateload_queue_depth{{{label}}} {s['queue_depth']}")
        samples["gateload_served_total"] += [
            f'gateload_served_total{{{label},op="{op}"}} {n}' for op, n in s["served"].items()
        ]
        samples["gateload_busy_seconds_total"].append(
            f"gateload_busy_seconds_total{{{label}}} {s['busy_seconds']}"
        )
        samples["gateload_refused_total"] += [
            f'gateload_refused_total{{{label},kind="{kind}"}} {n}' for kind, n in s["refused"].items()
        ]
    lines: list[str] = []
    for name, kind, help_text in _SERVER_METRICS:
        lines += [*_header(name, kind, help_text), *samples[name]]
    lines += _header("gateload_tickets_total", "counter", "Gateway tickets, by outcome.")
    lines += [f'gateload_tickets_total{{outcome="{k}"}} {v}' for k, v in snapshot["tickets"].items()]
    lines += _header("gateload_uptime_seconds", "gauge", "Seconds since the farm started.")
    lines.append(f"gateload_uptime_seconds {snapshot['uptime_s']}")
    if snapshot.get("faults") is not None:
        lines += _fault_lines(snapshot["faults"])
    if snapshot.get("logins") is not None:
        lines += _login_lines(snapshot["logins"])
    return "\n".join(lines) + "\n"


def _fault_lines(faults: dict[str, Any]) -> list[str]:
    """Active faults (one series each, value = planned end, epoch s), faults started, SSH resets."""
    lines = _header("gateload_fault_active", "gauge", "Active injected faults; the value is the planned end.")
    for f in faults["active"]:
        labels = f'id="{f["id"]}",kind="{f["kind"]}",server="{f["server"]}"'
        lines.append(f"gateload_fault_active{{{labels}}} {f['planned_end']}")
    lines += _header("gateload_faults_started_total", "counter", "Injected faults started, by kind.")
    lines += [f'gateload_faults_started_total{{kind="{k}"}} {n}' for k, n in faults["started_total"].items()]
    lines += _header("gateload_fault_resets_total", "counter", "SSH connections reset by injected faults.")
    lines.append(f"gateload_fault_resets_total {faults['ssh_resets']}")
    return lines


def _login_lines(logins: dict[str, int]) -> list[str]:
    """SSH logons admitted and refused by the per-account limit, and sessions per account (logins.py)."""
    lines = _header("gateload_account_logins_total", "counter", "SSH logons, by account-limit outcome.")
    lines += [
        f'gateload_account_logins_total{{outcome="admitted"}} {logins["logins"]}',
        f'gateload_account_logins_total{{outcome="refused"}} {logins["refused"]}',
    ]
    lines += _header("gateload_account_session_limit", "gauge", "Sessions one account may hold (0 = any).")
    lines.append(f"gateload_account_session_limit {logins['limit']}")
    lines += _header("gateload_accounts_in_use", "gauge", "Accounts with an open SSH session.")
    lines.append(f"gateload_accounts_in_use {logins['accounts_in_use']}")
    return lines


def _header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
