"""A stand-in for ``nvidia-smi``: prints $FAKE_NVIDIA_SMI_OUTPUT, exits $FAKE_NVIDIA_SMI_RC.

Its argv is appended to $FAKE_VLLM_STATE/nvidia-smi.jsonl so tests can check the query.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

with (Path(os.environ["FAKE_VLLM_STATE"]) / "nvidia-smi.jsonl").open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
sys.stdout.write(os.environ.get("FAKE_NVIDIA_SMI_OUTPUT", ""))
sys.exit(int(os.environ.get("FAKE_NVIDIA_SMI_RC", "0")))
