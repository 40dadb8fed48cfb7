"""Image readers (folder trees, webdataset tars), tar captions, and safe image decoding."""

from __future__ import annotations

import io
import json
import warnings

from PIL import Image, UnidentifiedImageError

from aniso.corpus._formats import IMAGE_EXTENSIONS, PAST_EOF, TRUNCATED, FileRange, tar_item_id, tar_samples
from aniso.corpus._text import check_text

__all__ = ["RawItem", "read_image_range", "read_tar_range", "decode_image"]

#: ``(id, source, payload (bytes or text) or None, error or None)``
RawItem = tuple[str, str, "bytes | str | None", "str | None"]
_IMAGE_KEYS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def decode_image(data: bytes) -> tuple[Image.Image | None, str | None]:
    """Decode image bytes to RGB; ``(None, reason)`` for empty, truncated or undecodable data."""
    if not data:
        return None, "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
        return image.convert("RGB"), None
    except UnidentifiedImageError:
        return None, f"undecodable image ({len(data)} bytes, unknown format)"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        reason = "truncated image" if "truncated" in str(exc).lower() else "corrupt image"
        return None, f"{reason}: {exc}"


def read_image_range(fs, rng: FileRange) -> list[RawItem]:
    """One image file (``rng`` covers one item): its bytes, or why they could not be read."""
    try:
        with fs.open(fs._strip_protocol(rng.url), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [(_image_id(rng), rng.url, None, f"missing file: {rng.url}")]
    if not data:
        return [(_image_id(rng), rng.url, None, "empty file (0 bytes)")]
    return [(_image_id(rng), rng.url, data, None)]


def _caption(members: dict, tar, text_field: str) -> tuple[str | None, str | None]:
    if "txt" in members:
        return check_text(tar.extractfile(members["txt"]).read(), "txt")
    if "json" in members:
        raw = tar.extractfile(members["json"]).read()
        try:
            meta = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return None, f"invalid JSON caption: {exc}"
        value = meta.get(text_field, meta.get("caption")) if isinstance(meta, dict) else None
        return check_text(value, text_field)
    return None, "no caption (.txt or .json) in sample"


def read_tar_range(fs, rng: FileRange, modality: str, text_field: str, tar_ids: str = "key") -> list[RawItem]:
    """Samples ``[start, stop)`` of a webdataset tar: image bytes or caption text per sample, each
    with its id (:func:`~aniso.corpus._formats.tar_item_id`)."""
    import tarfile

    n = rng.stop - rng.start
    try:
        with fs.open(fs._strip_protocol(rng.url), "rb") as f:
            samples = tar_samples(f)[rng.start : rng.stop]
            f.seek(0)
            items: list[RawItem] = []
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for key, members in samples:
                    source, item_id = f"{rng.url}#{key}", tar_item_id(rng.rel, key, tar_ids)
                    if key.startswith(TRUNCATED):
                        items.append((f"{rng.rel}{key}", rng.url, None, f"tar truncated at byte "
                                      f"{key[len(TRUNCATED):]}: the samples after the last complete one are lost"))
                        continue
                    if PAST_EOF in members:
                        items.append((item_id, source, None, "sample cut off by the end of a truncated tar"))
                        continue
                    try:
                        items.append(_tar_item(item_id, source, members, tar, modality, text_field))
                    except (tarfile.TarError, EOFError, OSError) as exc:
                        items.append((item_id, source, None, f"unreadable tar member: {exc}"))
    except FileNotFoundError:
        return [(f"{rng.rel}:{rng.start + k}", rng.url, None, f"missing file: {rng.url}") for k in range(n)]
    except (tarfile.TarError, EOFError, OSError) as exc:
        return [(f"{rng.rel}:{rng.start + k}", rng.url, None, f"unreadable tar: {exc}") for k in range(n)]
    if len(items) != n:
        items = (items + [(f"{rng.rel}:{rng.start + k}", rng.url, None, "file changed since planning")
                          for k in range(len(items), n)])[:n]
    return items


def _tar_item(item_id: str, source: str, members: dict, tar, modality: str, text_field: str) -> RawItem:
    if modality == "text":
        text, error = _caption(members, tar, text_field)
        return item_id, source, text, error
    ext = next((e for e in _IMAGE_KEYS if e in members), None)
    if ext is None:
        return item_id, source, None, "no image (jpg/png/webp) in sample"
    data = tar.extractfile(members[ext]).read()
    return item_id, f"{source}.{ext}", data or None, None if data else "empty file (0 bytes)"


def _image_id(rng: FileRange) -> str:
    """An image file's id: its path under the corpus without the extension (webdataset's key)."""
    import posixpath

    return posixpath.splitext(rng.rel)[0]
