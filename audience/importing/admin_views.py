"""Admin pages for imports (upload → preview → run with a live progress bar → summary)
and the contact export page. Registered from audience/admin.py."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from audience import exporting, importing
from audience.importing.consent_note import consent_note
from audience.importing.jobs import INSPECT_LINES
from audience.importing.profiles import BY_KEY, GENERIC, default_mapping
from audience.models import Contact, ImportJob, Segment, SignupForm
from audience.segments import segment_contacts

EXPORT_PERMISSION = "audience.export_contact"


class UploadForm(forms.Form):
    file = forms.FileField(
        help_text="CSV (comma, semicolon or tab; UTF-8, UTF-16 or Windows-1252) or XLSX: "
        "a Mailchimp, Shopify, Klaviyo, Meta Lead Ads or WooCommerce export, another "
        "Stillhere's contact export, or any sheet with an email column."
    )
    unknown = forms.ChoiceField(
        label="Columns Stillhere does not know",
        choices=[("attribute", "Keep them as attributes"), ("ignore", "Ignore them")],
        initial="attribute",
        widget=forms.RadioSelect,
    )


class OptionsForm(forms.Form):
    tags = forms.CharField(
        required=False, help_text="Comma-separated; added to every imported contact."
    )
    source = forms.CharField(
        label="Source label",
        required=False,
        max_length=100,
        help_text="New contacts' source reads “import: <label>” in the contact list's "
        "export (kept in the attribute import_source), and each consent event keeps it.",
    )
    new_status = forms.ChoiceField(
        label="New contacts become",
        choices=list(importing.NEW_STATUS_CHOICES.items()),
        widget=forms.RadioSelect,
        help_text="Existing contacts keep their status: an import never subscribes anyone "
        "who is already on the list, and never re-subscribes anyone who unsubscribed, "
        "bounced, complained or was erased.",
    )
    unknown = forms.ChoiceField(
        label="Columns Stillhere does not know",
        choices=[("attribute", "Keep as attributes"), ("ignore", "Ignore")],
        widget=forms.RadioSelect,
    )
    welcome_form = forms.ModelChoiceField(
        label="Welcome email",
        queryset=SignupForm.objects.filter(welcome_enabled=True).order_by("name"),
        required=False,
        empty_label="None: the import welcomes nobody",
        help_text="Send the welcome email of this signup form to each contact the import "
        "subscribes (never to one already welcomed, nor to anyone not subscribed when it "
        "is sent). Most lists moved from another tool were welcomed there already.",
    )


def _mapping_from_post(request: HttpRequest, job: ImportJob) -> list[str]:
    return [request.POST.get(f"col_{i}", "ignore") for i in range(len(job.columns))]


class ImportJobAdmin(admin.ModelAdmin):
    list_display = ["__str__", "profile", "status", "rows_done", "rows_total", "summary",
                    "created_by", "created_at"]  # fmt: skip
    list_filter = ["status", "profile"]
    readonly_fields = [f.name for f in ImportJob._meta.fields]
    actions = ["rerun_selected"]

    @admin.action(description="Run selected imports again", permissions=["add"])
    def rerun_selected(self, request, queryset):
        # Safe because an import is idempotent; meant for a failed run, or one whose
        # worker died (it stays "running" until somebody decides it is dead).
        count = 0
        for job in queryset.exclude(status=ImportJob.Status.UPLOADED):
            importing.job_requeue(job=job)
            count += 1
        self.message_user(request, f"Queued {count} imports again.")

    def delete_model(self, request, obj):
        _delete_files(obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for job in queryset:
            _delete_files(job)
        super().delete_queryset(request, queryset)

    def has_add_permission(self, request) -> bool:
        return super().has_add_permission(request) and request.user.has_perm("audience.add_contact")

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Result")
    def summary(self, obj: ImportJob) -> str:
        c = obj.counts or {}
        if not c:
            return "-"
        return (
            f"{c.get('new', 0)} new, {c.get('updated', 0)} updated, "
            f"{c.get('unchanged', 0)} unchanged, {c.get('suppressed', 0)} suppressed, "
            f"{c.get('invalid', 0)} invalid"
        )

    def get_urls(self):
        wrap = self.admin_site.admin_view
        own = [
            path("export/", wrap(self.export_view), name="audience_contact_export"),
            path("<int:pk>/preview/", wrap(self.preview_view), name="audience_importjob_preview"),
            path("<int:pk>/progress/", wrap(self.progress_view),
                 name="audience_importjob_progress"),
            path("<int:pk>/progress.json", wrap(self.progress_json),
                 name="audience_importjob_progress_json"),
            path("<int:pk>/rejected.csv", wrap(self.rejected_csv),
                 name="audience_importjob_rejected"),
        ]  # fmt: skip
        return own + super().get_urls()

    def _context(self, request, **extra) -> dict:
        return {**self.admin_site.each_context(request), "opts": self.model._meta, **extra}

    def _job(self, request, pk: int) -> ImportJob:
        job = get_object_or_404(ImportJob, pk=pk)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        return job

    # --- upload ------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        limit = settings.IMPORT_MAX_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if request.method == "POST" and length > limit + 64 * 1024:  # form fields' share
            # Refuse before Django spools the whole upload to disk.
            error = (
                f"The file is larger than the {limit / 1_048_576:.2f} MB accepted "
                "(IMPORT_MAX_BYTES). Split it, or ask your administrator to raise the limit."
            )
            return TemplateResponse(
                request,
                "admin/audience/import/upload.html",
                self._context(request, title="Import contacts", form=UploadForm(), error=error),
            )
        form = UploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                job = importing.job_create(
                    f=upload.file if hasattr(upload, "file") else upload,
                    name=upload.name,
                    size=upload.size,
                    user=request.user,
                    unknown=form.cleaned_data["unknown"],
                )
            except importing.ImportFileError as exc:
                form.add_error("file", str(exc))
            else:
                return redirect("admin:audience_importjob_preview", job.pk)
        return TemplateResponse(
            request,
            "admin/audience/import/upload.html",
            self._context(request, title="Import contacts", form=form),
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The admin's own URL takes any text here (…/importjob/abc/change/); only a
        # number can name a job, and anything else is a page that does not exist.
        if not str(object_id).isascii() or not str(object_id).isdigit():
            raise Http404("No such import")
        job = self._job(request, int(object_id))
        if job.status == ImportJob.Status.UPLOADED:
            return redirect("admin:audience_importjob_preview", job.pk)
        return redirect("admin:audience_importjob_progress", job.pk)

    # --- preview -----------------------------------------------------------------------

    def preview_view(self, request, pk: int):
        job = self._job(request, pk)
        if job.status != ImportJob.Status.UPLOADED:
            return redirect("admin:audience_importjob_progress", job.pk)
        if not self.has_add_permission(request):
            raise PermissionDenied
        options = job.options or {}
        initial = {**options, "tags": ", ".join(options.get("tags", []))}
        form = OptionsForm(request.POST or None, initial=initial)
        error = ""
        if request.method == "POST" and form.is_valid():
            mapping = _mapping_from_post(request, job)
            data = form.cleaned_data
            if data["unknown"] != options.get("unknown"):
                mapping = self._remap_unknown(job, mapping, data["unknown"])
            try:
                job.mapping = importing.clean_mapping(job, mapping)
                job.options = importing.clean_options(data)
            except (ValueError, ValidationError) as exc:
                error = exc.messages[0] if isinstance(exc, ValidationError) else str(exc)
            else:
                job.save(update_fields=["mapping", "options"])
                if request.POST.get("action") == "start":
                    importing.job_start(job=job)
                    return redirect("admin:audience_importjob_progress", job.pk)
                return redirect("admin:audience_importjob_preview", job.pk)
        try:
            preview = importing.job_preview(job)
        except importing.ImportFileError as exc:
            preview, error = None, str(exc)
        profile = BY_KEY.get(job.profile, GENERIC)
        samples = importing.job_sample(job)
        columns = [
            {
                "index": i,
                "name": name,
                "target": job.mapping[i] if i < len(job.mapping) else "ignore",
                "samples": [row[i] for row in samples if i < len(row) and row[i].strip()],
            }
            for i, name in enumerate(job.columns)
        ]
        return TemplateResponse(
            request,
            "admin/audience/import/preview.html",
            self._context(
                request,
                title=f"Preview: {job.original_name}",
                job=job,
                profile=profile,
                form=form,
                columns=columns,
                targets=importing.TARGETS.items(),
                preview=preview,
                consent=consent_note(job, preview.counts, profile) if preview else None,
                error=error,
                inspect_lines=INSPECT_LINES,
            ),
        )

    def _remap_unknown(self, job: ImportJob, mapping: list[str], unknown: str) -> list[str]:
        profile = BY_KEY.get(job.profile, GENERIC)
        before = default_mapping(job.columns, profile, unknown="attribute")
        after = default_mapping(job.columns, profile, unknown="ignore")
        # Only columns the detection itself sent to "unknown" follow the new choice.
        return [
            unknown if before[i] != after[i] and current in {"attribute", "ignore"} else current
            for i, current in enumerate(mapping)
        ]

    # --- progress ----------------------------------------------------------------------

    def progress_view(self, request, pk: int):
        job = self._job(request, pk)
        return TemplateResponse(
            request,
            "admin/audience/import/progress.html",
            self._context(
                request,
                title=f"Import: {job.original_name}",
                job=job,
                status_url=reverse("admin:audience_importjob_progress_json", args=[job.pk]),
            ),
        )

    def progress_json(self, request, pk: int) -> JsonResponse:
        job = self._job(request, pk)
        return JsonResponse(progress_state(job))

    def rejected_csv(self, request, pk: int) -> HttpResponse:
        job = self._job(request, pk)
        if not job.rejected:
            raise Http404("No rejected rows")
        return FileResponse(
            job.rejected.open("rb"),
            as_attachment=True,
            filename=f"rejected-rows-{job.pk}.csv",
            content_type="text/csv; charset=utf-8",
        )

    # --- export ------------------------------------------------------------------------

    def export_view(self, request):
        if not request.user.has_perm(EXPORT_PERMISSION):
            raise PermissionDenied
        params = request.GET.copy()
        fmt = params.pop("_format", [""])[0]
        segment_id = params.pop("_segment", [""])[0]
        segments = Segment.objects.order_by("name")
        if fmt in exporting.FORMATS:
            request.GET = params
            try:
                queryset = contact_changelist_queryset(request, self.admin_site)
            except IncorrectLookupParameters:
                messages.error(request, "The filter in the address is not valid.")
                return HttpResponseRedirect(reverse("admin:audience_contact_export"))
            if segment_id:
                # A hand-edited address ("?_segment=abc") is a 404, not a crash.
                segment = segments.filter(pk=segment_id).first() if segment_id.isdigit() else None
                if segment is None:
                    raise Http404("No such segment")
                queryset = queryset.filter(pk__in=segment_contacts(segment).values("pk"))
            return export_response(queryset, fmt)
        filters = [(k, v) for k, values in params.lists() for v in values]
        return TemplateResponse(
            request,
            "admin/audience/export/export.html",
            self._context(
                request,
                title="Export contacts",
                filters=filters,
                query=params.urlencode(),
                segments=list(segments[:500]),
                changelist=reverse("admin:audience_contact_changelist"),
            ),
        )


def _delete_files(job: ImportJob) -> None:
    for field in (job.file, job.rejected):
        if field:
            field.delete(save=False)


def contact_changelist_queryset(request, admin_site):
    """The contacts the contact list shows for this request's filters and search."""
    contact_admin = admin_site._registry[Contact]
    changelist = contact_admin.get_changelist_instance(request)
    return changelist.get_queryset(request)


def export_response(queryset, fmt: str) -> StreamingHttpResponse:
    content_type, stream = exporting.FORMATS[fmt]
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response = StreamingHttpResponse(stream(queryset), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="contacts-{stamp}.{fmt}"'
    return response


def progress_state(job: ImportJob) -> dict:
    done, total = job.rows_done, max(job.rows_total, job.rows_done)
    elapsed = None
    if job.started_at:
        elapsed = ((job.finished_at or timezone.now()) - job.started_at).total_seconds()
    rate = done / elapsed if elapsed and done else 0.0
    eta = (total - done) / rate if rate and job.status == ImportJob.Status.RUNNING else None
    return {
        "status": job.status,
        "status_label": job.get_status_display(),
        "rows_done": done,
        "rows_total": total,
        "percent": round(100 * done / total, 1) if total else 0,
        "rate": round(rate),
        "eta_seconds": round(eta) if eta is not None else None,
        "counts": job.counts or {},
        "error": job.error,
        "rejected_url": (
            reverse("admin:audience_importjob_rejected", args=[job.pk]) if job.rejected else ""
        ),
    }
