import os

import pytest
import torch

# Keep the suite reproducible and polite on a 2-core machine shared by xdist workers.
torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def restore_tf32():
    """Tests that switch TF32 leave the process's switches as they found them."""
    matmul, cpu_matmul = torch.get_float32_matmul_precision(), torch.backends.mkldnn.matmul.fp32_precision
    cudnn = torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.mkldnn.matmul.fp32_precision = cpu_matmul
    torch.backends.cudnn.allow_tf32 = cudnn
