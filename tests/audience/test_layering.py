"""The audience sits below campaigns: no module of audience/ imports campaigns.

Segments are read by both the export (audience) and the sender (campaigns), so they live
in the audience; campaigns plugs its own segment rules in (campaigns.segment_rules).
This keeps the arrow from coming back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import audience
from audience import segments

AUDIENCE = Path(audience.__file__).resolve().parent


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def test_no_audience_module_imports_campaigns():
    files = sorted(AUDIENCE.rglob("*.py"))
    # The walk reaches the modules that used to import campaigns.
    names = {p.relative_to(AUDIENCE).as_posix() for p in files}
    assert {
        "segments.py",
        "importing/admin_views.py",
        "management/commands/export_contacts.py",
        "admin.py",
    } <= names
    offending = [
        f"{path.relative_to(AUDIENCE.parent)}:{line} imports {module}"
        for path in files
        for line, module in _imported_modules(path)
        if module == "campaigns" or module.startswith("campaigns.")
    ]
    assert offending == []


def test_the_walk_would_see_a_campaigns_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from campaigns.models import Delivery\n    import campaigns.sending\n"
    )
    assert [m for _, m in _imported_modules(module)] == ["campaigns.models", "campaigns.sending"]


def test_campaigns_plugs_its_rules_into_the_audiences_vocabulary():
    # Every rule the admin's builder offers today, the campaign-reading ones last.
    assert list(segments.RULE_FIELDS) == [
        "tag", "status", "source", "signup_form", "signed_up", "phone", "attribute",
        "engaged", "campaign",
    ]  # fmt: skip
