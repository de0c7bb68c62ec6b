import pytest

from hetserve.sim.calibrate import (
    calibrate,
    closed_loop,
    engine_profile,
    median_abs_error,
    read_measurements,
)


def test_calibration_meets_the_median_target(catalog):
    points = calibrate(catalog)
    assert len(points) == len(read_measurements()) == 32
    assert median_abs_error(points) <= 0.25
    within_2x = [p for p in points if 0.5 <= p.predicted / p.measured <= 2.0]
    assert len(within_2x) >= 29  # three harness-bound points are documented outliers


def test_engine_profiles():
    assert engine_profile("vLLM 0.4.3") == "vllm-v0"
    assert engine_profile("vLLM 0.6.1") == "vllm"
    assert engine_profile("NIM 1.8.0 (TRT-LLM)") == "trt-llm"


def test_closed_loop_throughput_obeys_littles_law(catalog):
    from hetserve.models import get_model
    from hetserve.perf import Deployment

    dep = Deployment(get_model("llama-3.1-8b"), catalog.get("L40S"))
    res = closed_loop(dep, clients=8, prompt=300, output=100)
    # 8 clients, each cycling every e2e latency, emit 100 tokens per cycle
    assert res.output_throughput * res.e2e_latency / 100 == pytest.approx(8, rel=0.1)




def test_measurement_larger_than_the_kv_cache_is_a_clear_error(catalog, tmp_path):
    from hetserve.errors import HetserveError

    f = tmp_path / "m.csv"
    f.write_text("id,gpu,n_gpus,tp,model,dtype,input_tokens,output_tokens,concurrency,metric,"
                 "value,unit\nbig,A10G,1,1,llama-3.1-8b,bf16,120000,100,1,ttft,100,ms\n")
    with pytest.raises(HetserveError,
                       match=r"m.csv: line 2 \(id big\): a 120100-token request exceeds"):
        calibrate(catalog, f)
