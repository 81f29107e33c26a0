"""The benchmark's bookkeeping: repeats interleaved across engines, each engine's wall times
and its fastest run's timings kept together, ratios computed from them."""

from __future__ import annotations

import pytest

from maxwhisper import bench


def _run(wall: float, text: str = "a", rss: float = 100.0) -> dict:
    return {"engine": "max", "audio": "x.wav", "beam_size": 1, "batch_size": 0,
            "audio_seconds": 10.0, "wall_s": wall, "text": text, "tokens": 1,
            "peak_rss_mb": rss, "encoder_ms_per_window": wall * 100,
            "decoder_ms_per_step": wall}


def test_merge_run_keeps_every_wall_and_the_fastest_runs_timings():
    record = None
    for wall, rss in [(3.0, 100.0), (2.0, 90.0), (2.5, 120.0)]:
        record = bench.merge_run(record, _run(wall, rss=rss))
    assert record["walls_s"] == [3.0, 2.0, 2.5]
    assert record["wall_min_s"] == 2.0 and record["wall_median_s"] == 2.5
    assert record["x_realtime"] == pytest.approx(5.0)
    assert record["encoder_ms_per_window"] == pytest.approx(200.0)  # the 2.0-s run's
    assert record["peak_rss_mb"] == 120.0  # the most any run needed
    assert "wall_s" not in record


@pytest.mark.slow
def test_interleaved_bench_of_two_engines(jfk, tmp_path):
    """Two engines, two rounds: every record has both walls, the table comes engine by engine,
    and the ratio is the other engine's best time over max's."""
    seen = []
    report = bench.run_benchmark([jfk.path], ["max", "faster-fp32"], repeat=2,
                                 out=tmp_path / "bench.json",
                                 on_result=lambda record, done, total: seen.append((done, total)))
    results = report["results"]
    assert [r["engine"] for r in results] == ["max", "faster-fp32"]
    assert report["interleaved"] and (tmp_path / "bench.json").is_file()
    for r in results:
        assert len(r["walls_s"]) == 2 and r["wall_min_s"] == min(r["walls_s"])
        assert r["wer"] is not None and r["wer"] < 0.1  # the real transcript, scored
    assert seen == [(1, 2), (2, 2)]
    mx, faster = results
    assert mx["speedup_vs"]["faster-fp32"] == pytest.approx(
        faster["wall_min_s"] / mx["wall_min_s"])
    assert mx["decoder_ms_per_step"] > 0 and mx["encoder_ms_per_window"] > 0
    # the floor: the step's bytes at numpy's rate over a matrix of the step's size
    assert mx["decoder_stream_gbps"] > 0
    assert mx["decoder_floor_ms"] == pytest.approx(
        mx["decoder_mb_per_step"] / mx["decoder_stream_gbps"])
    assert mx["decoder_share_of_floor"] == pytest.approx(
        mx["decoder_floor_ms"] / mx["decoder_ms_per_step"])
