"""The floor for scenario 3: a bare Flask app under the same gunicorn settings."""

from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/jobs/<job_id>")
    def job(job_id: str) -> dict[str, str]:
        return {"id": job_id, "status": "queued"}

    return app
