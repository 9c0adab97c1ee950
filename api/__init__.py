"""The common Flask API every queue backend sits behind (contract: README, "The API").

`create_app(backend)` builds it for one backend; ``api.wsgi:app`` is the gunicorn entry point, built
from the environment.
"""

from api.app import create_app

__all__ = ["create_app"]
