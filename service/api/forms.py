"""Multipart forms read with the API key checked first, so that an unauthenticated upload is never stored.

FastAPI reads a route's form fields before it runs the route's dependencies, the API key guard included: an
upload without the key was spooled to a temporary file before its 401. Here the key is checked from the
headers before the body is read; the web page's own form, which cannot send headers, sends it as a field
placed before its file, and the parser checks that field as soon as it is whole, before any file part.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartParser

from service.api.dependencies import check_api_key, sent_api_key
from service.errors import Unauthorized


class _KeyFirstParser(MultiPartParser):
    """Starlette's multipart parser, refusing the form at its first file part unless the key field came before it."""

    def __init__(self, *args, key_field: str, expected: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._key_field = key_field
        self._expected = expected.encode()
        self.key_ok = False

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None and part.field_name == self._key_field:
            # The raw bytes, as the form sent them (the field is not decoded yet here).
            if not hmac.compare_digest(bytes(part.data), self._expected):
                raise Unauthorized()
            self.key_ok = True
        super().on_part_end()

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        if self._current_part.file is not None and not self.key_ok:
            raise Unauthorized()


async def read_form(request: Request, *, max_files: int, max_fields: int, key_field: str | None = None) -> FormData:
    """The request's form, once the API key (when the server has one) is known to be right: from X-API-Key or
    Authorization: Bearer before anything is read, else, with `key_field`, from that multipart field, which must
    come before any file. Raises Unauthorized otherwise, having read no file."""
    expected = request.app.state.settings.api_key
    if expected is None or sent_api_key(request) is not None:
        check_api_key(request)
        return await request.form(max_files=max_files, max_fields=max_fields)
    if key_field is None or not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Unauthorized()
    parser = _KeyFirstParser(
        request.headers, request.stream(), max_files=max_files, max_fields=max_fields,
        key_field=key_field, expected=expected.get_secret_value(),
    )
    form = await parser.parse()
    if not parser.key_ok:
        await form.close()
        raise Unauthorized()
    return form
