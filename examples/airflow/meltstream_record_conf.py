"""meltstream_record_conf: the smallest DAG an `airflow` sink can trigger.

Each run is one meltstream record (an anomaly, an SPC signal, a failed layer, a build report),
passed as the run's conf: {"kind", "key", "record", "context"}. The task writes that conf to
`$MELTSTREAM_AIRFLOW_OUT/<dag_run_id>.json`, which is what tests/airflow_sink.rs checks (one
file per run, with the record it was triggered for). Replace the task with the analysis a
record should start.
"""

import json
import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, get_current_context, task


@dag(dag_id="meltstream_record_conf", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["meltstream"])
def meltstream_record_conf():
    @task
    def write_conf():
        ctx = get_current_context()
        run = ctx["dag_run"]
        out = Path(os.environ.get("MELTSTREAM_AIRFLOW_OUT", "/tmp/meltstream-airflow-out"))
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{run.run_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": run.run_id, "conf": run.conf}, sort_keys=True))
        tmp.rename(path)
        return str(path)

    write_conf()


meltstream_record_conf()
