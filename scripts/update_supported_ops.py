"""Rewrite the README's supported-ops table from the op table (tests/test_capture_ops.py checks
that the two agree): ``python scripts/update_supported_ops.py``."""

import re
from pathlib import Path

from privquant.quant.graph import supported_ops_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
text = README.read_text()
new, n = re.subn(
    r"(<!-- supported-ops-begin -->\n)(.*?)(<!-- supported-ops-end -->)",
    lambda m: m.group(1) + supported_ops_markdown() + m.group(3),
    text,
    flags=re.S,
)
if n != 1:
    raise SystemExit("README.md has no supported-ops section")
README.write_text(new)
print("README.md: supported-ops table updated" if new != text else "README.md: up to date")
