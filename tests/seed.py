"""Fill or change a demo site's database through the ORM (engine independent).

Run in a site's environment: ``python tests/seed.py ALIAS seed|mutate``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import Group, User  # noqa: E402

from config.demo.models import Part  # noqa: E402


def seed(alias: str) -> None:
    parts = Part.objects.using(alias)
    for i in range(200):
        parts.create(
            name=f"Teil {i} – Größe ✓ 部品 🔧",
            description=("Zeile\n" * (i % 7)) + "quote ' and \" and backslash \\ and NUL-free",
            quantity=i * 3 - 100,
            price=None if i % 5 == 0 else f"{i}.{i % 10000:04d}",
            blob=None if i % 4 == 0 else bytes((i + k) % 256 for k in range(i * 13 % 1000)),
            attachment=f"parts/p{i}.bin" if i % 3 == 0 else "",
        )
    for name in ("Einkäufer", "Lager", "Admins ∑"):
        Group.objects.using(alias).create(name=name)
    User.objects.db_manager(alias).create_user("ärger", "a@example.com", "pw-not-secret")


def mutate(alias: str) -> None:
    parts = Part.objects.using(alias)
    parts.filter(pk__in=list(parts.values_list("pk", flat=True)[:20])).delete()
    parts.filter(quantity__gt=100).update(name="CHANGED", blob=b"\x00changed", price=None)
    parts.create(name="added after the backup", quantity=1)
    Group.objects.using(alias).filter(name="Lager").delete()
    User.objects.db_manager(alias).create_user("new-user")


{"seed": seed, "mutate": mutate}[sys.argv[2]](sys.argv[1])
