"""Trustworthy database and media backups for Django sites, built on django-dbbackup."""

__version__ = "0.1.0"
