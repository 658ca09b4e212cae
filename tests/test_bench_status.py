"""
Tests for the status-request benchmark (C{bench/status_cost.py}): what it
times is the real resource answering the same document as its baseline.
(The figures themselves are a benchmark: C{python3 bench/status_cost.py}.)
"""

from __future__ import annotations

import contextlib
import io
import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from bench.status_cost import main, status_of
from spwm.status import Query, StatusResource


class StatusCostTests(SynchronousTestCase):
    def test_same_document_as_the_baseline(self) -> None:
        """
        The compact answer and the indented baseline hold the same
        document, with the listing paged as asked.
        """
        status = status_of(30)
        request = DummyRequest([b"status"])
        request.args = {b"limit": [b"7"]}
        body = StatusResource(status).render_GET(request)
        baseline = json.dumps(status.full(Query(limit=7)), indent=1, sort_keys=True, default=str)
        self.assertEqual(json.loads(body), json.loads(baseline))
        self.assertEqual(len(json.loads(body)["lists"]["calls"]["items"]), 7)
        self.assertEqual(json.loads(body)["lists"]["tunnels"]["total"], 30)

    def test_prints_a_row_per_request(self) -> None:
        """
        One row per limit asked, with a ratio, and one each for the
        metrics and the page.
        """
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["--calls", "20", "--limits", "5,10", "--rounds", "1"]), 0)
        rows = [line for line in out.getvalue().splitlines() if line.startswith("| /")]
        self.assertEqual([row.split(" | ")[0] for row in rows], ["| /status?limit=5", "| /status?limit=10", "| /metrics", "| / (the page)"])
        self.assertTrue(all(float(row.split(" | ")[3]) > 0 for row in rows[:2]))
