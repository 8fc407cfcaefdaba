"""WebDataset shards of cached features: their format, and the reader pipeline over them
(`sevlm.features.shard_writer` writes them).

Reading: `open_shards` reads a split's manifest once (from a local folder, a URL or a WebDataset
URL pattern: see `locate`), checks the listed files, and warns with the counts when the split is
partial. Each shard's sha256 is checked against the manifest the first time it is read: the
shard is read whole and hashed before any of its samples is used, then marked verified in shared
memory so that later epochs and DataLoader workers stream it without hashing again.
`shard_pipeline` shuffles the shard list (seed, epoch; the same on every rank), deals it to the
ranks round-robin (`deal_shards`) and, within a rank, to the DataLoader workers (`sample_share`);
then each worker runs the webdataset stages
    read its tar samples (to its quota) -> shuffle samples -> decode
Equal samples per rank per epoch: every rank yields exactly `samples_per_rank = max over ranks
of its shard total` samples, a rank with fewer samples repeating its own first samples (so
nothing is dropped, a few samples are seen twice per epoch). Build one pipeline per epoch
(`epoch=`), which reshuffles shards and samples. Training reads the same stages in whole
micro-batches, its order and resume position kept by `sevlm.train.order`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch
import webdataset as wds

from sevlm.errors import ConfigError, DataError
from sevlm.features.common import make_sample
from sevlm.features.remote import DEFAULT_READ_TIMEOUT, StalledRead, open_url

FORMAT = "sevlm-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------- reading


@dataclass
class Location:
    """Where a shard folder's files are read from (see `locate`)."""

    url_of: Callable[[str], str]  # file name -> what webdataset.gopen opens
    selected: set[str] | None  # the shard names a URL pattern names; None = all the manifest lists
    folder: Path | None  # the local folder, when local (its files can be listed)


_PATTERN = re.compile(r"[^/\s]*\{[^}]*\}[^/\s]*")  # the braced file name of a WebDataset URL pattern


def locate(where: str | os.PathLike) -> Location:
    """A shard location: a local folder (or its manifest.json), a folder URL (`http(s)://`,
    `file://`, `pipe:CMD` whose last word is the folder), or a WebDataset URL pattern whose braces
    name the shards (`https://host/s/train-{000000..000009}.tar`, `pipe:curl -s https://host/s/train-{000000..000009}.tar`).
    The manifest is `manifest.json` in the same place, read with the same opener."""
    where = str(where)
    local = _local_folder(where)
    # a local folder or file that exists is taken literally, braces in its name or not (`sh_{a,b}`);
    # in a local pattern only the file name may hold braces
    literal = local is not None and local.exists()
    start = 0 if local is None or urlparse(where).scheme else len(where) - len(Path(where).name)
    names = [] if literal else _PATTERN.findall(where, start)
    if len(names) > 1:
        raise ConfigError(f"{where}: a shard URL pattern may have braces in one file name only")
    if names:
        m = _PATTERN.search(where, start)
        head, tail = where[: m.start()], where[m.end() :]
        return Location(
            lambda name: head + name + tail,
            set(wds.shardlists.expand_urls(m.group(0))),
            _local_folder(head) if not tail else None,
        )
    folder = _local_folder(where)
    if folder is not None:
        if folder.name == MANIFEST or folder.is_file():
            folder = folder.parent
        return Location(lambda name: str(folder / name), None, folder)
    base = where.rstrip("/")
    base = base[: -len(MANIFEST) - 1] if base.endswith("/" + MANIFEST) else base
    return Location(lambda name: f"{base}/{name}", None, None)


def _local_folder(where: str) -> Path | None:
    scheme = urlparse(where).scheme
    if scheme == "file":
        return Path(url2pathname(urlparse(where).path))
    return Path(where) if scheme == "" else None


def is_path(where: str | os.PathLike) -> bool:
    """Whether a shard location is a plain local path (else a URL or a pipe: command)."""
    return urlparse(str(where)).scheme == ""


def manifest_bytes(where: str | os.PathLike, read_timeout: float = DEFAULT_READ_TIMEOUT) -> tuple[str, bytes]:
    """(where the manifest is, its bytes) for a shard location; DataError naming it otherwise."""
    url = locate(where).url_of(MANIFEST)
    local = _local_folder(url)
    if local is not None:
        if not local.is_file():
            raise DataError(f"{local}: shard manifest not found; build shards with `sevlm shard`")
        return url, local.read_bytes()
    try:
        with open_url(url, read_timeout) as f:
            return url, f.read()
    except StalledRead:
        raise
    except Exception as e:  # curl's exit status, a failing command ...
        detail = (
            str(e)[len(url) + 2 :]
            if isinstance(e, DataError) and str(e).startswith(f"{url}: ")
            else f"{type(e).__name__}: {e}"
        )
        raise DataError(f"{url}: cannot read the shard manifest ({detail})") from None


def read_manifest(where: str | os.PathLike, read_timeout: float = DEFAULT_READ_TIMEOUT) -> tuple[str, dict]:
    """(where the manifest is, the manifest) of a shard location (see `locate`)."""
    url, raw = manifest_bytes(where, read_timeout)
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{url}: the shard manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{url}: not a sevlm shard manifest")
    return url, manifest


@dataclass
class ShardSet:
    """One split's shards, as opened once by `open_shards`: what the manifest says and which
    shards have been verified. `verified` is in shared memory, so a DataLoader worker that
    verifies a shard spares every later epoch (and every other worker) from hashing it again."""

    where: str
    split: str
    manifest: dict
    entry: dict
    shards: list[dict]  # the manifest's shard records that are read, each with its "url"
    verified: torch.Tensor
    read_timeout: float = DEFAULT_READ_TIMEOUT  # seconds without data before a remote read fails

    @property
    def counts(self) -> dict[str, int]:
        return {sh["url"]: int(sh["num_samples"]) for sh in self.shards}

    @property
    def num_samples(self) -> int:
        return sum(self.counts.values())


def open_shards(
    where: str | os.PathLike, split: str, handle_errors: str = "raise", read_timeout: float = DEFAULT_READ_TIMEOUT
) -> ShardSet:
    """Read the manifest and check the shard files it lists: missing or resized local shards
    raise DataError naming them (handle_errors="warn": skipped with a warning). A partial split
    (shards missing or left out, shard files the manifest does not list, an unfinished `sevlm
    shard` run, images without features) warns once with the counts."""
    _check_policy(handle_errors)
    loc = locate(where)
    manifest_url, manifest = read_manifest(where, read_timeout)
    if split not in manifest.get("splits", {}):
        raise DataError(f"{manifest_url}: no split {split!r} (has: {', '.join(manifest.get('splits', {})) or 'none'})")
    entry = manifest["splits"][split]
    listed = entry["shards"]
    shards = [
        dict(sh, url=loc.url_of(sh["name"])) for sh in listed if loc.selected is None or sh["name"] in loc.selected
    ]
    notes = []
    if loc.selected is not None and loc.selected - {sh["name"] for sh in listed}:
        unknown = sorted(loc.selected - {sh["name"] for sh in listed})
        notes.append(f"{len(unknown)} shard(s) the pattern names are not in the manifest, ignored ({_few(unknown)})")
    if loc.folder is not None:
        shards = _check_local_files(loc.folder, split, listed, shards, handle_errors, notes)
    if not shards:
        raise DataError(f"{where}: no shard of split {split!r} to read (the manifest lists {len(listed)})")
    if len(shards) < len(listed):
        notes.append(
            f"reading {len(shards)} of its {len(listed)} shards "
            f"({sum(int(sh['num_samples']) for sh in shards)} of {entry['num_samples']} samples)"
        )
    if entry.get("missing"):
        notes.append(f"{len(entry['missing'])} image(s) of the split had no features and are not in the shards")
    if notes:
        warnings.warn(f"{manifest_url}: split {split!r} is partial: " + "; ".join(notes))
    return ShardSet(
        str(where),
        split,
        manifest,
        entry,
        shards,
        torch.zeros(len(shards), dtype=torch.bool).share_memory_(),
        read_timeout,
    )


def _few(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")


def _check_local_files(
    folder: Path, split: str, listed: list[dict], shards: list[dict], handle_errors: str, notes: list[str]
) -> list[dict]:
    """Cheap up-front checks (a stat per shard; the sha256 is checked when a shard is first read)."""
    bad, good = [], []
    for sh in shards:
        path = Path(sh["url"])
        size = path.stat().st_size if path.exists() else None
        if size == sh["bytes"]:
            good.append(sh)
        else:
            bad.append(
                f"{path}: shard "
                + (
                    "missing"
                    if size is None
                    else f"{size} bytes, the manifest says {sh['bytes']} (truncated or rewritten?)"
                )
            )
    if bad:
        if handle_errors == "raise":
            more = f" ({len(bad)} of {len(shards)} shards are missing or resized)" if len(bad) > 1 else ""
            raise DataError(f"{bad[0]}{more}; rewrite the split with `sevlm shard`")
        notes.append(f"{len(bad)} of {len(shards)} shards missing or resized, skipped ({_few(bad)})")
    names = {sh["name"] for sh in listed}
    extra = sorted(p.name for p in folder.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar") if p.name not in names)
    if extra:
        notes.append(f"{len(extra)} shard file(s) in {folder} are not in the manifest, ignored ({_few(extra)})")
    parts = sorted(d.name for d in folder.glob(f".{split}.part-*-of-*") if d.is_dir())
    if parts:
        notes.append(
            f"an unfinished `sevlm shard` run left {len(parts)} part folder(s) ({_few(parts)}); "
            "the shards of the last finished run are read"
        )
    return good


def dist_info(world_size: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """(world_size, rank): explicit arguments win, then torch.distributed, else (1, 0)."""
    if world_size is None or rank is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
            rank = torch.distributed.get_rank() if rank is None else rank
        else:
            world_size, rank = world_size or 1, rank or 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    return world_size, rank


def worker_info() -> tuple[int, int]:
    """(num_workers, worker_id) of the current DataLoader worker, (1, 0) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.num_workers, info.id) if info is not None else (1, 0)


@dataclass
class SampleShare:
    """What one DataLoader worker of a rank reads in an epoch (`sample_share`)."""

    logical: int  # the worker whose shards and shuffle seed this process takes
    urls: list[str]  # its shards
    quota: int  # raw samples it reads (its own stream, cut or replayed from the start to fit)


def deal_shards(shards: ShardSet, world_size: int, shuffle: bool, seed: int, epoch: int) -> tuple[list[list[str]], int]:
    """(each rank's shards, samples per rank) of an epoch: the shard list shuffled by (seed, epoch),
    the same on every rank, dealt round-robin. Every rank yields the largest rank's sample total."""
    urls = [sh["url"] for sh in shards.shards]
    if len(urls) < world_size:
        raise DataError(
            f"{shards.where}: split {shards.split!r} has {len(urls)} shard(s) for {world_size} ranks; "
            f"rewrite it with a smaller --samples-per-shard so every rank gets a shard"
        )
    order = list(urls)
    if shuffle:
        random.Random(f"{seed}-{epoch}").shuffle(order)  # same order on every rank and worker
    rank_urls = [order[r::world_size] for r in range(world_size)]
    counts = shards.counts
    return rank_urls, max(sum(counts[u] for u in urls) for urls in rank_urls)


def worker_samples(counts: dict[str, int], rank_urls: list[str]) -> tuple[int, int, list[int]]:
    """(num_workers, worker_id, samples in each worker's shards): worker w reads the rank's shards
    w, w + W, ..."""
    num_workers, wid = worker_info()
    return num_workers, wid, [sum(counts[u] for u in rank_urls[w::num_workers]) for w in range(num_workers)]


def sample_share(counts: dict[str, int], rank_urls: list[str], samples: int) -> SampleShare:
    """This process's share of the rank's `samples` samples of an epoch: its own shards' samples,
    the rank's shortfall (a rank with fewer samples pads to `samples`) dealt one at a time over the
    workers that have data. Worker k plays logical worker (j + k) mod W, j the first with data."""
    num_workers, wid, own = worker_samples(counts, rank_urls)
    with_data = [w for w in range(num_workers) if own[w]]
    per = list(own)
    for k in range(samples - sum(per)):
        per[with_data[k % len(with_data)]] += 1
    first = next((w for w in range(num_workers) if per[w]), 0)
    logical = (first + wid) % num_workers
    return SampleShare(logical, rank_urls[logical::num_workers], per[logical])


def _check_policy(handle_errors: str) -> None:
    if handle_errors not in ("raise", "warn"):
        raise ValueError(f"handle_errors must be 'raise' or 'warn', not {handle_errors!r}")


def read_tar_samples(shards: ShardSet, share: Callable[[], SampleShare], handle_errors: str, pooled: bool = True):
    """Stage: -> this worker's raw tar samples, exactly its share's quota (its own stream, replayed
    from the start when short; `share` is evaluated in the worker, which knows its id);
    `pooled=False` leaves the pooled vectors unread (training does not use them). A corrupt,
    truncated or altered shard raises DataError naming it, or with handle_errors="warn" is skipped
    from that point with a warning (the quota is then filled by replaying, so ranks stay in step).
    """

    def stage():
        p = share()
        produced = 0
        while produced < p.quota:
            got = 0
            for sample in _samples_of(shards, p.urls, handle_errors, None if pooled else _not_pooled):
                if produced >= p.quota:
                    return
                yield sample
                produced += 1
                got += 1
            if got == 0:
                raise DataError(f"shards {p.urls}: no readable sample left to fill this worker's quota of {p.quota}")

    return stage


def _samples_of(shards: ShardSet, urls: list[str], handle_errors: str, select: Callable[[str], bool] | None):
    index = {sh["url"]: i for i, sh in enumerate(shards.shards)}
    for url in urls:
        try:
            stream = _open_shard(shards, index[url])
            with contextlib.closing(stream):
                files = wds.tariterators.tar_file_expander(
                    [{"url": url, "stream": stream}], select_files=select, handler=wds.reraise_exception
                )
                yield from wds.tariterators.group_by_keys(files, handler=wds.reraise_exception)
        except Exception as e:  # a checksum mismatch; tarfile.ReadError, EOFError, OSError ... from a damaged shard
            err = (
                e
                if isinstance(e, DataError)
                else DataError(
                    f"{url}: corrupt, truncated or unreadable shard ({type(e).__name__}: {e}); rewrite it with `sevlm "
                    "shard`"
                )
            )
            if handle_errors == "raise":
                raise err from None
            warnings.warn(f"{err}; skipping the rest of this shard")


def _not_pooled(name: str) -> bool:
    return not name.endswith(".pooled.npy")


def _open_shard(shards: ShardSet, i: int):
    """The shard's byte stream (webdataset.gopen: local, http(s), pipe: ...). The first time a
    shard is opened it is read whole and its sha256 checked against the manifest before any of
    its samples is used; once verified, it streams."""
    sh = shards.shards[i]
    stream = open_url(sh["url"], shards.read_timeout)
    if shards.verified[i]:
        return stream
    with contextlib.closing(stream):
        data = stream.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sh["sha256"]:
        raise DataError(
            f"{sh['url']}: shard content differs from the manifest (sha256 {digest[:12]}..., "
            f"the manifest says {sh['sha256'][:12]}...; {len(data)} bytes); rewrite the split with `sevlm shard`"
        )
    shards.verified[i] = True
    return io.BytesIO(data)


def decode_sample(raw: dict, dtype=np.float32, pooled: bool = True) -> dict:
    """Raw tar sample (bytes per extension) -> the sample dict of DESIGN.md (features as `dtype`;
    "pooled" None with `pooled=False`)."""
    try:
        meta = json.loads(raw["json"])
        tokens = np.load(io.BytesIO(raw["tokens.npy"]), allow_pickle=False)
        pooled = np.load(io.BytesIO(raw["pooled.npy"]), allow_pickle=False) if pooled else None
    except (KeyError, ValueError, OSError) as e:
        raise DataError(
            f"{raw.get('__url__')}: sample {raw.get('__key__')!r} cannot be decoded ({type(e).__name__}: {e})"
        ) from None
    return make_sample(meta["image_id"], meta, tokens, pooled, dtype=dtype)


def decode(handle_errors: str = "raise", dtype=np.float32, pooled: bool = True):
    """Stage: raw tar samples -> sample dicts. An undecodable sample raises DataError naming shard
    and sample, or (handle_errors="warn") is replaced by the previous good sample with a warning,
    so the rank's sample count stays equal. (Not wds.map: it would put the tar key back into
    __key__, and the contract's __key__ is the image_id.)"""

    def stage(src):
        last = None
        for raw in src:
            try:
                last = decode_sample(raw, dtype, pooled)
            except DataError as e:
                if handle_errors == "raise" or last is None:
                    raise
                warnings.warn(f"{e}; repeating the previous sample in its place")
            yield last

    return stage


def shard_pipeline(
    shards: ShardSet | str | os.PathLike,
    split: str | None = None,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int = 1000,
    handle_errors: str = "raise",
    world_size: int | None = None,
    rank: int | None = None,
) -> wds.DataPipeline:
    """An IterableDataset of one split's samples on this rank (hand it to a DataLoader,
    batch_size=None).

    `shards` is an opened ShardSet (open it once and build a pipeline per epoch) or a location
    for `open_shards`. Every rank yields `pipeline.samples_per_rank` samples per epoch (see the
    module docstring). Training reads micro-batches through `sevlm.train.order.shard_pipeline`.
    """
    _check_policy(handle_errors)
    if not isinstance(shards, ShardSet):
        shards = open_shards(shards, split, handle_errors)
    world_size, rank = dist_info(world_size, rank)
    rank_urls, samples_per_rank = deal_shards(shards, world_size, shuffle, seed, epoch)
    counts = shards.counts

    def share() -> SampleShare:  # evaluated in each worker process, which knows its id
        return sample_share(counts, rank_urls[rank], samples_per_rank)

    stages: list = [read_tar_samples(shards, share, handle_errors)]
    if shuffle:
        stages.append(sample_shuffle(shuffle_buffer, f"{seed}-{epoch}-{rank}", share))
    stages.append(decode(handle_errors))
    pipeline = wds.DataPipeline(*stages)
    pipeline.samples_per_rank = samples_per_rank
    pipeline.manifest = shards.manifest
    pipeline.entry = shards.entry
    pipeline.shards = shards
    return pipeline


def sample_shuffle(bufsize: int, seed: str, share: Callable[[], SampleShare]):
    """Stage: buffered sample shuffle, seeded per (seed, epoch, rank, logical worker) so runs repeat
    exactly."""

    def stage(src):
        rng = random.Random(f"{seed}-{share().logical}")
        return wds.shuffle(bufsize=bufsize, initial=bufsize, rng=rng)(src)

    return stage
