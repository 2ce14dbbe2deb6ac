"""The dev dashboard: one HTML page linking every service of every pod.

Built as an element tree and serialised by the standard library, so names and URLs are
escaped correctly.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from unityplan_infra.topology.plan import Deployment


def render_dashboard(deployment: Deployment) -> str:
    page = ET.Element("html", lang="en")
    head = ET.SubElement(page, "head")
    ET.SubElement(head, "meta", charset="utf-8")
    ET.SubElement(head, "title").text = "UnityPlan dev dashboard"
    body = ET.SubElement(page, "body")
    ET.SubElement(body, "h1").text = "UnityPlan dev dashboard"
    _section(body, "Stack", deployment.monitoring_host.endpoints())
    for pod in deployment.pods:
        _section(body, f"Pod {pod.pod.name} ({pod.code}, slot {pod.slot})", pod.endpoints())
    return "<!DOCTYPE html>\n" + ET.tostring(page, encoding="unicode", method="html") + "\n"


def _section(body: ET.Element, title: str, links: dict[str, str]) -> None:
    ET.SubElement(body, "h2").text = title
    items = ET.SubElement(body, "ul")
    for label, url in links.items():
        item = ET.SubElement(items, "li")
        link = ET.SubElement(item, "a", href=url)
        link.text = f"{label}: {url}"
