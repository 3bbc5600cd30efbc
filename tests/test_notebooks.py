"""Execute every notebook top to bottom (small settings via NFAUDIO_NB_FAST)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
@pytest.mark.integration
@pytest.mark.timeout(600)  # each cell has nbclient's own 300 s timeout; let that one report a hung cell
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("NFAUDIO_NB_FAST", "1")
    monkeypatch.setenv("NFAUDIO_NB_DIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert (tmp_path / "run" / "best.pt").is_file()
    assert (tmp_path / "run" / "history.csv").is_file()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # quickstart: curves, SED plot; embeddings: map


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["embeddings.ipynb", "quickstart.ipynb"]
