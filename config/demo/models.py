"""A tiny inventory: rows with text, numbers, binary data and an attached file."""

from django.db import models


class Part(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    quantity = models.IntegerField(default=0)
    price = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    blob = models.BinaryField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    attachment = models.FileField(upload_to="parts/", blank=True)

    def __str__(self) -> str:
        return self.name
