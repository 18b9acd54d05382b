"""Opening a split's shards and turning their members into checked numpy samples.

Shared by the training and evaluation readers (and the PNG export). Checks, from cheap to
expensive: at open, every shard of the manifest exists with the recorded size (a truncated
or missing shard is caught before any worker starts; ``verify="sha256"`` also hashes them);
per sample, every selected member is present with the spec's shape and dtype, and the label is
one the manifest names (a class index below the number of label names, or a 0/1 multi-hot
vector); per shard read to the end, no member name occurs twice and the sample count equals the
manifest's. Every failure is a ShardError whose message names the shard file, also when it is
raised inside a DataLoader worker (torch re-raises it in the main process with the same type and
message).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

from data_pipelines.manifest import LABEL_KINDS, LABELS_MEMBER, Manifest, ShardInfo, load_manifest
from data_pipelines.modality import ModalitySpec
from data_pipelines.shards import npy_header, sha256_file


class ShardError(RuntimeError):
    """A shard that is missing, truncated or does not match its manifest; names the shard."""


class TarFormatError(ValueError):
    """A malformed tar stream; ``SplitSource.read_shard`` re-raises it as a ShardError naming the shard."""


@dataclass(frozen=True)
class RawSample:
    key: str
    arrays: dict[str, np.ndarray]
    label: np.ndarray


_BLOCK = 512
_END_OF_ARCHIVE = bytes(_BLOCK)
_REGULAR_FILE_TYPES = (b"0", b"\0")
_NAME_CHANGING_TYPES = (b"x", b"g", b"L", b"K")
"""PAX and GNU long-name headers: they change the next member's name, so they cannot be skipped."""


def tar_members(stream, select: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """Regular files of a plain ustar archive as webdataset file samples (``fname``, ``data``).

    Python's ``tarfile`` stream parser took about 70% of the training reader's CPU time
    (header objects, PAX handling, per-block reads). The shards written by ``shards.py`` are
    plain ustar (fixed metadata, short names, regular files only), so this reads each 512-byte
    header directly, verifies its checksum, and reads or seeks past the payload. Anything
    else -- a bad checksum, a truncated member, a PAX/GNU long-name header, a member name that
    occurs twice (a sample's member repeated, or two samples with one key) -- raises.
    """
    seen: set[str] = set()
    while True:
        header = stream.read(_BLOCK)
        if len(header) < _BLOCK:
            raise TarFormatError(f"archive ends inside a tar header at offset {stream.tell() - len(header)} "
                                 "(truncated, or no end-of-archive marker)")
        if header == _END_OF_ARCHIVE:
            return
        stored = _octal(header[148:156], "checksum")
        # The checksum counts its own 8-byte field as spaces.
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise TarFormatError(f"tar header checksum mismatch at offset {stream.tell() - _BLOCK} (corrupted)")
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8")
        if prefix:
            name = f"{prefix}/{name}"
        size = _octal(header[124:136], "size")
        padded = -(-size // _BLOCK) * _BLOCK
        typeflag = header[156:157]
        if typeflag in _NAME_CHANGING_TYPES:
            raise TarFormatError(f"member {name!r} has tar type {typeflag!r} (PAX/GNU extension); rebuild the shard")
        if name in seen:
            raise TarFormatError(f"member {name!r} occurs twice in the archive")
        seen.add(name)
        if typeflag not in _REGULAR_FILE_TYPES or (select is not None and not select(name)):
            stream.seek(padded, io.SEEK_CUR)
            continue
        data = stream.read(padded)
        if len(data) < padded:
            raise TarFormatError(f"member {name!r} is truncated ({len(data)} of {padded} bytes)")
        yield {"fname": name, "data": data[:size] if padded != size else data}


def _octal(field: bytes, what: str) -> int:
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise TarFormatError(f"tar header {what} field {field!r} is not octal (corrupted)") from None


def _verify_size(manifest: Manifest, shard: ShardInfo) -> None:
    path = manifest.shard_path(shard)
    if not path.is_file():
        raise ShardError(f"shard {path}: missing (listed in {manifest.path})")
    size = path.stat().st_size
    if size != shard.size:
        raise ShardError(f"shard {path}: {size} bytes, the manifest says {shard.size} (truncated or replaced?)")


def _verify_sha256(manifest: Manifest, shard: ShardInfo) -> None:
    _verify_size(manifest, shard)
    path = manifest.shard_path(shard)
    if sha256_file(path) != shard.sha256:
        raise ShardError(f"shard {path}: sha256 differs from the manifest's (corrupted or replaced)")


# How thoroughly shards are checked when a reader opens a split.
SHARD_VERIFIERS: dict[str, Callable[[Manifest, ShardInfo], None]] = {
    "size": _verify_size,
    "sha256": _verify_sha256,
}


class _MemberDecoder:
    """Decodes one ``.npy`` member, with a fast path when the header is the expected one.

    ``np.load`` costs tens of microseconds per member; comparing the header bytes with the
    header numpy writes for the spec's shape and dtype and viewing the payload is ~1 us. Any
    other header goes through ``np.load`` and the shape/dtype check, so nothing is trusted blindly.
    """

    def __init__(self, member: str, shape: tuple[int, ...], dtype: str):
        self.member = member
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.payload_size = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.header = npy_header(self.shape, self.dtype.str)

    def __call__(self, raw: bytes, where: str) -> np.ndarray:
        if len(raw) == len(self.header) + self.payload_size and raw.startswith(self.header):
            return np.frombuffer(raw, dtype=self.dtype, offset=len(self.header)).reshape(self.shape)
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as exc:
            raise ShardError(f"{where} member {self.member}: not a readable .npy array: {exc}") from exc
        if array.shape != self.shape or array.dtype != self.dtype:
            raise ShardError(f"{where} member {self.member}: {array.dtype}{list(array.shape)}, the manifest says "
                             f"{self.dtype}{list(self.shape)}")
        return array


def select_modalities(manifest: Manifest, names: Sequence[str] | None) -> tuple[ModalitySpec, ...]:
    if names is None:
        return manifest.modalities
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in manifest.modality_names]
    if unknown:
        raise ValueError(f"unknown modalities {unknown} for {manifest.path}; known: {list(manifest.modality_names)}")
    if not names:
        raise ValueError(f"no modalities selected; known: {list(manifest.modality_names)}")
    return tuple(manifest.modality(name) for name in names)


class SplitSource:
    """A validated split: its manifest, the selected modalities, and checked shard reading."""

    def __init__(self, split_dir: str | Path, modalities: Sequence[str] | None = None, verify: str = "size"):
        self.manifest = load_manifest(split_dir)
        self.modalities = select_modalities(self.manifest, modalities)
        try:
            verifier = SHARD_VERIFIERS[verify]
        except KeyError:
            raise ValueError(f"unknown verify={verify!r}; known: {sorted(SHARD_VERIFIERS)}") from None
        for shard in self.manifest.shards:
            verifier(self.manifest, shard)
        label_kind = LABEL_KINDS[self.manifest.label_kind]
        label_shape = () if label_kind.stored_ndim == 0 else (len(self.manifest.label_names),)
        self._decoders = {f"{spec.name}.npy": _MemberDecoder(f"{spec.name}.npy", spec.shape, spec.dtype)
                          for spec in self.modalities}
        self._label_decoder = _MemberDecoder(LABELS_MEMBER, label_shape, label_kind.stored_dtype)
        self._num_classes = len(self.manifest.label_names) if label_kind.stored_ndim == 0 else None
        self._wanted = set(self._decoders) | {LABELS_MEMBER}

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.manifest.shards

    def read_shard(self, shard: ShardInfo, positions: Collection[int] | None = None) -> Iterator[RawSample]:
        """Samples of one shard in stored order (only those at ``positions`` when given).

        Unselected positions and members are skipped without decoding; the tar is still read
        to its end so that a short shard is noticed.
        """
        path = self.manifest.shard_path(shard)
        count = 0
        try:
            with open(path, "rb") as stream:
                files = tar_members(stream, select=self._is_wanted)
                samples = wds.tariterators.group_by_keys(dict(f, __url__=str(path)) for f in files)
                for position, sample in enumerate(samples):
                    count += 1
                    if positions is None or position in positions:
                        yield self._decode(sample, path)
        except ShardError:
            raise
        except Exception as exc:
            # tarfile, webdataset and numpy errors do not all say which file they were reading.
            raise ShardError(f"shard {path}: {type(exc).__name__}: {exc}") from exc
        if count != shard.num_samples:
            raise ShardError(f"shard {path}: holds {count} samples, the manifest says {shard.num_samples}")

    def _is_wanted(self, fname: str) -> bool:
        return fname.partition(".")[2] in self._wanted

    def _decode(self, sample: dict, path: Path) -> RawSample:
        key = sample["__key__"]
        where = f"shard {path} sample {key}"
        arrays = {}
        for member, decoder in self._decoders.items():
            if member not in sample:
                raise ShardError(f"{where}: member {member} is missing")
            arrays[member[: -len(".npy")]] = decoder(sample[member], where)
        if LABELS_MEMBER not in sample:
            raise ShardError(f"{where}: member {LABELS_MEMBER} is missing")
        label = self._label_decoder(sample[LABELS_MEMBER], where)
        # A damaged label that is no class would only fail later, far from the shard (a loss's index error).
        if self._num_classes is not None:
            if not 0 <= int(label) < self._num_classes:
                raise ShardError(f"{where}: member {LABELS_MEMBER}: class {int(label)}, the manifest names "
                                 f"{self._num_classes} classes (label_names)")
        elif label.size and int(label.max()) > 1:
            raise ShardError(f"{where}: member {LABELS_MEMBER}: multi-hot value {int(label.max())}, expected 0 or 1")
        return RawSample(key, arrays, label)


def iterate_split(split_dir: str | Path, modalities: Sequence[str] | None = None) -> Iterator[RawSample]:
    """Every sample of a split once, in stored order, as uint8/int numpy arrays (for exports and checks)."""
    source = SplitSource(split_dir, modalities)
    for shard in source.shards:
        yield from source.read_shard(shard)
