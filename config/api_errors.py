"""/api/v1's errors: DRF's JSON, with the services' own ValidationErrors among them.

Apart from config.api_access: DRF loads this while its own views module is loading.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, serializers
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    """DRF's handler, with a service's ValidationError a 400 naming its fields as
    DRF's own are ({"email": ["…"]}); one that names none says so in non_field_errors."""
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            exc = exceptions.ValidationError(exc.message_dict)
        else:
            exc = exceptions.ValidationError({"non_field_errors": exc.messages})
    return drf_exception_handler(exc, context)


class Problem(serializers.Serializer):
    """Every refusal's body: {"detail": "what is wrong, in words"}."""

    detail = serializers.CharField()


_PROBLEM = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
_FIELD_ERRORS = {
    "type": "object",
    "description": 'Each bad field with its messages, e.g. {"email": ["Please enter a valid '
    'email address."]}; a nested one nests ({"consent": {"status": ["…"]}}).',
    "additionalProperties": {},
}
_REFUSALS = {
    "401": "No token, or one that is not valid or was revoked",
    "403": "The token lacks the permission this needs",
    "429": "Too many calls with this token: see Retry-After",
}


def error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook: every operation's refusals in the schema
    (401/403/429 where a token is needed, 404 where an id is in the path, 400 where
    there is input), so a client, and schemathesis, know every answer it may get."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Problem", _PROBLEM)
    schemas["FieldErrors"] = _FIELD_ERRORS
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            parameters = operation.get("parameters", [])
            if operation.get("security"):
                for code, description in _REFUSALS.items():
                    responses.setdefault(code, {"description": description, "content": problem})
            if any(p.get("in") == "path" for p in parameters):
                responses.setdefault("404", {"description": "No such object", "content": problem})
            if "requestBody" in operation or any(p.get("in") == "query" for p in parameters):
                responses.setdefault(
                    "400",
                    {
                        "description": "Bad input: the fields named, or a body that is not JSON",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/FieldErrors"}
                            }
                        },
                    },
                )
    return result
