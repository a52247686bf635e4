"""Settings for bench/signup.py: the product's settings plus a trivial view (the floor).

The trivial view lives only here, never in the product's URLs.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.signup_urls"
