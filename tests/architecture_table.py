"""Print iclscope's architecture support table as markdown (docs/architectures.md).

    .venv/bin/python tests/architecture_table.py

Generated from iclscope.core.architectures.SUPPORT_TABLE: "supported" rows are verified by
tests/unit/test_architectures.py on tiny random models; "supported (untested)" rows take the same
AttentionInterface path without being in that matrix; "refused" rows fail at prepare_model.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from iclscope.core.architectures import markdown_table  # noqa: E402

if __name__ == "__main__":
    print(markdown_table())
