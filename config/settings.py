"""Settings of the demo site: SQLite + local folders unless configured otherwise.

Every value comes through :mod:`backup_app.conf`'s loader: environment variable
(``INVENTREE_*``) > ``config/config.yaml`` > default.  The site's own keys
(database, folders, mail, Django, the django-q2 broker) are declared here; the
backup keys are the app's (:data:`backup_app.conf.BACKUP_KEYS`).
"""

from pathlib import Path

from backup_app.conf import (
    BACKUP_KEYS,
    ConfigError,
    Key,
    apply_backup_settings,
    load_config,
    reporting_config_errors,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = BASE_DIR / "data"

#: The demo site's own keys (ARCHITECTURE.md contract 4), read like the backup keys: env > YAML > default.
SITE_KEYS: tuple[Key, ...] = (
    Key(
        "database.ENGINE",
        "DB_ENGINE",
        "sqlite3",
        help="Database engine: sqlite3, postgresql, mysql (or a django.db.backends path).",
    ),
    Key("database.NAME", "DB_NAME", None, help="Database name (SQLite: file path)."),
    Key("database.HOST", "DB_HOST", "", help="Database host."),
    Key("database.PORT", "DB_PORT", "", help="Database port."),
    Key("database.USER", "DB_USER", "", help="Database user."),
    Key("database.PASSWORD", "DB_PASSWORD", "", secret=True, help="Database password."),
    Key("media_root", "MEDIA_ROOT", None, kind="path", help="Folder of uploaded media files."),
    Key("static_root", "STATIC_ROOT", None, kind="path", help="Folder collectstatic writes to."),
    Key("email.host", "EMAIL_HOST", "", help="SMTP server."),
    Key("email.port", "EMAIL_PORT", 25, kind="int", minimum=1, help="SMTP port."),
    Key("email.username", "EMAIL_USERNAME", "", help="SMTP user."),
    Key("email.password", "EMAIL_PASSWORD", "", secret=True, help="SMTP password."),
    Key("email.tls", "EMAIL_TLS", False, kind="bool", help="Use STARTTLS."),
    Key("email.ssl", "EMAIL_SSL", False, kind="bool", help="Use SMTP over SSL."),
    Key("email.sender", "EMAIL_SENDER", "", help="From address of emails."),
    Key("admin_email", "ADMIN_EMAIL", None, help="Address that receives backup failure emails."),
    Key("debug", "DEBUG", False, kind="bool", help="Django DEBUG."),
    Key("secret_key", "SECRET_KEY", None, secret=True, help="Django SECRET_KEY."),
    Key(
        "backup_redis_url",
        "BACKUP_REDIS_URL",
        None,
        secret=True,
        help="Redis URL of the django-q2 broker, e.g. redis://127.0.0.1:6379/0 (default: the database broker).",
    ),
)

ENGINES = {
    "sqlite": "django.db.backends.sqlite3",
    "sqlite3": "django.db.backends.sqlite3",
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "mariadb": "django.db.backends.mysql",
}


def database_engine(value: str, where: str = "INVENTREE_DB_ENGINE") -> str:
    """Map ``sqlite3``/``postgresql``/``mysql`` (or a full backend path) to a Django ENGINE."""
    text = value.strip()
    if text.lower() in ENGINES:
        return ENGINES[text.lower()]
    if text.startswith("django.db.backends.") and text.rsplit(".", 1)[1] in ENGINES:
        return ENGINES[text.rsplit(".", 1)[1]]
    raise ConfigError(f"{where}: unknown database engine {value!r}; use sqlite3, postgresql or mysql")


# A bad value stops manage.py with one line (exit status 2); a WSGI server logs that line and fails to start.
with reporting_config_errors():
    CONFIG = load_config(
        config_file=BASE_DIR / "config" / "config.yaml",
        template=BASE_DIR / "config" / "config_template.yaml",
        keys=SITE_KEYS + BACKUP_KEYS,
    )

SECRET_KEY = CONFIG["secret_key"] or "demo-site-not-secret-change-me"
DEBUG = CONFIG["debug"]
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "dbbackup",
    "backup_app",
    "config.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

with reporting_config_errors():
    _engine = database_engine(CONFIG["database.ENGINE"], CONFIG.env_name("database.ENGINE"))
_name = CONFIG["database.NAME"]
if _engine.endswith("sqlite3"):
    _name = str(Path(_name) if _name else DATA_DIR / "database.sqlite3")
    Path(_name).parent.mkdir(parents=True, exist_ok=True)
elif not _name:
    _name = "inventree"
DATABASES = {
    "default": {
        "ENGINE": _engine,
        "NAME": _name,
        "HOST": CONFIG["database.HOST"],
        "PORT": CONFIG["database.PORT"],
        "USER": CONFIG["database.USER"],
        "PASSWORD": CONFIG["database.PASSWORD"],
    }
}
if _engine.endswith("mysql"):
    # mysqlclient when installed, else PyMySQL: apply_backup_settings installs it as MySQLdb.
    DATABASES["default"]["OPTIONS"] = {"charset": "utf8mb4"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

MEDIA_ROOT = str(Path(CONFIG["media_root"] or DATA_DIR / "media"))
MEDIA_URL = "/media/"
STATIC_ROOT = str(Path(CONFIG["static_root"] or DATA_DIR / "static"))
STATIC_URL = "/static/"

USE_TZ = True
TIME_ZONE = "UTC"

EMAIL_HOST = CONFIG["email.host"] or "localhost"
EMAIL_PORT = CONFIG["email.port"]
EMAIL_HOST_USER = CONFIG["email.username"]
EMAIL_HOST_PASSWORD = CONFIG["email.password"]
EMAIL_USE_TLS = CONFIG["email.tls"]
EMAIL_USE_SSL = CONFIG["email.ssl"]
DEFAULT_FROM_EMAIL = SERVER_EMAIL = CONFIG["email.sender"] or "inventree@localhost"
BACKUP_ADMIN_EMAIL = CONFIG["admin_email"]
ADMINS = []

# django-q2 runs scheduled backups; the database (ORM) broker needs no extra service, Redis is
# used when backup_redis_url is set.  The backup tasks carry their own timeout (6 h,
# backup_app.schedule.TASK_TIMEOUT); retry stays above it so the ORM broker never hands a running
# backup out again.  catch_up off: after downtime the hourly check runs once, not once per missed hour.
Q_CLUSTER = {
    "name": "backup_app",
    "workers": 1,
    "timeout": 6 * 3600,
    "retry": 7 * 3600,
    "catch_up": False,
}
if CONFIG.get("backup_redis_url"):
    Q_CLUSTER["redis"] = CONFIG["backup_redis_url"]
else:
    Q_CLUSTER["orm"] = "default"

apply_backup_settings(globals(), config=CONFIG, default_dir=DATA_DIR / "backup", default_safety_dir=DATA_DIR / "safety")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"backup_app": {"handlers": ["console"], "level": "WARNING"}},
}
