"""The report writes requests.csv, summary.json and three PNG plots, atomically, for closed and open loops."""

from __future__ import annotations

import csv
import json

import pytest

from loadtest.client import RequestRecord
from loadtest.report import CSV_FIELDS, PLOTS, format_table, point_fields, write_csv, write_json, write_plots
from loadtest.runner import Point, PointResult, sweep_points
from loadtest.stats import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results(points: list[Point]) -> list[PointResult]:
    results = []
    for k, point in enumerate(points):
        records = [RequestRecord(request_id=i, best_of=point.best_of, start=0.1 * i, latency=0.1 * (i + k + 1),
                                 ttft=0.05, itls=[0.01, 0.02], status="200", completion_tokens=8,
                                 generated_tokens=8 * point.best_of, reward=0.1 * i, sample_s=0.03, score_s=0.01,
                                 device_seconds=0.04, device_source="timings") for i in range(5)]
        records.append(RequestRecord(request_id=5, best_of=point.best_of, status="500", error="boom"))
        results.append(PointResult(point=point, records=records, wall=1.0))
    return results


@pytest.mark.parametrize("rates", [None, [2.0, 8.0]], ids=["closed", "open"])
def test_report_writes_csv_json_and_plots(tmp_path, rates):
    points = sweep_points([1, 4, 16], [1, 4], rates)
    results = _results(points)
    rows = [{**point_fields(r.point), **summarize(r.records, r.wall, slo=0.35)} for r in results]
    paths = write_plots(rows, results, tmp_path)
    write_csv(results, tmp_path / "requests.csv")
    summary = {"config": {"slo": 0.35}, "points": rows, "out": str(tmp_path), "files": ["requests.csv"]}
    write_json(summary, tmp_path / "summary.json")

    assert sorted(p.name for p in paths) == sorted(PLOTS)
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    with (tmp_path / "requests.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 * len(points)
    assert tuple(table[0]) == CSV_FIELDS
    assert sum(row["status"] == "500" for row in table) == len(points)
    loaded = json.loads((tmp_path / "summary.json").read_text())
    assert len(loaded["points"]) == len(points)
    for key in ("loop", "best_of", "concurrency", "rate", "sent", "answered", "errors", "errors_by_status",
                "latency_s_p50", "latency_s_p90", "latency_s_p95", "latency_s_p99", "ttft_s_p50", "itl_s_p99",
                "throughput_rps", "generated_tokens_per_s", "goodput_rps", "error_rate",
                "device_seconds_per_answer", "device_seconds_source", "generated_per_returned_token"):
        assert key in loaded["points"][0], key
    assert loaded["points"][0]["loop"] == ("closed" if rates is None else "open")
    assert not list(tmp_path.glob(".*.tmp"))  # temp files were renamed into place
    table_text = format_table(summary)
    assert len(table_text.splitlines()) == 1 + 2 * len(points) + 2  # header, a row and an errors line each, 2 notes


def test_plots_of_a_sweep_with_only_errors(tmp_path):
    point = Point(best_of=2, concurrency=1)
    results = [PointResult(point=point, records=[RequestRecord(0, 2, status="connect")], wall=0.1)]
    rows = [{**point_fields(point), **summarize(results[0].records, 0.1, slo=1.0)}]
    for path in write_plots(rows, results, tmp_path):
        assert path.read_bytes()[:8] == PNG_MAGIC
