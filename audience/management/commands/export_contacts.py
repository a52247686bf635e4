"""Export contacts to CSV or XLSX, streamed (constant memory at any size)."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from audience import exporting
from audience.models import Contact, Segment
from audience.segments import segment_contacts


class Command(BaseCommand):
    help = "Export contacts as CSV or XLSX to a file or standard output."

    def add_arguments(self, parser):
        parser.add_argument("-o", "--output", default="-", help="file name, or - for stdout")
        parser.add_argument("--format", choices=sorted(exporting.FORMATS), default=None)
        parser.add_argument("--status", action="append", choices=Contact.Status.values)
        parser.add_argument("--tag", action="append", help="contacts with this tag (repeatable)")
        parser.add_argument("--source", choices=Contact.Source.values)
        parser.add_argument("--segment", help="name of a segment")

    def handle(self, *args, **opts):
        fmt = opts["format"] or ("xlsx" if opts["output"].endswith(".xlsx") else "csv")
        queryset = Contact.objects.all()
        if opts["status"]:
            queryset = queryset.filter(status__in=opts["status"])
        for tag in opts["tag"] or []:
            queryset = queryset.filter(tags__name__iexact=tag)
        if opts["source"]:
            queryset = queryset.filter(source=opts["source"])
        if opts["segment"]:
            segment = Segment.objects.filter(name=opts["segment"]).first()
            if segment is None:
                raise CommandError(f"No segment named {opts['segment']!r}")
            queryset = queryset.filter(pk__in=segment_contacts(segment).values("pk"))
        _, stream = exporting.FORMATS[fmt]
        if opts["output"] == "-":
            out = sys.stdout.buffer
            for piece in stream(queryset):
                out.write(piece)
            out.flush()
            return
        with open(opts["output"], "wb") as out:
            for piece in stream(queryset):
                out.write(piece)
