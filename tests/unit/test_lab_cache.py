"""Lab cache entries are read-only once written (iclscope/core/lab_cache.py).

Root ignores permission bits, so what another lab member may do is checked as `nobody`, in
directories outside pytest's tmp_path (which only root can enter).
"""

import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from iclscope.cli import cache
from iclscope.core.lab_cache import entries, is_sealed, seal
from snakemake_runner import REPO, SNAKEMAKE


@pytest.fixture
def shared_dir():
    """A world-traversable directory, like a lab's /shared/lab/iclscope-cache."""
    path = Path(tempfile.mkdtemp(prefix="iclscope-lab-cache-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)  # root removes sealed entries too


def as_other_user(code: str) -> subprocess.CompletedProcess:
    """Run Python code as `nobody`: a lab member who did not write the entry."""
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)


def test_a_sealed_entry_can_be_read_but_not_changed_by_another_user(shared_dir):
    table = shared_dir / "a1b2c3.parquet"
    table.write_bytes(b"PAR1 rows")
    model = shared_dir / "d4e5f6"
    weights = model / "sub" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    for path in (table, model, weights.parent, weights):
        path.chmod(0o777 if path.is_dir() else 0o666)  # how Snakemake stores them
    assert not is_sealed(table) and not is_sealed(model)
    assert seal(table) == 1 and seal(model) == 3 and seal(model) == 0
    assert is_sealed(table) and is_sealed(model)
    assert stat.S_IMODE(table.stat().st_mode) == 0o444 and stat.S_IMODE(model.stat().st_mode) == 0o555

    reads = as_other_user(f"print(open({str(table)!r}, 'rb').read(4), open({str(weights)!r}, 'rb').read())")
    assert reads.returncode == 0 and "PAR1" in reads.stdout, reads.stderr
    for attempt in (f"open({str(table)!r}, 'r+b').write(b'x')",
                    f"open({str(weights)!r}, 'wb')",
                    f"open({str(model / 'sub' / 'extra')!r}, 'w')",
                    f"import shutil; shutil.rmtree({str(model)!r})"):
        result = as_other_user(attempt)
        assert result.returncode != 0 and "PermissionError" in result.stderr, (attempt, result.stderr)
    assert weights.read_bytes() == b"weights" and table.read_bytes() == b"PAR1 rows"
    added = as_other_user(f"open({str(shared_dir / 'new-entry')!r}, 'w').write('x')")  # the cache stays writable
    assert added.returncode == 0, added.stderr


SNAKEFILE = """
import sys
sys.path.insert(0, {workflow!r})
include: {rules!r}
seal_entries_when_stored()

rule all:
    input: "out/table.txt", "out/model"

rule make_table:
    output: "out/table.txt"
    cache: "omit-software"
    shell: "echo {value} > {{output}}"

rule make_model:
    output: directory("out/model")
    cache: "omit-software"
    shell: "mkdir -p {{output}}/sub && echo weights > {{output}}/sub/model.safetensors"
"""


def run_cached(work: Path, cache_dir: Path, value: int) -> None:
    work.mkdir(exist_ok=True)
    (work / "Snakefile").write_text(SNAKEFILE.format(workflow=str(REPO / "workflow"),
                                                         rules=str(REPO / "workflow" / "rules" / "lab_cache.smk"),
                                                         value=value))
    env = {**os.environ, "SNAKEMAKE_OUTPUT_CACHE": str(cache_dir)}
    result = subprocess.run([SNAKEMAKE, "--cores", "1", "--cache", "make_table", "make_model"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_snakemake_stores_sealed_entries_and_reruns_replace_the_links(shared_dir, tmp_path):
    """The real Snakemake --cache: entries sealed as stored; a second checkout links them; a
    changed rule stores a new entry and replaces the link (symlinks are never 'protected')."""
    run_cached(tmp_path / "alice", shared_dir, value=1)
    stored = entries(shared_dir)
    assert len(stored) == 2 and all(is_sealed(e) for e in stored)
    assert (tmp_path / "alice/out/table.txt").is_symlink()

    run_cached(tmp_path / "bob", shared_dir, value=1)
    assert entries(shared_dir) == stored
    assert os.path.realpath(tmp_path / "bob/out/table.txt") == os.path.realpath(tmp_path / "alice/out/table.txt")

    run_cached(tmp_path / "alice", shared_dir, value=2)  # the rule's code changed: a new key
    assert len(entries(shared_dir)) == 3 and all(is_sealed(e) for e in entries(shared_dir))
    assert (tmp_path / "alice/out/table.txt").read_text() == "2\n"


def test_cache_seal_command_seals_entries_stored_before(shared_dir):
    (shared_dir / "old-entry").write_text("stored by an older iclscope")
    (shared_dir / "old-entry").chmod(0o666)
    (shared_dir / "tmpq1w2e3").mkdir()  # Snakemake's in-flight store: not an entry
    buf = io.StringIO()
    assert cache("ls", str(shared_dir), out=buf) == 0 and "WRITABLE" in buf.getvalue()
    buf = io.StringIO()
    assert cache("seal", str(shared_dir), out=buf) == 0
    assert "sealed 1 of 1 entries" in buf.getvalue()
    assert is_sealed(shared_dir / "old-entry") and not is_sealed(shared_dir / "tmpq1w2e3")
    buf = io.StringIO()
    assert cache("ls", str(shared_dir), out=buf) == 0 and "WRITABLE" not in buf.getvalue()
