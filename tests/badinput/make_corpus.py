"""Rebuild the bad-input corpus (``python tests/badinput/make_corpus.py``); the files are committed.

Text cases (profiles, credentials, acceptance files) are written from the literals below; run folders
get small Parquet parts cut from a synthetic run. ``expected.toml`` says what each command must answer.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from gateload.analysis.schema import SAMPLE_SCHEMA, write_meta, write_part  # noqa: E402
from gateload.analysis.synthetic import SynthSpec, build_table  # noqa: E402

BASE = """[target]
name = "bad-input"
kind = "reference"

[portal]
url = "http://127.0.0.1:0"

[gateway]
host = "127.0.0.1"
port = 0

[credentials]
file = "../credentials/good.csv"

[farm]
state_dir = "state"

[[farm.servers]]
name = "old"
count = 2
workers = 1
max_sessions = 10
queue_limit = 5
"""

PROFILES: dict[str, str | bytes] = {
    "bad_toml.toml": BASE.replace("[gateway]", "[gateway"),
    "not_utf8.toml": b"\xff\xfe[target]\nname = \xe9\n",
    "empty.toml": "",
    "unknown_key.toml": BASE.replace("workers = 1", "workerz = 1"),
    "unknown_section.toml": BASE + "\n[colour]\nhue = 1\n",
    "wrong_type.toml": BASE.replace("port = 0", 'port = "2240"'),
    "missing_section.toml": BASE.replace('[gateway]\nhost = "127.0.0.1"\nport = 0\n', ""),
    "bad_enum.toml": BASE.replace('state_dir = "state"', 'state_dir = "state"\nbalancer = "random"'),
    "negative_count.toml": BASE.replace("count = 2", "count = -2"),
    "negative_timeout.toml": BASE + "\n[workload]\ntimeout_s = -1.0\n",
    "fault_unknown_kind.toml": BASE + '\n[[farm.faults]]\nkind = "meltdown"\nduration_s = 5.0\n',
    "fault_unknown_server.toml": BASE
    + '\n[[farm.faults]]\nkind = "stall"\nserver = "old-09"\nduration_s = 5.0\n',
    "fault_without_end.toml": BASE + '\n[[farm.faults]]\nkind = "down"\nduration_s = 0.0\n',
    "non_loopback_target.toml": BASE.replace('kind = "reference"', 'kind = "real"')
    .replace("127.0.0.1:0", "192.0.2.10:443")
    .replace('host = "127.0.0.1"', 'host = "192.0.2.10"')
    .replace("port = 0", "port = 22")
    .split("[farm]")[0],
    "non_loopback_bind.toml": BASE.replace('state_dir = "state"', 'state_dir = "state"\nbind = "192.0.2.10"'),
    "missing_credentials.toml": BASE.replace("good.csv", "missing.csv"),
    "credentials_without_header.toml": BASE.replace("good.csv", "no_header.csv"),
    "bad_protocol_name.toml": BASE.replace("port = 0\n", 'port = 0\nprotocol = "SSH"\n', 1),
    "unknown_protocol.toml": BASE.replace("port = 0\n", 'port = 0\nprotocol = "carrierpigeon"\n', 1),
    "vpn_missing_ca.toml": BASE.replace(
        "port = 0\n", 'port = 0\nprotocol = "vpn"\nca_file = "no-such-ca.pem"\n', 1
    ),
}

CREDENTIALS = {
    "good.csv": "username,password\nuser0001,not-a-real-password\n",
    "no_header.csv": "user0001,not-a-real-password\n",
}

ACCEPTANCE: dict[str, str | bytes] = {
    "bad_toml.toml": "[throughput\nmin_peak_gain = 2\n",
    "not_utf8.toml": b"\xff\xfe[errors]\n",
    "unknown_key.toml": "[throughput]\nmin_peak_gian = 2.0\n",
    "wrong_type.toml": '[throughput]\nmin_peak_gain = "2x"\n',
    "out_of_range.toml": "[errors]\nmax_rate = 5\n",
    "missing_reference.toml": "[logon]\nmax_p95_ms = 1500\n",
    "bad_operation.toml": "[load]\nreference_users = 30\n\n[sla]\nkeystroke = 100\n",
    "future_version.toml": "version = 2\n",
}


def _table(rows: int = 300) -> pa.Table:
    table, _ = build_table(SynthSpec(steps=((5, 10.0),), ramp_s=0.0, seed=7))
    return table.slice(0, rows)


def _meta(**changes: object) -> dict[str, object]:
    meta: dict[str, object] = {
        "run_id": "bad-1",
        "label": "before",
        "status": "completed",
        "completed": True,
        "started_at": 1.7e9,
        "ended_at": 1.7e9 + 10,
        "steps": [{"index": 0, "start": 1.7e9, "end": 1.7e9 + 10, "users": 5, "spawn_rate": 5}],
        "profile": {"servers": ["old-01", "old-02", "old-03", "old-04"]},
        "sample_count": 300,
    }
    meta.update(changes)
    return meta


def _run(name: str, meta: dict[str, object] | str | None, table: pa.Table | None = None) -> Path:
    run = HERE / "runs" / name
    if isinstance(meta, dict):
        write_meta(run, meta)
    elif isinstance(meta, str):
        run.mkdir(parents=True)
        (run / "meta.json").write_text(meta)
    else:
        run.mkdir(parents=True)
    if table is not None:
        write_part(run, "corpus", 0, table)
    return run


def _runs() -> None:
    good = _table()
    part = "samples.parquet/part-corpus-000000.parquet"
    run = _run("truncated_part", _meta(), good)
    data = (run / part).read_bytes()
    (run / part).write_bytes(data[: len(data) // 2])
    run = _run("garbage_part", _meta(), good)
    (run / part).write_bytes(b"PAR1" + bytes(range(256)) * 8)
    run = _run("wrong_schema", _meta())
    import pyarrow.parquet as pq

    (run / "samples.parquet").mkdir()
    pq.write_table(pa.table({"time": [1.0, 2.0], "value": ["a", "b"]}), run / part)
    _run("missing_meta", None, good)
    _run("corrupt_meta", '{"run_id": "bad-1", "status": ', good)
    _run("meta_not_object", "[1, 2, 3]", good)
    _run("meta_without_status", json.dumps({"run_id": "bad-1"}), good)
    _run("future_schema", json.dumps({**_meta(), "schema_version": 99}), good)
    run = _run("empty_run", _meta(sample_count=0))
    (run / "samples.parquet").mkdir()
    (run / "samples.parquet" / "README").write_text("no part files: the run recorded nothing\n")
    _run("no_samples_dir", _meta(sample_count=0))
    _run("zero_rows", _meta(sample_count=0), SAMPLE_SCHEMA.empty_table())
    _run("partial", _meta(sample_count=1000), good)
    _run("interrupted", _meta(status="interrupted", completed=False), good)
    _run("bad_steps", _meta(steps="soon"), good)
    negative = good.set_column(2, "duration_ms", pa.array([-1.0] * good.num_rows))
    _run("no_usable_samples", _meta(), negative)
    (HERE / "runs" / "not_a_folder").write_text("a file where a run folder should be\n")


def _write(folder: str, files: dict[str, str | bytes]) -> None:
    for name, text in files.items():
        path = HERE / folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())


def main() -> None:
    for folder in ("profiles", "credentials", "acceptance", "runs"):
        shutil.rmtree(HERE / folder, ignore_errors=True)
        (HERE / folder).mkdir()
    _write("profiles", PROFILES)
    _write("credentials", CREDENTIALS)
    _write("acceptance", ACCEPTANCE)
    _runs()


if __name__ == "__main__":
    main()
