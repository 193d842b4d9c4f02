"""Suite-wide settings. The unit tests use tiny matrices, for which one torch thread is fastest
(thread start-up and spinning dominate; measured ~10x slower with 2 threads on a busy 2-core
machine). The real-model tests (opt-in: -m real) also run single-threaded."""

import torch

torch.set_num_threads(1)
