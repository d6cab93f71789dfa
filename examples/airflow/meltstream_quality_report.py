"""meltstream_quality_report: a build's quality report, triggered by meltstream's `airflow`
sink for each `build_report` record (docs/topology.md, "airflow").

The run's conf is the record ({"kind": "build_report", "key", "record", "context"}); the
sink's `context` table names where the results are: {"schema": ..., "pipeline": ...}. The task
reads the build's layer verdicts, layer summaries, anomalies, data quality and fused CT defects
from PostgreSQL (the URL in $MELTSTREAM_DATABASE_URL, else $DATABASE_URL, in the environment of
the Airflow worker) and writes `$MELTSTREAM_AIRFLOW_OUT/report-<build_id>.json` and a Markdown
version next to it. Needs psycopg (3) in Airflow's environment.
"""

import json
import os
import re
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _rows(cur, sql, args):
    cur.execute(sql, args)
    cols = [c.name for c in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def build_quality_report(conn, schema, pipeline, build_id):
    """The report of one build, as a dict (also usable outside Airflow)."""
    if not IDENT.match(schema):
        raise ValueError(f"schema {schema!r} is not an identifier")
    with conn.cursor() as cur:
        verdicts = _rows(cur, f"SELECT layer, verdict, reasons FROM {schema}.layer_verdicts WHERE pipeline = %s AND build_id = %s ORDER BY layer", (pipeline, build_id))
        summaries = _rows(
            cur,
            f"SELECT layer, laser, sample_count, energy_density_j_mm3 FROM {schema}.layer_summaries WHERE pipeline = %s AND build_id = %s ORDER BY layer, laser, revision",
            (pipeline, build_id),
        )
        anomalies = _rows(cur, f"SELECT rule, count(*)::int AS n FROM {schema}.anomalies WHERE pipeline = %s AND build_id = %s GROUP BY rule ORDER BY rule", (pipeline, build_id))
        quality = _rows(cur, f"SELECT layer, score FROM {schema}.data_quality WHERE pipeline = %s AND build_id = %s ORDER BY layer", (pipeline, build_id))
        defects = _rows(
            cur,
            f"SELECT defect_id, layer, type, diameter_um, detectable, detected, evidence_count FROM {schema}.fused_defects WHERE pipeline = %s AND build_id = %s ORDER BY layer, defect_id",
            (pipeline, build_id),
        )
    by_verdict = {}
    for v in verdicts:
        by_verdict[v["verdict"]] = by_verdict.get(v["verdict"], 0) + 1
    samples = sum(s["sample_count"] for s in summaries)
    scores = [q["score"] for q in quality]
    detectable = [d for d in defects if d["detectable"]]
    return {
        "pipeline": pipeline,
        "build_id": build_id,
        "layers": len(verdicts),
        "layers_by_verdict": by_verdict,
        "failed_layers": [v["layer"] for v in verdicts if v["verdict"] == "fail"],
        "samples": samples,
        "anomalies_by_rule": {a["rule"]: a["n"] for a in anomalies},
        "data_quality_min": min(scores) if scores else None,
        "data_quality_mean": sum(scores) / len(scores) if scores else None,
        "ct_defects": len(defects),
        "ct_defects_detectable": len(detectable),
        "ct_defects_detected": sum(1 for d in detectable if d["detected"]),
    }


def markdown(report):
    lines = [f"# Quality report: build {report['build_id']} ({report['pipeline']})", ""]
    lines.append(f"- layers: {report['layers']} ({', '.join(f'{k}: {v}' for k, v in sorted(report['layers_by_verdict'].items())) or 'none'})")
    if report["failed_layers"]:
        lines.append(f"- failed layers: {', '.join(map(str, report['failed_layers']))}")
    lines.append(f"- samples: {report['samples']}")
    lines.append(f"- anomalies: {', '.join(f'{k}: {v}' for k, v in report['anomalies_by_rule'].items()) or 'none'}")
    if report["data_quality_min"] is not None:
        lines.append(f"- data quality: min {report['data_quality_min']:.3f}, mean {report['data_quality_mean']:.3f}")
    lines.append(f"- CT defects: {report['ct_defects']} ({report['ct_defects_detectable']} detectable, {report['ct_defects_detected']} flagged in situ)")
    return "\n".join(lines) + "\n"


@dag(dag_id="meltstream_quality_report", schedule=None, start_date=datetime(2024, 1, 1), catchup=False, tags=["meltstream"])
def meltstream_quality_report():
    @task
    def report():
        import psycopg

        conf = get_current_context()["dag_run"].conf or {}
        record = conf.get("record") or {}
        context = conf.get("context") or {}
        build_id = record.get("build_id")
        if not build_id:
            raise ValueError(f"the conf carries no build_id: {conf!r}")
        url = os.environ.get("MELTSTREAM_DATABASE_URL") or os.environ.get("DATABASE_URL")
        if not url:
            raise RuntimeError("set MELTSTREAM_DATABASE_URL (or DATABASE_URL) in the Airflow worker's environment")
        with psycopg.connect(url) as conn:
            rep = build_quality_report(conn, context.get("schema", "meltstream"), context.get("pipeline", "demo"), build_id)
        rep["build_report"] = record
        out = Path(os.environ.get("MELTSTREAM_AIRFLOW_OUT", "/tmp/meltstream-airflow-out"))
        out.mkdir(parents=True, exist_ok=True)
        for name, text in ((f"report-{build_id}.json", json.dumps(rep, sort_keys=True, default=str)), (f"report-{build_id}.md", markdown(rep))):
            tmp = out / (name + ".tmp")
            tmp.write_text(text)
            tmp.rename(out / name)
        return rep["layers"]

    report()


meltstream_quality_report()
