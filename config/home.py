"""GET /: where the admin's "View site" leads. Stillhere has no public home of its own
(the shop's site is that), so a signed-in staff user goes on to the admin, and anyone
else gets a small page saying the service runs, never a debug 404."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


@never_cache  # the answer depends on who is signed in
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_active and request.user.is_staff:
        return redirect("admin:index")
    return render(request, "home.html")
