"""Create the quickstart's admin login and demo content, and print how to get in.

Safe to run on every start: it creates only what is missing.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an admin login (printed) and a demo signup form and shop page."

    def handle(self, *args, **options):
        password_file = settings.VAR_DIR / "admin_password"
        User = get_user_model()
        if not User.objects.filter(username="admin").exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "admin@localhost", password)
            password_file.write_text(password)
            password_file.chmod(0o600)
        password = (
            password_file.read_text().strip()
            if password_file.exists()
            else "(the one you set; manage.py changepassword admin)"
        )
        self._seed_demo_form()
        self.stdout.write(
            self.style.SUCCESS("\nStillhere admin: ")
            + f"{settings.SITE_URL}/admin/  user: admin  password: {password}\n"
            + f"Demo shop page with an embedded signup form: {settings.SITE_URL}/demo/shop/\n"
        )

    def _seed_demo_form(self) -> None:
        from audience.services import demo_form_ensure

        demo_form_ensure()
