"""The launcher's settings and its choice of GPU (``vllm-server/launch_config.py``)."""

from __future__ import annotations

from types import ModuleType

import pytest

# --------------------------------------------------------------------------- config


def test_config_defaults(launch_config: ModuleType) -> None:
    config = launch_config.load_config({"VLLM_MODEL": " org/m "}, ["--port", "8000"])
    assert config == launch_config.Config(
        model="org/m",
        extra_args=("--port", "8000"),
        gpu="",
        gpu_count=1,
        utilization=0.9,
        kv_cache_bytes=4 * 1024**3,
        multiproc_method="spawn",
        retries=True,
        check_versions=True,
    )


@pytest.mark.parametrize(
    ("environ", "argv", "extra_args"),
    [
        ({"VLLM_PORT": "9000"}, ["--host", "0.0.0.0"], ("--host", "0.0.0.0", "--port", "9000")),
        ({"VLLM_PORT": "9000"}, ["--port", "9000"], ("--port", "9000")),
        ({"VLLM_PORT": ""}, ["--port", "7000"], ("--port", "7000")),
    ],
)
def test_the_port_comes_from_vllm_port_which_the_health_check_reads(
    launch_config: ModuleType, environ: dict[str, str], argv: list[str], extra_args: tuple[str]
) -> None:
    config = launch_config.load_config({"VLLM_MODEL": "org/m", **environ}, argv)
    assert config.extra_args == extra_args


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VLLM_MODEL": ""}, "VLLM_MODEL is not set"),
        ({"VLLM_EXTRA_ARGS": "--kv-cache-memory-bytes 1"}, "set VLLM_KV_CACHE_MEMORY_BYTES"),
        ({"VLLM_EXTRA_ARGS": "'unclosed"}, "cannot be parsed"),
        ({"VLLM_GPU_MEMORY_UTILIZATION": "0"}, "expected a fraction"),
        ({"VLLM_GPU_MEMORY_UTILIZATION": "most"}, "expected a number"),
        ({"VLLM_KV_CACHE_MEMORY_BYTES": "4G"}, "expected a whole number"),
        ({"VLLM_KV_CACHE_MEMORY_BYTES": "0"}, "positive number of bytes"),
        ({"VLLM_GPU_COUNT": "0"}, "at least 1"),
        ({"VLLM_WORKER_MULTIPROC_METHOD": "forkserver"}, "expected spawn or fork"),
        ({"VLLM_START_RETRIES": "maybe"}, "expected true or false"),
        ({"VLLM_PORT": "http"}, "expected a whole number"),
        ({"VLLM_PORT": "70000"}, "expected a port number"),
        ({"VLLM_PORT": "9000", "VLLM_EXTRA_ARGS": "--port 8000"}, "disagrees with VLLM_PORT"),
        ({"VLLM_PORT": "9000", "VLLM_EXTRA_ARGS": "--port=8000"}, "disagrees with VLLM_PORT"),
    ],
)
def test_config_errors_name_the_setting(
    launch_config: ModuleType, env: dict[str, str], message: str
) -> None:
    with pytest.raises(launch_config.ConfigError, match=message):
        launch_config.load_config({"VLLM_MODEL": "m", **env}, [])


# --------------------------------------------------------------------------- GPUs


def test_nvidia_smi_rows_are_parsed_and_unusable_rows_skipped(launch_config: ModuleType) -> None:
    output = "0, 1200, 81559\n\n1, [N/A], 81559\n2,70210,81559\nNo devices were found\n"
    assert launch_config.parse_nvidia_smi(output) == [
        launch_config.Gpu(0, 1200, 81559),
        launch_config.Gpu(2, 70210, 81559),
    ]


def test_choose_gpus_prefers_free_memory_then_the_lower_index(launch_config: ModuleType) -> None:
    gpus = [
        launch_config.Gpu(0, 100, 80),
        launch_config.Gpu(1, 500, 80),
        launch_config.Gpu(2, 500, 80),
    ]
    assert [g.index for g in launch_config.choose_gpus(gpus, 1)] == [1]
    assert [g.index for g in launch_config.choose_gpus(gpus, 3)] == [1, 2, 0]
    with pytest.raises(launch_config.ConfigError, match="wants 4 GPU"):
        launch_config.choose_gpus(gpus, 4)


def _config(launch_config: ModuleType, **env: str) -> object:
    return launch_config.load_config({"VLLM_MODEL": "m", **env}, [])


def test_gpu_environment(launch_config: ModuleType) -> None:
    def gpus() -> list[object]:
        return [launch_config.Gpu(0, 10, 80), launch_config.Gpu(1, 70, 80)]

    def broken() -> list[object]:
        raise OSError("nvidia-smi: not found")

    assert launch_config.gpu_environment(_config(launch_config), gpus) == {}
    auto = _config(launch_config, VLLM_GPU="auto")
    assert launch_config.gpu_environment(auto, gpus) == {
        "CUDA_VISIBLE_DEVICES": "1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    assert launch_config.gpu_environment(auto, broken) == {}
    assert launch_config.gpu_environment(auto, list) == {}
    explicit = _config(launch_config, VLLM_GPU="3, 1")
    assert launch_config.gpu_environment(explicit, broken)["CUDA_VISIBLE_DEVICES"] == "3,1"
