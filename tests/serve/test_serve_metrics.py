"""The Prometheus text format of the metrics, on known numbers."""

from zamba2vl.serve.metrics import Counter, Gauge, Histogram, ServerMetrics


def test_counter_gauge_and_histogram_text():
    c = Counter("x_total", "Things.", ["status"])
    c.inc(status="200")
    c.inc(2, status="200")
    c.inc(status='4"0\\0')
    assert c.render() == ["# HELP x_total Things.", "# TYPE x_total counter", 'x_total{status="200"} 3',
                          'x_total{status="4\\"0\\\\0"} 1']
    assert Gauge("g", "A gauge.", lambda: 2.5).render()[-1] == "g 2.5"
    h = Histogram("lat_seconds", "Latency.", buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0):
        h.observe(v)
    assert h.render()[2:] == ['lat_seconds_bucket{le="0.1"} 2', 'lat_seconds_bucket{le="1"} 3',
                              'lat_seconds_bucket{le="+Inf"} 4', "lat_seconds_sum 7.65", "lat_seconds_count 4"]


def test_server_metrics_count_requests_tokens_and_read_gauges():
    m = ServerMetrics(running=lambda: 3, waiting=lambda: 1)
    m.observe_request(200, prompt_tokens=10, completion_tokens=4, total_s=0.2, ttft_s=0.05)
    m.observe_request(400)
    m.observe_step(rows=8, seconds=0.01)
    text = m.render()
    lines = set(text.splitlines())
    assert {'zamba2vl_requests_total{status="200"} 1', 'zamba2vl_requests_total{status="400"} 1',
            "zamba2vl_prompt_tokens_total 10", "zamba2vl_completion_tokens_total 4", "zamba2vl_requests_running 3",
            "zamba2vl_requests_waiting 1", "zamba2vl_decode_steps_total 1",
            'zamba2vl_decode_batch_size_bucket{le="8"} 1', "zamba2vl_time_to_first_token_seconds_count 1"} <= lines
    assert text.endswith("\n") and "process_resident_memory_bytes " in text
