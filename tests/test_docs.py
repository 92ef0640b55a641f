"""docs/: the API reference generator runs, and the pages the index links to exist."""

import re
import runpy
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_gen_api_runs_and_covers_the_public_api(tmp_path):
    out = tmp_path / "api.md"
    gen = runpy.run_path(str(DOCS / "gen_api.py"))
    assert gen["main"](["--out", str(out)]) == 0
    text = out.read_text()
    for name in ("tropfx.compile(", "tropfx.save(", "tropfx.load(", "tropfx.summary(",
                 "tropfx.register_serializable(", "tropfx.passes.fuse_batchnorm(",
                 "tropfx.passes.prune_l1(", "tropfx.plot.compression_curve(",
                 "tropfx.progress.progress("):
        assert name in text, name
    assert " at 0x" not in text  # deterministic: no object addresses
    assert gen["main"](["--out", str(out), "--check"]) == 0


def test_every_page_linked_from_the_index_exists():
    index = (DOCS / "index.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", index)
    assert links and all((DOCS / link).resolve().is_file() for link in links), links
    for name in ("fuse_batchnorm", "relu_to_maxplus", "maxpool_to_dilation", "prune_l1"):
        page = (DOCS / "passes" / f"{name}.md").read_text()
        assert all(section in page for section in ("## What it does", "## When it is exact",
                                                   "## Options", "## Limits"))
