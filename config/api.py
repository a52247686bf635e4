"""The REST API's one router: /api/v1/, each app's endpoints beside its services
(audience/api.py, campaigns/api.py), and the OpenAPI schema at /api/v1/schema."""

from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from audience.api import ContactViewSet, SignupViewSet, TagViewSet
from campaigns.api import CampaignViewSet
from config.api_access import BearerTokenAuthentication


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """The schema's securitySchemes entry for the bearer token."""

    target_class = BearerTokenAuthentication
    name = "bearerToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token made in the admin (Audience > API tokens).",
        }


# Paths work with a trailing slash (as the schema writes them) and without: a client's
# POST to the other spelling would otherwise meet APPEND_SLASH's redirect, which drops
# its body. SimpleRouter's argument is a bool; the pattern goes on the attribute.
router = SimpleRouter()
router.trailing_slash = "/?"
router.register("contacts", ContactViewSet, basename="contact")
router.register("tags", TagViewSet, basename="tag")
router.register("signups", SignupViewSet, basename="signup")
router.register("campaigns", CampaignViewSet, basename="campaign")


@csrf_exempt  # no cookie is read here: a POST is answered 404 like a GET, not 403
def _not_found(request) -> JsonResponse:
    return JsonResponse({"detail": "Not found."}, status=404)


urlpatterns = [
    # The schema is public: it describes the API, and holds no data.
    path(
        "schema",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="schema",
    ),
    *router.urls,
    # Anything else under /api/v1/ (an unknown path, an id that is no number) is a JSON
    # 404 too, not the site's HTML page.
    re_path(r"^.*$", _not_found),
]
