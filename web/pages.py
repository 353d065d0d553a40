"""The console's HTML pages: thin Jinja shells; the data comes from /api through static/js.

Pages carry no inline script or style (the CSP is `default-src 'self'`): anything a page
module needs from the server travels in `data-*` attributes of <body>.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request

from training.contract.layout import RunNotFound, is_valid_run_id
from training.contract.model_source import SourceError, normalize_checkpoint
from web import ui_api
from web.console import console

bp = Blueprint("pages", __name__)
# The pages' own small endpoints (/api/ui/...) travel with the pages blueprint.
bp.register_blueprint(ui_api.bp)

# (endpoint, label) in the top bar; the Playground appears once its template exists.
# "New run" is the top bar's button, so each page has exactly one control of that name.
NAV: tuple[tuple[str, str], ...] = (
    ("pages.runs", "Runs"),
    ("pages.compare", "Compare"),
    ("pages.playground", "Playground"),
    ("pages.settings", "Settings"),
)


def _has_template(name: str) -> bool:
    folder = current_app.template_folder or "templates"
    return (Path(current_app.root_path) / folder / name).is_file()


def _render(template: str, page: str, title: str, nav: str | None = None, **data: Any) -> str:
    links = [
        (e, label)
        for e, label in NAV
        if e != "pages.playground" or _has_template("playground.html")
    ]
    return render_template(
        template,
        page=page,
        page_title=title,
        nav=links,
        active_nav=nav or f"pages.{page}",
        **data,
    )


@bp.get("/")
def runs() -> str:
    return _render("runs.html", "runs", "Runs")


@bp.get("/runs/new")
def new_run() -> str:
    return _render("new_run.html", "new_run", "New run")


@bp.get("/runs/<run_id>")
def run_detail(run_id: str) -> str:
    if not is_valid_run_id(run_id):
        abort(404)
    return _render("run_detail.html", "run_detail", "Run", nav="pages.runs", run_id=run_id)


@bp.get("/compare")
def compare() -> str:
    return _render("compare.html", "compare", "Compare")


@bp.get("/settings")
def settings() -> str:
    return _render("settings.html", "settings", "Settings")


@bp.get("/playground")
def playground() -> str:
    # The Evaluation part owns templates/playground.html and static/js/playground.js.
    if not _has_template("playground.html"):
        abort(404)
    _check_model_params(request.args.get("run_id"), request.args.get("checkpoint"))
    return _render("playground.html", "playground", "Playground")


def _check_model_params(run_id: str | None, checkpoint: str | None) -> None:
    """?run_id=&checkpoint= preselect a run's model: a run that is not there is a 404 page
    and a checkpoint name that cannot be one a 400, each saying why (Werkzeug's error
    pages escape the message)."""
    if run_id:
        try:
            console().store.paths(run_id)
        except RunNotFound:
            abort(
                404, f"No run {run_id!r} in this workspace: open the Playground from the runs list."
            )
    if checkpoint:
        try:
            normalize_checkpoint(checkpoint)
        except SourceError as exc:
            abort(400, f"{exc}.")
