"""The page of ``hspace serve`` (``flows/serve_page.html``) and the bank description it and ``GET /directions`` show.

The page is rendered once, on the server, from the template: a slider per direction beside its evaluation row, so
the page works (and is checked) as plain HTML; its script only sends edits and shows the result. Every value
from the bank is HTML-escaped, and its Content-Security-Policy lets the page run its own inline script and load
nothing from anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from importlib.resources import files
from typing import Any

from hspace.bank import Bank
from hspace.verdicts import Thresholds, verdicts

PAGE = "serve_page.html"
DEBOUNCE_MS = 150  # the page waits this long after the last slider or seed change before it asks for an edit


def directions_info(bank: Bank, limits: dict[str, Any], thresholds: Thresholds | None = None) -> dict[str, Any]:
    """``GET /directions``: the bank, and per direction its method, stored evaluation (Table I row) and verdict."""
    records = bank.info()["directions"]
    judged = verdicts(bank, thresholds)
    return {
        "bank": bank.url,
        "version": bank.version,
        "model_fingerprint": bank.fingerprint,
        "steps": bank.steps,
        "conditioning": bank.conditioning,  # a text-conditional model's prompt, negative prompt and guidance
        "directions": [
            {
                "name": name,
                "method": records[name]["method"],
                "evaluation": records[name]["evaluation"] or None,
                "verdict": judged[name],
            }
            for name in bank.names
        ],
        "limits": limits,
    }


def _conditioning_line(conditioning: dict[str, Any] | None) -> str:
    if conditioning is None:
        return ""
    prompt, negative = html.escape(conditioning["prompt"]), html.escape(conditioning["negative_prompt"])
    return (
        f'<p>prompt <code id="prompt">{prompt}</code>, negative prompt <code>{negative}</code>, '
        f"guidance {conditioning['guidance']:g}</p>"
    )


def render_page(info: dict[str, Any]) -> tuple[str, str]:
    """The page, and its Content-Security-Policy (which allows its own inline script and nothing from elsewhere)."""
    template = files("flows").joinpath(PAGE).read_text(encoding="utf-8")
    limits = info["limits"]
    config = {"debounce_ms": DEBOUNCE_MS, "max_seed": limits["max_seed"]}
    fields = {
        "bank": html.escape(info["bank"]),
        "version": html.escape(info["version"]),
        "fingerprint": html.escape(info["model_fingerprint"]),
        "steps": str(info["steps"]),
        "conditioning": _conditioning_line(info["conditioning"]),
        "max_seed": str(limits["max_seed"]),
        "rows": "\n".join(_slider_row(direction, limits["max_gamma"]) for direction in info["directions"]),
        "config": json.dumps(config).replace("<", "\\u003c"),
    }
    page = re.sub(r"\{\{(\w+)\}\}", lambda match: fields[match.group(1)], template)  # one pass: no field in a field
    [script] = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = (
        f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, policy


def _slider_row(direction: dict[str, Any], max_gamma: float) -> str:
    """One table row: the direction's slider, its value, and its evaluation row with the verdict."""
    name = html.escape(direction["name"])
    verdict = direction["verdict"] or {}
    side = verdict.get("largest_side")
    kind = verdict.get("kind", "unevaluated" if direction["evaluation"] is None else "no verdict")
    style = kind if kind in ("clean", "entangled", "weak", "unevaluated") else ""
    cells = {
        "own": _std(verdict.get("own"), verdict.get("attribute")),
        "side": _std(side[1], side[0]) if side else "",
        "random": _std(verdict.get("random")),
    }
    numbers = "".join(f'<td class="number" id="{key}-{name}">{value}</td>' for key, value in cells.items())
    text = html.escape(verdict.get("text", "no evaluation stored" if kind == "unevaluated" else ""), quote=True)
    return (
        f'<tr><th><label for="gamma-{name}">{name}</label></th>'
        f'<td><input type="range" id="gamma-{name}" data-direction="{name}" min="{-max_gamma:g}" '
        f'max="{max_gamma:g}" step="0.1" value="0"></td><td><output id="value-{name}">0.0</output></td>{numbers}'
        f'<td id="verdict-{name}" class="{style}" title="{text}">{html.escape(kind)}</td></tr>'
    )


def _std(value: float | None, label: str | None = None) -> str:
    if value is None:
        return ""
    return (f"{html.escape(label)} " if label else "") + f"{value:.2f}"
