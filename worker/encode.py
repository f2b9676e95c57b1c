"""Image encoding: deterministic bytes for the same pixels and format."""

from __future__ import annotations

import io

from PIL import Image

QUALITY = 90


def encode_image(image: Image.Image, output_format: str) -> bytes:
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG")
    elif output_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=QUALITY)
    elif output_format == "webp":
        image.save(buffer, format="WEBP", quality=QUALITY, method=4)
    else:
        raise ValueError(f"unsupported output format {output_format!r}")
    return buffer.getvalue()
