"""The product's URLs plus /bench/trivial, the floor bench/signup.py measures against."""

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt  # posted exactly like a signup, so both go through the same middleware
def trivial(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "message": "Thanks!"})


urlpatterns = [
    path("bench/trivial", trivial, name="bench-trivial"),
    path("", include("config.urls")),
]
