"""summary.html (collapse.summary.html): one self-contained, valid page: tables, the plots
embedded, every diagnosis label explained. Parsed with the standard library's html.parser."""
import base64
import json
from html.parser import HTMLParser
from pathlib import Path

from test_build import make_grid

from collapse import records
from collapse.summary import summarize
from collapse.summary.html import LABELS, TERMS

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Page(HTMLParser):
    """Checks nesting (every non-void element closed, in order) and collects what a test reads."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.images, self.links, self.tables, self.text = [], [], [], [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        self.tables += tag == "table"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_the_page_is_valid_self_contained_and_explains_every_label(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    summary = summarize(sweep, plots=True)
    assert "summary.html" in summary["files"]
    source = (sweep / "summary.html").read_text(encoding="utf-8")
    assert source.startswith("<!DOCTYPE html>")
    page = parse(sweep / "summary.html")
    assert page.errors == [] and page.stack == []
    pngs = [f for f in summary["files"] if f.endswith(".png")]
    assert len(page.images) == len(pngs) == 4
    for src, name in zip(page.images, pngs):         # embedded, byte for byte
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == (sweep / name).read_bytes()
    assert page.links == [] and "http://" not in source and "https://" not in source   # nothing from elsewhere
    text = " ".join(page.text)
    assert set(LABELS) == set(records.LABELS)
    for label, sentence in {**LABELS, **TERMS}.items():
        assert label in text and sentence in text
    assert page.tables == 4                           # cells, main effects, ANOVA, paired differences
    assert "data.temporal_frames=7 loss.variance_lambda=0.5" in text
    assert json.loads((sweep / "summary.json").read_text())["files"][-1] == "summary.html"


def test_text_from_the_runs_is_escaped(tmp_path):
    sweep = make_grid(tmp_path / "sweep")
    summary = summarize(sweep, plots=False)
    from collapse.summary.html import render_html

    summary["notes"].append("<script>alert(1)</script>")
    page = Page()
    page.feed(render_html(summary, sweep))
    assert "<script>alert(1)</script>" in " ".join(page.text) and page.stack == [] and page.errors == []
