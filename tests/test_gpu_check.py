"""The offline GPU check runs on the CPU too (smaller), so that it cannot rot while no GPU is at hand."""

import importlib.util

from mc_bench.paths import REPO_ROOT


def test_gpu_check_passes_on_the_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    code = gpu_check.main(["--small", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[-1] == "GPU_CHECK OK", "\n".join(lines)
    for name in ("recipe lora bf16", "recipe full bf16", "recipe lora fp16 + min-SNR", "sdxl family", "sd3 family",
                 "determinism", "resume", "lora alpha != rank", "seeded generation"):
        assert any(line.startswith("ok") and name in line for line in lines), name
