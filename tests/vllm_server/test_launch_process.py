"""launch.py as a process, with fake ``vllm`` / ``nvidia-smi`` reproducing each failure."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from launcher_harness import MODEL, Harness, read_until, stop

pytestmark = pytest.mark.timeout(30)

SERVE = ["serve", MODEL]
RUNG_1 = ["--gpu-memory-utilization", "0.90"]
RUNG_2 = ["--gpu-memory-utilization", "0.80"]
RUNG_3 = [*RUNG_2, "--kv-cache-memory-bytes", str(4 * 1024**3)]
RUNG_4 = [*RUNG_3, "--enforce-eager"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serves_on_the_first_rung_and_forwards_the_stop_signal(
    harness: Harness, signum: signal.Signals
) -> None:
    proc = harness.start(plan="serve")
    read_until(proc, "Application startup complete")
    _, err = stop(proc, signum)

    assert proc.returncode == 0, err
    assert harness.signals() == [signum.name]  # the fake vllm itself received it
    assert harness.argvs() == [[*SERVE, *RUNG_1]]
    assert f"received {signum.name}: forwarding it to vllm" in err
    env = harness.calls()[0]["env"]
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert env["CUDA_VISIBLE_DEVICES"] is None  # VLLM_GPU unset: left to CUDA


def test_memory_profiling_assertion_retries_one_rung_down(harness: Harness) -> None:
    proc = harness.start(plan="profiling,serve")
    read_until(proc, "Application startup complete")
    _, err = stop(proc, signal.SIGTERM)

    assert proc.returncode == 0, err
    assert harness.argvs() == [[*SERVE, *RUNG_1], [*SERVE, *RUNG_2]]
    assert "attempt 1/4 (as configured)" in err
    assert "memory profiling assertion (exit code 1); retrying one rung down: lower GPU" in err
    assert "attempt 2/4 (lower GPU memory utilization)" in err


def test_every_rung_fails_then_the_launcher_gives_up(harness: Harness) -> None:
    result = harness.run(plan="profiling,oom,freemem,oom")

    assert result.returncode == 4, result.stderr
    assert harness.argvs() == [
        [*SERVE, *RUNG_1],
        [*SERVE, *RUNG_2],
        [*SERVE, *RUNG_3],
        [*SERVE, *RUNG_4],
    ]
    err = result.stderr
    assert "CUDA out of memory (exit code 1); retrying one rung down: explicit KV cache size" in err
    assert "less free GPU memory than requested (exit code 1); retrying one rung down: " in err
    assert "start-up ladder exhausted: vllm failed on all 4 rungs" in err
    # vLLM's own output is passed through, so the operator sees the real error.
    assert "Error in memory profiling" in result.stdout


def test_retries_can_be_turned_off(harness: Harness) -> None:
    result = harness.run(plan="oom,serve", VLLM_START_RETRIES="false")

    assert result.returncode == 4, result.stderr
    assert harness.argvs() == [[*SERVE, *RUNG_1]]


def test_an_unknown_start_up_failure_is_not_retried(harness: Harness) -> None:
    result = harness.run(plan="crash,serve")

    assert result.returncode == 1
    assert len(harness.calls()) == 1
    assert "a start-up failure the ladder does not handle" in result.stderr


def test_a_crash_after_start_up_is_not_retried(harness: Harness) -> None:
    result = harness.run(plan="serve-then-oom,serve")

    assert result.returncode == 1
    assert len(harness.calls()) == 1
    assert "after start-up: not retried" in result.stderr


def test_a_stop_signal_during_start_up_ends_the_ladder(harness: Harness) -> None:
    proc = harness.start(plan="wait-then-oom,serve")
    read_until(proc, "loading model weights")
    _, err = stop(proc, signal.SIGTERM)

    # The child died of OOM while stopping: that is not a reason to start it again.
    assert proc.returncode == 1, err
    assert harness.signals() == ["SIGTERM"]
    assert len(harness.calls()) == 1
    assert "stopped by SIGTERM" in err


def test_workers_left_by_a_failed_attempt_are_killed(harness: Harness) -> None:
    result = harness.run(plan="oom-orphan,exit:0")

    assert result.returncode == 0, result.stderr
    assert len(harness.calls()) == 2
    worker = int((harness.state / "worker.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(worker):
        assert time.monotonic() < deadline, f"worker {worker} of the failed attempt still runs"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_extra_arguments_pass_through_before_the_ladder_flags(harness: Harness) -> None:
    result = harness.run(
        "--port",
        "8000",
        plan="exit:0",
        VLLM_EXTRA_ARGS="--max-model-len 4096 --served-model-name 'my model'",
    )

    assert result.returncode == 0, result.stderr
    assert harness.argvs() == [
        [
            *SERVE,
            *["--max-model-len", "4096", "--served-model-name", "my model"],
            *["--port", "8000"],
            *RUNG_1,
        ]
    ]


def test_a_torch_that_does_not_match_vllms_pin_stops_the_start(harness: Harness) -> None:
    harness.installed(vllm="0.33.0", torch="2.13.0")

    result = harness.run(plan="serve")

    assert result.returncode == 3
    assert harness.calls() == []  # vllm was never started
    assert "vllm 0.33.0 requires torch==2.14.0, but torch 2.13.0 is installed" in result.stderr
    assert "torch._inductor" in result.stderr  # names the symptom it prevents


def test_a_python_without_packaging_stops_the_start_unless_the_check_is_skipped(
    harness: Harness,
) -> None:
    harness.installed(vllm="0.33.0", torch="2.14.0", packaging=False)

    result = harness.run(plan="serve")

    assert result.returncode == 3
    assert harness.calls() == []
    assert "cannot read vLLM's pins: No module named 'packaging'" in result.stderr
    assert "VLLM_SKIP_VERSION_CHECK=true starts vLLM anyway" in result.stderr

    result = harness.run(plan="exit:0", VLLM_SKIP_VERSION_CHECK="true")

    assert result.returncode == 0, result.stderr
    assert len(harness.calls()) == 1


def test_a_matching_cuda_build_of_torch_passes(harness: Harness) -> None:
    harness.installed(vllm="0.33.0", torch="2.14.0+cu129")

    result = harness.run(plan="exit:0")

    assert result.returncode == 0, result.stderr
    assert "requires torch==2.14.0: 2.14.0+cu129 installed, ok" in result.stderr


def test_the_version_check_can_be_skipped(harness: Harness) -> None:
    harness.installed(vllm="0.33.0", torch="2.13.0")

    result = harness.run(plan="exit:0", VLLM_SKIP_VERSION_CHECK="true")

    assert result.returncode == 0, result.stderr
    assert "version check skipped" in result.stderr


def test_vllm_without_package_metadata_is_refused(harness: Harness) -> None:
    harness.installed(vllm=None, torch="2.14.0")

    result = harness.run(plan="serve")

    assert result.returncode == 3
    assert "vllm is not installed for this Python" in result.stderr
    assert "torch._inductor" not in result.stderr  # not a mismatch: no such advice


def test_gpu_auto_picks_the_gpu_with_most_free_memory(harness: Harness) -> None:
    harness.add_nvidia_smi("0, 1200, 81559\n1, 70210, 81559\n2, 70210, 81559\n3, [N/A], 81559\n")

    result = harness.run(plan="exit:0", VLLM_GPU="auto")

    assert result.returncode == 0, result.stderr
    env = harness.calls()[0]["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "1"  # most free; the tie goes to the lower index
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # nvidia-smi's numbering
    assert harness.nvidia_smi_calls() == [
        ["--query-gpu=index,memory.free,memory.total", "--format=csv,noheader,nounits"]
    ]
    assert "GPU 0: 1200 MiB free of 81559 MiB" in result.stderr


def test_gpu_auto_can_pick_several(harness: Harness) -> None:
    harness.add_nvidia_smi("0, 9000, 81559\n1, 100, 81559\n2, 50000, 81559\n")

    result = harness.run(plan="exit:0", VLLM_GPU="auto", VLLM_GPU_COUNT="2")

    assert result.returncode == 0, result.stderr
    assert harness.calls()[0]["env"]["CUDA_VISIBLE_DEVICES"] == "2,0"


@pytest.mark.parametrize("with_fake", [False, True], ids=["missing", "failing"])
def test_gpu_auto_without_a_working_nvidia_smi_leaves_the_choice_to_cuda(
    harness: Harness, with_fake: bool
) -> None:
    if with_fake:
        harness.add_nvidia_smi("", rc=9)

    result = harness.run(plan="exit:0", VLLM_GPU="auto")

    assert result.returncode == 0, result.stderr
    assert harness.calls()[0]["env"]["CUDA_VISIBLE_DEVICES"] is None
    assert "cannot query nvidia-smi" in result.stderr


def test_an_explicit_gpu_list_is_used_as_given(harness: Harness) -> None:
    result = harness.run(plan="exit:0", VLLM_GPU="2,3")

    assert result.returncode == 0, result.stderr
    assert harness.calls()[0]["env"]["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_the_multiprocessing_method_can_be_chosen(harness: Harness) -> None:
    result = harness.run(plan="exit:0", VLLM_WORKER_MULTIPROC_METHOD="fork")

    assert result.returncode == 0, result.stderr
    assert harness.calls()[0]["env"]["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VLLM_MODEL": ""}, "VLLM_MODEL is not set"),
        ({"VLLM_EXTRA_ARGS": "--gpu-memory-utilization=0.5"}, "set VLLM_GPU_MEMORY_UTILIZATION"),
        ({"VLLM_GPU_MEMORY_UTILIZATION": "90"}, "expected a fraction"),
        ({"VLLM_GPU": "first"}, "expected auto, an index"),
    ],
)
def test_bad_settings_exit_2_before_anything_starts(
    harness: Harness, env: dict[str, str], message: str
) -> None:
    result = harness.run(plan="serve", **env)

    assert result.returncode == 2
    assert message in result.stderr
    assert harness.calls() == []


def test_no_vllm_on_path_exits_127(harness: Harness) -> None:
    (harness.bin / "vllm").unlink()

    result = harness.run(plan="serve")

    assert result.returncode == 127
    assert "no `vllm` executable on PATH" in result.stderr
