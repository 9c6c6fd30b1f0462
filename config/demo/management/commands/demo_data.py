"""Create a few demo parts with attachments, so a backup holds rows and media."""

from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand

from config.demo.models import Part


class Command(BaseCommand):
    help = "Create demo parts with attachments (does nothing if parts exist)."

    def handle(self, *args, **options):
        if Part.objects.exists():
            self.stdout.write(f"{Part.objects.count()} demo parts already exist")
            return
        for i in range(1, 6):
            part = Part(
                name=f"Resistor {i * 100} Ω",
                description="Metal film, 1 % tolerance\n" * i,
                quantity=i * 10,
                price=i * 0.0125,
                blob=bytes(range(256)) * i,
            )
            part.attachment.save(
                f"datasheet-{i}.txt", ContentFile(f"Datasheet of part {i}\n".encode() * 50), save=False
            )
            part.save()
        self.stdout.write("Created 5 demo parts with attachments")
