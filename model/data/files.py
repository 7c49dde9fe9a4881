"""Reading the user's data files (JSON, JSON lines, images, label PNGs) with errors that name the file.

Every failure a user can cause here (missing file, unparseable content, wrong image mode, an
object-storage URI that cannot be read) is a `UserError` whose message says which file and what
was expected. Object storage is any fsspec URI (`s3://bucket/key`, `gs://...`); credentials and
endpoints come from the environment the storage library reads (AWS_* variables for S3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from model.errors import UserError

_LOCAL_PROTOCOLS = ("file", "local")


def _storage_error_types() -> tuple[type[BaseException], ...]:
    """What reading object storage raises for a bad URI, bad credentials or an unreachable store."""
    types: list[type[BaseException]] = [OSError, TimeoutError]  # fsspec maps most failures to these
    try:  # S3 through s3fs: botocore's own errors (e.g. EndpointConnectionError) pass through
        from botocore.exceptions import BotoCoreError, ClientError

        types += [BotoCoreError, ClientError]
    except ImportError:
        pass
    return tuple(types)


STORAGE_ERRORS = _storage_error_types()


def is_remote(path: str | Path) -> bool:
    """Whether `path` is a URI of a non-local fsspec filesystem (s3://, gs://, http://, ...)."""
    return isinstance(path, str) and "://" in path and fsspec.utils.get_protocol(path) not in _LOCAL_PROTOCOLS


def redact(uri: str) -> str:
    """`uri` without a user:password part, fit for messages and logs."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def remote_filesystem(uri: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `uri` and the path inside it; a missing protocol package is a UserError."""
    try:
        return fsspec.url_to_fs(uri, **storage_options)
    except (ImportError, ValueError) as e:
        raise UserError(f"{redact(uri)}: cannot open this kind of URI ({e})") from None


def storage_error(uri: str, error: BaseException) -> UserError:
    """One line naming `uri` (without secrets) and what went wrong reading it from object storage."""
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, FileNotFoundError):
        what = "no such bucket" if "bucket" in detail.lower() else "no such file or folder"
    elif isinstance(error, PermissionError):
        what = "access denied; check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and their rights"
    else:  # connection refused, DNS, timeouts: botocore/aiohttp raise their own types
        what = "cannot reach the object store; check the endpoint URL and the network"
    return UserError(f"{redact(uri)}: {what} ({type(error).__name__}: {detail})")


def read_json(path: str | Path) -> Any:
    """The parsed content of a JSON file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:  # a folder, no permission
        raise UserError(f"{path}: cannot read the file ({e.strerror}); expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: str | Path) -> list[Any]:
    """One parsed JSON value per non-blank line of a JSON-lines file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:  # a folder, no permission
        raise UserError(f"{path}: cannot read the file ({e.strerror}); expected a JSON-lines file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e})") from None
    values = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {number}: not valid JSON ({e})") from None
    return values


def _open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise UserError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None


def read_image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as `read_rgb` returns it, from its header only (EXIF rotation applied)."""
    with _open_image(path) as image:
        width, height = image.size
        # Pillow decodes a whole PNG to look for EXIF after its pixels; the PNG spec puts eXIf before them.
        in_header = image.format != "PNG" or "exif" in image.info
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1) if in_header else 1
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def verify_image(path: Path) -> None:
    """Check an image file without decoding its pixels: a readable header and, for PNG, every chunk's checksum."""
    with _open_image(path) as image:
        try:
            image.verify()
        except (OSError, SyntaxError) as e:  # Pillow reports a bad PNG chunk as SyntaxError
            raise UserError(f"{path}: image is truncated or corrupt ({e})") from None


def read_rgb(path: Path) -> np.ndarray:
    """An image as (H, W, 3) uint8 RGB, turned upright by its EXIF orientation."""
    with _open_image(path) as image:
        try:
            return np.array(ImageOps.exif_transpose(image).convert("RGB"))
        except OSError as e:
            raise UserError(f"{path}: image is truncated or corrupt ({e})") from None


def read_label_png(path: Path, expect_rgb: bool) -> np.ndarray:
    """A label PNG: (H, W, 3) uint8 when `expect_rgb` (COCO panoptic ids), else (H, W) of its integer values.

    Palette PNGs give their palette indices when a single channel is expected.
    """
    with _open_image(path) as image:
        try:
            if expect_rgb:
                if image.mode not in ("RGB", "RGBA", "P"):
                    raise UserError(f"{path}: expected an RGB panoptic PNG (id = R + 256 G + 256^2 B), got mode {image.mode}")
                return np.array(image.convert("RGB"))
            if image.mode not in ("L", "P", "I", "I;16"):
                raise UserError(f"{path}: expected a single-channel mask PNG (pixel value = category id), got mode {image.mode}")
            return np.array(image).astype(np.int64)
        except OSError as e:
            raise UserError(f"{path}: label image is truncated or corrupt ({e})") from None
