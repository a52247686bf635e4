"""/api/v1's pages: cursors, never OFFSET or COUNT(*), so a page deep into a million
contacts costs what the first does."""

from __future__ import annotations

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination


class Cursor(CursorPagination):
    """Newest first by id: a page is `WHERE id < <cursor> ORDER BY id DESC LIMIT n`,
    which the primary key serves (and the status/source indexes, which end in id)."""

    ordering = "-id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request):
        # DRF answers a cursor it cannot read with a 404, as if the list were missing.
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise ValidationError(
                {self.cursor_query_param: ["Not a cursor this API gave out: follow `next`."]}
            ) from None
