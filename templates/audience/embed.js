{% autoescape off %}/* Stillhere signup form embed. Renders into a Shadow DOM where this script tag
   stands, so the shop's CSS cannot reach the form and the form's CSS cannot leak out. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || !script.parentNode) { return; }
  var host = document.createElement("div");
  host.className = "stillhere-signup-host";
  script.parentNode.insertBefore(host, script);
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  root.innerHTML = "<style>{% filter escapejs %}{% include "audience/embed.css" %}{% endfilter %}</style>" +
    "<div class=\"sh-wrap\">" +
    "{% filter escapejs %}{% if signup_form.title %}<h2 class="sh-title">{{ signup_form.title|force_escape }}</h2>{% endif %}{% if signup_form.intro %}<p class="sh-intro">{{ signup_form.intro|force_escape }}</p>{% endif %}{% autoescape on %}{% include "audience/_signup_fields.html" %}{% endautoescape %}{% endfilter %}" +
    "<p class=\"sh-success\" role=\"status\" hidden></p></div>";

  var form = root.querySelector("form");
  var success = root.querySelector(".sh-success");
  var button = root.querySelector(".sh-submit");
  var GENERIC = "Something went wrong. Please try again in a moment.";

  function clearErrors() {
    root.querySelectorAll(".sh-error").forEach(function (el) { el.hidden = true; el.textContent = ""; });
    root.querySelectorAll(".is-invalid").forEach(function (el) { el.classList.remove("is-invalid"); });
  }
  function showErrors(errors) {
    Object.keys(errors || {}).forEach(function (name) {
      var slot = root.querySelector('[data-error-for="' + name + '"]') || root.querySelector('[data-error-for="__all__"]');
      slot.textContent = errors[name].join(" ");
      slot.hidden = false;
      var input = form.querySelector('[name="' + name + '"]');
      if (input) { input.classList.add("is-invalid"); }
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    clearErrors();
    button.disabled = true;
    fetch(form.action, {
      method: "POST",
      // urlencoded rather than multipart: still a CORS "simple" request (no preflight),
      // and several times cheaper for the server to parse on every signup.
      body: new URLSearchParams(new FormData(form)),
      headers: { "Accept": "application/json" },
      mode: "cors",
      credentials: "omit"
    }).then(function (response) {
      return response.json().catch(function () { return { ok: false, errors: { __all__: [GENERIC] } }; });
    }).then(function (payload) {
      if (payload.ok) {
        form.hidden = true;
        success.textContent = payload.message;
        success.hidden = false;
      } else {
        showErrors(payload.errors || { __all__: [GENERIC] });
      }
    }).catch(function () {
      showErrors({ __all__: [GENERIC] });
    }).then(function () { button.disabled = false; });
  });
})();
{% endautoescape %}
