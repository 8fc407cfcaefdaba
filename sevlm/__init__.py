"""sevlm: a small emotional vision-language model for visual art."""

import os

# OpenMP threads that spin while waiting make torch 5-10x slower, and FAISS slower than numpy,
# on a CPU that another process is also using (measured on a 2-core machine); passive waiting
# costs little when idle. OpenMP reads it once, when torch or faiss loads, so it is set here,
# before any of them is imported, for the CLI, the tools and library users alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
